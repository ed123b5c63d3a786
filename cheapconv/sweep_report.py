"""A sweep's points (:class:`SweepPoint`, one per block type) and its report from them: ``sweep.csv`` (every
figure, with Pareto flags), ``sweep.md`` (the table) and ``sweep.png`` (the trade-offs, with matplotlib installed).

The trade-offs shown are error against parameters and against batch-1 latency when every point has an
accuracy, else latency against parameters and MACs; a point is on a trade-off's Pareto front when no other
point is at least as low on both axes and lower on one.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .formatting import human
from .measure.accuracy import accuracy_metric
from .plots import pareto_front, pareto_plot
from .store.files import atomic_write

__all__ = ["TEACHER", "SweepPoint", "error_label", "write_report"]

TEACHER = "S"          # the teacher itself: the reference point of every sweep


@dataclass
class SweepPoint:
    """One block type of a sweep. Latencies in ms per forward pass; the teacher's were measured alongside."""

    block: str
    params_paper: int
    params_trainable: int
    macs: int
    replaced: int
    latency_b1_ms: float
    latency_bn_ms: float
    teacher_b1_ms: float
    teacher_bn_ms: float
    accuracy: float | None = None
    distilled: bool = False
    seconds: float = 0.0

    @property
    def error(self) -> float | None:
        """Error in percent: 100 × (1 − accuracy), the accuracy being top-1 or, on segmentation data, mIoU."""
        return None if self.accuracy is None else 100.0 * (1.0 - self.accuracy)

    @property
    def speedup_b1(self) -> float:
        return self.teacher_b1_ms / self.latency_b1_ms

    @property
    def speedup_bn(self) -> float:
        return self.teacher_bn_ms / self.latency_bn_ms

    @property
    def label(self) -> str:
        return "teacher" if self.block == TEACHER else self.block


def error_label(config: dict) -> str:
    """What the error column is: ``1 − mIoU`` for a segmentation dataset, else top-1 error."""
    return "1 − mIoU (%)" if config.get("data") and accuracy_metric(config["data"]) == "mIoU" else "top-1 error (%)"


def _axes(points: Sequence[SweepPoint], err_label: str = "top-1 error (%)") -> list[tuple]:
    """The two trade-offs a report shows, as (key, x label, xs, y label, ys): error against params and
    against batch-1 latency when every point has an accuracy, else latency against params and MACs."""
    params = [float(p.params_paper) for p in points]
    lat = [p.latency_b1_ms for p in points]
    if all(p.error is not None for p in points):
        errs = [float(p.error) for p in points]
        return [("params_error", "params (paper convention)", params, err_label, errs),
                ("latency_error", "latency, batch 1 (ms)", lat, err_label, errs)]
    macs = [float(p.macs) for p in points]
    return [("params_latency", "params (paper convention)", params, "latency, batch 1 (ms)", lat),
            ("macs_latency", "MACs per image", macs, "latency, batch 1 (ms)", lat)]


def _fronts(points: Sequence[SweepPoint]) -> dict[str, list[bool]]:
    """``pareto_<x>_<y>`` -> for each point, whether it is on that trade-off's Pareto front."""
    return {f"pareto_{key}": pareto_front(xs, ys) for key, _, xs, _, ys in _axes(points)}


def _rows(points: Sequence[SweepPoint], batch: int) -> list[dict]:
    fronts = _fronts(points)
    rows = []
    for i, p in enumerate(points):
        rows.append({"block": p.label, "params_paper": p.params_paper, "params_trainable": p.params_trainable,
                     "macs": p.macs, "replaced": p.replaced, "latency_b1_ms": round(p.latency_b1_ms, 4),
                     f"latency_b{batch}_ms": round(p.latency_bn_ms, 4),
                     "teacher_latency_b1_ms": round(p.teacher_b1_ms, 4),
                     f"teacher_latency_b{batch}_ms": round(p.teacher_bn_ms, 4),
                     "speedup_b1": round(p.speedup_b1, 3), f"speedup_b{batch}": round(p.speedup_bn, 3),
                     "accuracy": "" if p.accuracy is None else round(p.accuracy, 5),
                     "error_pct": "" if p.error is None else round(p.error, 3), "distilled": p.distilled,
                     **{key: flags[i] for key, flags in fronts.items()}})
    return rows


def _markdown(points: Sequence[SweepPoint], config: dict, notes: Sequence[str]) -> str:
    b = config["batch"]
    c, h, w = config["input_size"]
    has_err = all(p.error is not None for p in points)
    fronts = _fronts(points)
    layout = "channels_last" if config["channels_last"] else "NCHW"
    device = config.get("device", "cpu")
    where = config.get("runtime_info") or "torch eager"
    lines = [f"# Sweep: {config['model']} ({c}×{h}×{w})", "",
             f"Latency: median of {config['repeats']} passes in {where} on {device}, "
             f"{config.get('precision', config['dtype'])}, {layout}, "
             f"{config['threads']} thread(s); each student timed side by side with the teacher, "
             "speed-up = the teacher's time measured alongside it (in parentheses) ÷ the student's time. "
             + (f"Students distilled on {config['data']} for {config['epochs']} epochs." if config.get("data")
                else "Students not trained (params, MACs and latency only)."), ""]
    # A speed-up is a same-moment ratio: its own teacher time is shown beside the student's, so the row checks
    # out; dividing by the teacher row's ms instead mixes two moments of a machine whose load may have changed.
    header = ["block", "params (paper)", "MACs", "batch 1 ms (teacher)", "speed-up b1", f"batch {b} ms (teacher)",
              f"speed-up b{b}"]
    header += [error_label(config).replace(" (%)", " %")] if has_err else []
    header += [f"Pareto ({key.replace('_', ', ')})" for key, *_ in _axes(points)]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for i, p in enumerate(points):
        cells = [p.label, f"{p.params_paper:,}", human(p.macs), f"{p.latency_b1_ms:.3g} ({p.teacher_b1_ms:.3g})",
                 f"{p.speedup_b1:.2f}×", f"{p.latency_bn_ms:.3g} ({p.teacher_bn_ms:.3g})", f"{p.speedup_bn:.2f}×"]
        cells += [f"{p.error:.2f}"] if has_err else []
        cells += ["●" if flags[i] else "" for flags in fronts.values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "● Pareto front of (x, y): no other point is at least as low on both and lower on one. "
                  "The teacher's speed-up compares it with a copy of itself: its distance from 1.00× is the "
                  "timing noise of this run."]
    lines += [f"- {n}" for n in [*_load_notes(points, b), *notes]]
    return "\n".join(lines) + "\n"


def _load_notes(points: Sequence[SweepPoint], batch: int, spread: float = 1.25) -> list[str]:
    """A note when the teacher's time alongside the students varied by more than ``spread`` (max ÷ min):
    the machine's load changed during the sweep, so ms figures of different rows do not compare."""
    notes = []
    teacher_ms = {1: [p.teacher_b1_ms for p in points], batch: [p.teacher_bn_ms for p in points]}
    for b, times in teacher_ms.items():
        if len(times) > 1 and min(times) > 0 and max(times) / min(times) > spread:
            notes.append(f"batch {b}: the teacher took {min(times):.3g}–{max(times):.3g} ms alongside the "
                         "students, so the machine's load changed during the sweep: compare rows by speed-up, "
                         "not by ms, and rerun on a quieter machine for figures to quote.")
    return notes


def write_report(out_dir: str | Path, points: Sequence[SweepPoint], config: dict, *,
                 notes: Sequence[str] = ()) -> dict[str, str]:
    """Write ``sweep.csv``, ``sweep.md`` and (with matplotlib installed) ``sweep.png``; returns the paths."""
    out_dir = Path(out_dir)
    files: dict[str, str] = {}
    if not points:
        return files
    rows = _rows(points, config["batch"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / "sweep.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    files["csv"] = str(out_dir / "sweep.csv")
    md = _markdown(points, config, notes)
    atomic_write(out_dir / "sweep.md", lambda tmp: Path(tmp).write_text(md))
    files["md"] = str(out_dir / "sweep.md")
    if importlib.util.find_spec("matplotlib") is None:   # the plots extra is optional: no PNG without it
        return files

    labels = [p.label for p in points]
    panels = [(xlabel, xs, ylabel, ys) for _, xlabel, xs, ylabel, ys in _axes(points, error_label(config))]
    c, h, w = config["input_size"]
    pareto_plot(out_dir / "sweep.png", labels, panels,
                title=f"{config['model']} {c}×{h}×{w}, {config['dtype']}; red: Pareto front")
    files["png"] = str(out_dir / "sweep.png")
    return files
