"""The int8 study's tables (Markdown) from its results file: accuracy in float32 and int8, then latency per
group, thread count and batch size, each model against the float32 and the int8 teacher."""

from __future__ import annotations


def _pct(v) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "–"


def _share(latency_ratio: float, macs_ratio: float) -> str:
    """The share of the MAC cut that latency realises: (1 − latency ratio) / (1 − MACs ratio)."""
    if macs_ratio >= 1:
        return "–"
    return f"{(1 - latency_ratio) / (1 - macs_ratio):.0%}"


def accuracy_table(records: list[dict]) -> list[str]:
    rows = [r for r in records if r["key"].startswith("accuracy ")]
    lines = ["| group | model | top-1 fp32 (ORT) | top-1 int8 (ORT) | int8 − fp32 (points) | "
             "agreement int8/fp32 (export check) |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        name = r["key"].split(" ", 2)[2]
        check = (r.get("export_check") or {}).get("check") or {}
        agreement = check.get("agreement")
        lines.append(f"| {r['group']} | {name} | {_pct(r['top1_fp32'])} | {_pct(r['top1_int8'])} | "
                     f"{100 * (r['top1_int8'] - r['top1_fp32']):+.2f} | {_pct(agreement)} |")
    return lines


def latency_tables(records: list[dict]) -> list[str]:
    lines: list[str] = []
    for r in records:
        if not r["key"].startswith("latency ") or r.get("finished"):
            continue
        fp32, int8 = r["ms"]["onnxruntime"], r["ms"]["onnxruntime-int8"]
        macs = r["macs"]
        lines += ["", f"**{r['group']}, batch {r['batch']}, {r['threads']} thread(s)** (ONNX Runtime, medians of "
                      f"{r['repeats']} side-by-side rounds; load average {r['loadavg'][0]})", "",
                  "| model | MACs ÷ teacher | fp32 ms | int8 ms | int8 ÷ own fp32 | fp32 ÷ fp32 teacher | "
                  "int8 ÷ fp32 teacher | int8 ÷ int8 teacher | MAC cut realised fp32 | int8 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        t32, t8 = fp32["teacher"], int8["teacher"]
        for name in r["models"]:
            m = macs[name] / macs["teacher"]
            lines.append(f"| {name} | {m:.2f} | {fp32[name]:.3f} | {int8[name]:.3f} | {int8[name] / fp32[name]:.2f} | "
                         f"{fp32[name] / t32:.2f} | {int8[name] / t32:.2f} | {int8[name] / t8:.2f} | "
                         f"{_share(fp32[name] / t32, m)} | {_share(int8[name] / t8, m)} |")
    return lines


def _drop(rec: dict | None) -> str:
    return f"{100 * (rec['top1_int8'] - rec['top1_fp32']):+.2f}" if rec else "-"


def _agreement(rec: dict | None) -> str:
    return _pct(((rec or {}).get("export_check") or {}).get("check", {}).get("agreement"))


def _spread(stats: dict, kind: str) -> str:
    s = stats.get(kind)
    return f"{s['median']:.1f}, {s['max']:.1f}" if s else "–"


def gap_table(records: list[dict]) -> list[str]:
    """Stage ``gap``: each model's int8 loss with everything quantised (the accuracy stage) beside the same model
    with the low-rank blocks (the teacher: the layers they replaced) kept in float32, and the range ÷ sd of the
    students' narrow tensors and of the tensors entering the blocks."""
    whole = {r["key"].split(" ", 1)[1]: r for r in records if r["key"].startswith("accuracy ")}
    rows = [r for r in records if r["key"].startswith("gap ")]
    if not rows:
        return []
    lines = ["| group | model | layers kept in float32 | int8 − fp32, all int8 | int8 − fp32, those kept | "
             "agreement, all int8 | agreement, those kept | range ÷ sd: narrow tensors (median, max) | "
             "entering the blocks |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = " ".join(r["key"].split(" ")[2:-1])
        base = whole.get(f"{r['group']} {name}")
        stats = r.get("range_over_std") or {}
        lines.append(f"| {r['group']} | {name} | {len(r['float32_modules'])} ({r['variant']}) | {_drop(base)} | "
                     f"{_drop(r)} | {_agreement(base)} | {_agreement(r)} | {_spread(stats, 'narrow')} | "
                     f"{_spread(stats, 'entering')} |")
    return lines


def render(records: list[dict]) -> str:
    gap = gap_table(records)
    return "\n".join(["## Accuracy", "", *accuracy_table(records),
                      *(["", "## Where the Lite0 int8 loss comes from", "", *gap] if gap else []),
                      "", "## Latency", *latency_tables(records)])
