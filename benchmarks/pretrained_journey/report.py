"""The journey's tables (Markdown) from its results file: accuracy at every step, the lr study, latency."""

from __future__ import annotations


def _pct(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "-"


def accuracy_table(records: dict[str, dict]) -> list[str]:
    rows = ["| step | top-1 (val) | loss |", "|---|---:|---:|"]
    for key, label in (("teacher", "teacher (fine-tuned)"),):
        if key in records:
            rows.append(f"| {label} | {_pct(records[key]['top1'])} | {records[key]['loss']:.4f} |")
    for key, rec in records.items():
        if key.startswith("reconstructed"):
            rows.append(f"| student {rec['block']}, reconstructed, before any training | {_pct(rec['top1'])} | "
                        f"{rec['loss']:.4f} |")
    for key, rec in records.items():
        if key.startswith("distilled"):
            variant = "".join(f", --{k} {rec[key]}" for k, key, default in
                              (("augment", "augment", "standard"), ("loss", "loss_kind", "at"))
                              if rec.get(key, default) != default)
            rows.append(f"| distilled 1 epoch, lr {rec['lr']:g}{variant} (start {_pct(rec.get('start_val_top1'))}) | "
                        f"{_pct(rec['top1'])} | {rec['loss']:.4f} |")
    for key, rec in records.items():
        if key.startswith("onnx"):
            rows.append(f"| ONNX file `{rec['file']}` in onnxruntime | {_pct(rec['top1'])} | {rec['loss']:.4f} |")
    return rows


def latency_table(records: dict[str, dict]) -> list[str]:
    rows = ["| runtime | model | params | MACs | batch 1 ms | rel. | batch 16 ms | rel. |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, rec in records.items():
        if not key.startswith("latency"):
            continue
        base = rec["models"][0]["latency"]
        for m in rec["models"]:
            lat = m["latency"]
            cells = []
            for batch in ("1", "16"):
                cells += [f"{lat[batch]['median_ms']:.2f}", f"{lat[batch]['median_ms'] / base[batch]['median_ms']:.2f}"]
            rows.append(f"| {rec['runtime']} | {m['model']} | {m['params_paper']:,} | {m['macs'] / 1e6:.1f} M | "
                        + " | ".join(cells) + " |")
        rows.append(f"| | load average {rec['loadavg'][0]} at {rec['utc']}, 1 thread | | | | | | |")
    return rows


def render(records: dict[str, dict]) -> str:
    return "\n".join(["### Accuracy", "", *accuracy_table(records), "", "### Latency", "", *latency_table(records)])
