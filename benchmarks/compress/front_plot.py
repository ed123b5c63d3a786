"""The compress study's plot: test error against measured batch-1 latency (÷ the teacher's), the compress students
beside every point of the reproduction study (issue 27: "on the error-against-measured-latency front of everything in
the reproduction study ... The report plots it").

Both studies' points are ratios to a teacher timed in the same run, eager torch, batch 1, one thread: the
reproduction study's from its quiet-machine latency records (``kind: latency`` in ``results/reproduce.jsonl``; its
teacher 2.90 ms), the compress students' from their final side-by-side measurement. Each reproduction point is its
student's best recipe (the lowest mean test error over scratch, KD and AT; 3 epochs from scratch, teacher-initialised
rows 3 epochs from their teacher), each compress point its error after one epoch of distillation. The two teachers
are separate files trained on the same schedule (90.83 % and 90.49 %), so the plot compares recipes, not one run.

    python -m benchmarks.compress.front_plot      # writes results/compress-error-vs-latency.png
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict

from cheapconv import pareto_plot

from ..common.records import RESULTS, read_records

PNG = RESULTS / "compress-error-vs-latency.png"


def _latency_name(record: dict) -> str:
    """The student a reproduction latency record timed, as its run records name it."""
    return record["arch"].removeprefix("wrn_16_2 ") if record["arch"] != "wrn_16_2" else "teacher"


def reproduction_points(records: list[dict]) -> dict[str, tuple[float, float]]:
    """Student -> (latency ÷ teacher, best mean test error %) from the reproduction study's records."""
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "run" and r["row"] in "12345" and r["schedule"].endswith("/nall/tall"):
            errors[(r["student"], r["mode"])].append(r["test_error"])
    policies = {f"policy:{hashlib.sha256(chr(10).join(r['rules']).encode()).hexdigest()[:10]}":
                f"search@{r['budget_of']}" for r in records if r.get("kind") == "search"}
    latency = {policies.get(n, n): r["batch1_ms"] for r in records if r.get("kind") == "latency"
               for n in [_latency_name(r)]}
    teacher_ms = latency["teacher"]
    points = {}
    for student in {s for s, _ in errors}:
        ms = latency.get(student.removeprefix("init:"))
        if ms is None:
            continue
        best = min(statistics.fmean(v) for (s, _), v in errors.items() if s == student)
        points[student] = (ms / teacher_ms, best)
    return points


def compress_points(records: list[dict]) -> dict[str, tuple[float, float]]:
    """'compress <budget>' -> (measured latency ÷ teacher, test error % after distillation)."""
    points = {}
    for r in records:
        if r["key"].startswith("student") and r.get("student_ms") and r.get("end"):
            end = r["end"].get("top1", r["end"].get("val_top1"))
            points[f"compress {r['budget']} ({r['runtime']})"] = (r["student_ms"]["1"] / r["teacher_ms"]["1"],
                                                                   100 * (1 - end))
    return points


def main() -> None:
    points = {**reproduction_points(read_records(RESULTS / "reproduce.jsonl")),
              **compress_points(read_records(RESULTS / "compress.jsonl"))}
    labels = sorted(points, key=lambda n: points[n][0])
    xs = [points[n][0] for n in labels]
    ys = [points[n][1] for n in labels]
    pareto_plot(PNG, labels, [("batch-1 latency ÷ teacher (eager torch, 1 thread, measured side by side)", xs,
                               "test error % (Fashion-MNIST)", ys)],
                title="compress students (1 epoch) among the reproduction study's points (3 epochs)")
    for n in labels:
        print(f"{n:28s} {points[n][0]:.2f}×  {points[n][1]:.2f} %")
    print(f"wrote {PNG}")


if __name__ == "__main__":
    main()
