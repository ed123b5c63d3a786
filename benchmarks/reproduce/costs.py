"""The reproduction report's section on cost: what each student's parameter and MAC cuts buy in measured CPU
latency, and which students sit on the error-vs-cost Pareto fronts.

The papers state their claims at equal parameters; a user shipping to a latency budget wants them at equal
measured time too. This section puts the two side by side, from the study's latency records
(``python -m benchmarks.reproduce --latency``: fp32, batch 1 and 32, students timed interleaved).
"""

from __future__ import annotations

from ..common import stats

BATCHES = (1, 32)


def pareto_front(points: list[dict], key: str) -> list[dict]:
    """The points on the error-vs-``key`` Pareto front (:func:`benchmarks.common.stats.pareto_front`: no other
    point at least as low on both and lower on one), cheapest first."""
    on = stats.pareto_front([p[key] for p in points], [p["error"] for p in points])
    return sorted((p for p, keep in zip(points, on, strict=True) if keep), key=lambda p: p[key])


def student_points(s) -> list[dict]:
    """One dict per trained student of the main rows (AT error; the teacher's from scratch) with its costs."""
    points = []
    for row, student in s.students():
        mode = "scratch" if row == "1" else "at"
        st = s.stat(row, student, mode)
        if st is None or (row, student) not in s.info:
            continue
        info = s.info[(row, student)]
        lat = s.latency.get(info["arch"], {})
        points.append({"row": row, "student": student, "params": info["params"], "macs": info["macs"],
                       "error": st[0], "sd": st[1] or 0.0, "threads": lat.get("threads"),
                       **{f"b{b}": lat.get(f"batch{b}_ms") for b in BATCHES}})
    return points


def _ratio(a: float | None, b: float | None) -> str:
    return "pending" if a is None or not b else f"{a / b:.2f}×"


def gmacs_per_s(p: dict, batch: int) -> float | None:
    """The compute rate a student reaches at ``batch``: its MACs per second, in billions (None: not timed)."""
    ms = p.get(f"b{batch}")
    return None if ms is None else p["macs"] * batch / ms / 1e6


def latency_pair(s, a: tuple, b: tuple) -> str:
    """" (CPU b1 latency 2.62 vs 1.55 ms)" for two (row, student) keys, or "" where either is unmeasured."""
    la, lb = (s.latency.get(s.info.get(k, {}).get("arch"), {}).get("batch1_ms") for k in (a, b))
    return "" if la is None or lb is None else f"; CPU latency, batch 1: {la:.2f} vs {lb:.2f} ms"


def cost_section(s) -> list[str]:
    """Markdown lines: every student's costs relative to the teacher's, and the Pareto fronts."""
    points = student_points(s)
    teacher = next((p for p in points if p["row"] == "1"), None)
    if teacher is None:
        return ["Pending (the teacher has not run)."]
    if all(p["b1"] is None for p in points):
        return ["Pending (no latency measured yet: `python -m benchmarks.reproduce --latency` on a quiet "
                "machine)."]
    threads = sorted({p["threads"] for p in points if p["threads"] is not None})
    lines = ["Each student's costs as a fraction of the teacher's (fp32, "
             f"{'/'.join(map(str, threads))} thread(s), medians of interleaved runs), and the compute rate it "
             "reaches: MACs per second at batch 32. Error: AT (the teacher: scratch).", "",
             "| row | student | params | MACs | latency b1 | latency b32 | GMAC/s b32 | error % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p['row']} | {p['student']} | {_ratio(p['params'], teacher['params'])} | "
                     f"{_ratio(p['macs'], teacher['macs'])} | {_ratio(p['b1'], teacher['b1'])} | "
                     f"{_ratio(p['b32'], teacher['b32'])} | "
                     + ("pending" if (rate := gmacs_per_s(p, 32)) is None else f"{rate:.1f}")
                     + f" | {p['error']:.2f} |")
    lines.append("")
    fronts = [("parameters", "params")] + [(f"CPU latency at batch {b}", f"b{b}") for b in BATCHES]
    for name, key in fronts:
        measured = [p for p in points if p[key] is not None]
        front = pareto_front(measured, key)
        lines.append(f"- On the error-vs-{name} front ({len(front)} of {len(measured)}): "
                     + ", ".join(f"{p['student']} ({p['error']:.2f} %)" for p in front) + ".")
    teacher_rate = gmacs_per_s(teacher, 32)
    cheap = [r for p in points if p["row"] == "2" and (r := gmacs_per_s(p, 32)) is not None]
    if teacher_rate is not None and cheap:
        lines += ["", f"At batch 32 the teacher's dense 3×3 convolutions run at {teacher_rate:.1f} "
                  f"GMAC/s and the cheap students of row 2 at {min(cheap):.1f}–{max(cheap):.1f}: a cut in MACs "
                  "buys less time than its size wherever the cheap block runs at a lower compute rate than the "
                  "convolution it replaces. The claims below are stated, as in the papers, at equal parameters; "
                  "for a latency budget, read the latency fronts."]
    return lines
