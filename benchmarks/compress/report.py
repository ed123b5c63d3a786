"""The compress study's table (Markdown) from its results file."""

from __future__ import annotations


def _pct(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "-"


def _top1(figures: dict | None):
    """The top-1 of a start or end record (``val_top1`` in the metrics file, ``top1`` in DistillResult)."""
    figures = figures or {}
    return figures.get("top1", figures.get("val_top1"))


def render(records: list[dict]) -> str:
    lines = []
    for rec in records:
        if rec["key"].startswith("library"):
            lines.append(f"- library ({rec['runtime']}): {rec['options']} options on {rec['sites']} sites, built in "
                         f"{rec['seconds'] / 60:.1f} min (load average {rec['loadavg'][0]}); teacher "
                         f"{rec['teacher_latency_ms']:.3f} ms")
    lines += ["", "| runtime | budget | met | student ÷ teacher (batch 1, measured side by side) | params | MACs | "
                  "top-1 at step 0 | after 1 epoch | teacher | rounds: predicted→measured ms | chosen |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for rec in records:
        if not rec["key"].startswith("student"):
            continue
        if "unreachable" in rec:
            fastest, teacher = rec["reachable_ms"]
            lines.append(f"| {rec['runtime']} | {rec['budget']} | out of reach: the fastest student of this library is "
                         f"predicted at {fastest:.3f} ms ({fastest / teacher:.0%} of the teacher) | | | | | | | | |")
            continue
        ratio = (rec["student_ms"]["1"] / rec["teacher_ms"]["1"]) if rec.get("student_ms") else None
        counts = rec["counts"]
        chosen = ", ".join(f"{site}={spec}" for site, spec in rec["choices"].items())
        rounds = "; ".join(f"{r['predicted']:.2f}→{r['measured']:.2f}" for r in rec.get("rounds", []))
        lines.append(f"| {rec['runtime']} | {rec['budget']} | {'yes' if rec['met'] else 'no'} | "
                     f"{ratio:.2f} | {counts['student']['paper'] / counts['teacher']['paper']:.2f} | "
                     f"{counts['student']['macs'] / counts['teacher']['macs']:.2f} | "
                     f"{_pct(_top1(rec.get('start')))} | {_pct(_top1(rec.get('end')))} | "
                     f"{_pct(rec.get('teacher_top1'))} | {rounds} | {chosen} |")
    return "\n".join(lines)
