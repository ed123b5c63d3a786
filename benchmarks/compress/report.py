"""The compress study's table (Markdown) from its results file."""

from __future__ import annotations


def _pct(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "-"


def render(records: list[dict]) -> str:
    lines = []
    for rec in records:
        if rec["key"].startswith("library"):
            lines.append(f"- library ({rec['runtime']}): {rec['options']} options on {rec['sites']} sites, built in "
                         f"{rec['seconds'] / 60:.1f} min (load average {rec['loadavg'][0]}); teacher "
                         f"{rec['teacher_latency_ms']:.3f} ms")
    lines += ["", "| runtime | budget | met | student ÷ teacher (batch 1, measured side by side) | params | MACs | "
                  "top-1 at step 0 | after 1 epoch | teacher | chosen |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for rec in records:
        if not rec["key"].startswith("student"):
            continue
        ratio = (rec["student_ms"]["1"] / rec["teacher_ms"]["1"]) if rec.get("student_ms") else None
        counts = rec["counts"]
        chosen = ", ".join(f"{site}={spec}" for site, spec in rec["choices"].items())
        lines.append(f"| {rec['runtime']} | {rec['budget']} | {'yes' if rec['met'] else 'no'} | "
                     f"{ratio:.2f} | {counts['student']['paper'] / counts['teacher']['paper']:.2f} | "
                     f"{counts['student']['macs'] / counts['teacher']['macs']:.2f} | "
                     f"{_pct((rec.get('start') or {}).get('val_top1'))} | "
                     f"{_pct((rec.get('end') or {}).get('val_top1'))} | {_pct(rec.get('teacher_top1'))} | {chosen} |")
    return "\n".join(lines)
