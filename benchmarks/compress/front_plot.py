"""The compress study's plots: test error against measured latency (÷ the teacher's), the compress students beside
every point of the reproduction study (issue 27: "on the error-against-measured-latency front of everything in the
reproduction study ... The report plots it"), one plot per runtime and batch size the students were compressed for.

Both studies' points are ratios to a teacher timed in the same run, one thread. In eager torch at batch 1 the
reproduction study's points come from its quiet-machine latency records (``kind: latency`` in
``results/reproduce.jsonl``; its teacher 2.90 ms); in any other runtime or batch from the ``front-latency`` record
of ``front_latency.py`` (the same architectures timed side by side there). The compress students' come from their
final side-by-side measurement at their budget's batch. Each reproduction point is its
student's best recipe (the lowest mean test error over scratch, KD and AT; 3 epochs from scratch, teacher-initialised
rows 3 epochs from their teacher), each compress point its error after one epoch of distillation. The two teachers
are separate files trained on the same schedule (90.83 % and 90.49 %), so the plot compares recipes, not one run.
At batch 1 the channel-pruning baseline (``tp-*``, ``benchmarks/pruning``) is there too: Torch-Pruning students of
the compress students' own teacher file, fine-tuned one epoch with the same recipe, each at its mean over seeds.

    python -m benchmarks.compress.front_plot      # writes results/compress-error-vs-latency*.png, prints the fronts
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict

from cheapconv import pareto_plot

from ..common.records import RESULTS, read_records
from .report import DEFAULT_FAMILIES

PNG = RESULTS / "compress-error-vs-latency.png"


def _latency_name(record: dict) -> str:
    """The student a reproduction latency record timed, as its run records name it."""
    return record["arch"].removeprefix("wrn_16_2 ") if record["arch"] != "wrn_16_2" else "teacher"


def reproduction_errors(records: list[dict]) -> dict[str, float]:
    """Student -> its best mean test error % (over scratch, KD and AT) in the reproduction study; searched students
    under their policy's name (``policy:<sha>``), teacher-initialised ones as ``init:<spec>``."""
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "run" and r["row"] in "12345" and r["schedule"].endswith("/nall/tall"):
            errors[(r["student"], r["mode"])].append(r["test_error"])
    return {student: min(statistics.fmean(v) for (s, _), v in errors.items() if s == student)
            for student in {s for s, _ in errors}}


def search_names(records: list[dict]) -> dict[str, str]:
    """``policy:<sha>`` (the latency records' name of a searched student) -> ``search@<budget>``."""
    return {f"policy:{hashlib.sha256(chr(10).join(r['rules']).encode()).hexdigest()[:10]}": f"search@{r['budget_of']}"
            for r in records if r.get("kind") == "search"}


def reproduction_latency(reproduce: list[dict], compress: list[dict], runtime: str, batch: int) -> dict | None:
    """Name -> ms of the reproduction study's models in ``runtime`` at ``batch`` (None where not timed there)."""
    if (runtime, batch) == ("torch", 1):
        return {_latency_name(r): r["batch1_ms"] for r in reproduce if r.get("kind") == "latency"}
    found = [r for r in compress if r["key"] == f"front-latency {runtime} b{batch}"]
    return dict(found[-1]["ms"]) if found else None


def reproduction_points(reproduce: list[dict], compress: list[dict], runtime: str = "torch",
                        batch: int = 1) -> dict[str, tuple[float, float]]:
    """Student -> (latency ÷ teacher, best mean test error %) of the reproduction study, in ``runtime`` at
    ``batch`` (empty where its models were not timed there)."""
    latency = reproduction_latency(reproduce, compress, runtime, batch)
    if not latency:
        return {}
    names = search_names(reproduce)
    latency = {names.get(n, n): ms for n, ms in latency.items()}
    points = {}
    for student, error in reproduction_errors(reproduce).items():
        ms = latency.get(student.removeprefix("init:"))
        if ms is not None:
            points[student] = (ms / latency["teacher"], error)
    return points


def compress_points(records: list[dict], runtime: str = "torch", batch: int = 1) -> dict[str, tuple[float, float]]:
    """'compress <budget>' -> (measured latency ÷ teacher at ``batch``, test error % after distillation) of the
    students compressed for ``runtime`` at ``batch``."""
    points = {}
    for r in records:
        if (r["key"].startswith("student") and r.get("student_ms") and r.get("end") and r["runtime"] == runtime
                and r.get("batch", 1) == batch):
            end = r["end"].get("top1", r["end"].get("val_top1"))
            added = [f for f in r.get("families") or [] if f not in DEFAULT_FAMILIES]
            label = f"compress {r['budget']}" + "".join(f" +{f}" for f in added)
            points[label] = (r["student_ms"][str(batch)] / r["teacher_ms"][str(batch)], 100 * (1 - end))
    return points


def pruning_points(pruning: list[dict], compress: list[dict], runtime: str = "torch",
                   batch: int = 1) -> dict[str, tuple[float, float]]:
    """'tp-<importance>-<ratio>' -> (latency ÷ teacher, mean test error % over its seeds) of the channel-pruning
    baseline (``benchmarks/pruning``, issue 31), for the teacher file the compress students of ``runtime`` were made
    from. Its students are fine-tuned with the same recipe for the same epochs as a compress student, and timed at
    batch 1 side by side with that teacher, so they are points of the batch-1 plots only."""
    shas = {r["teacher_sha"] for r in compress if r["key"].startswith("student") and r["runtime"] == runtime}
    timed = [r for r in pruning if r.get("stage") == "latency" and r["runtime"] == runtime
             and r["teacher_sha"] in shas]
    if batch != 1 or not timed:
        return {}
    latency = timed[-1]
    errors: dict[str, list[float]] = defaultdict(list)
    for r in pruning:
        if r.get("stage") == "students" and r["teacher_sha"] == latency["teacher_sha"] and r.get("end"):
            errors[r["name"]].append(100 * (1 - r["end"].get("top1", r["end"].get("val_top1"))))
    return {name: (latency["ms"][name] / latency["ms"]["teacher"], statistics.fmean(errs))
            for name, errs in errors.items() if name in latency["ms"]}


def settings(records: list[dict]) -> list[tuple[str, int]]:
    """The (runtime, batch) settings that compress students were made for."""
    return sorted({(r["runtime"], r.get("batch", 1)) for r in records
                   if r["key"].startswith("student") and r.get("student_ms")})


def plot_path(runtime: str, batch: int):
    return PNG if (runtime, batch) == ("torch", 1) else RESULTS / f"compress-error-vs-latency-{runtime}-b{batch}.png"


def dominated_by(points: dict[str, tuple[float, float]], name: str) -> list[str]:
    """The points both faster and more accurate than ``name``'s."""
    x, y = points[name]
    return [n for n, (a, b) in points.items() if n != name and a < x and b < y]


#: the compress study's latency budgets (÷ the teacher's), and the tolerance its "met" allows
BUDGETS = (0.3, 0.5, 0.7)
TOLERANCE = 1.02


def _cell(point: tuple[str, float, float] | None) -> str:
    return "none within" if point is None else f"{point[0]} ({point[1]:.2f}×, {point[2]:.2f} %)"


def against_pruning(ours: dict[str, tuple[float, float]], pruning: dict[str, tuple[float, float]],
                    budgets=BUDGETS) -> list[str]:
    """Markdown rows: for each budget, the most accurate compress student and the most accurate Torch-Pruning
    student whose measured latency is within it (+2 %), and which of the two is more accurate (error % in
    points). Either side may have none within a budget."""
    def best(points):
        return min(((n, x, y) for n, (x, y) in points.items() if x <= b * TOLERANCE), key=lambda t: t[2],
                   default=None)

    rows = ["| budget | compress (most accurate within) | Torch-Pruning (most accurate within) | error, compress − "
            "pruning |", "|---:|---|---|---:|"]
    for b in budgets:
        c, t = best(ours), best(pruning)
        diff = f"{c[2] - t[2]:+.2f}" if c and t else ""
        rows.append(f"| {b:.0%} | {_cell(c)} | {_cell(t)} | {diff} |")
    return rows


def main() -> None:
    reproduce = read_records(RESULTS / "reproduce.jsonl")
    compress = read_records(RESULTS / "compress.jsonl")
    pruning = read_records(RESULTS / "pruning.jsonl")
    for runtime, batch in settings(compress):
        theirs = {**reproduction_points(reproduce, compress, runtime, batch),
                  **pruning_points(pruning, compress, runtime, batch)}
        ours = compress_points(compress, runtime, batch)
        if not theirs:
            print(f"-- {runtime}, batch {batch}: the reproduction study's models were not timed there "
                  f"(python -m benchmarks.compress.front_latency --runtime {runtime} --batch {batch})")
            continue
        points = {**theirs, **ours}
        labels = sorted(points, key=lambda n: points[n][0])
        path = plot_path(runtime, batch)
        pareto_plot(path, labels, [(f"batch-{batch} latency ÷ teacher ({runtime}, 1 thread, measured side by side)",
                                    [points[n][0] for n in labels], "test error % (Fashion-MNIST)",
                                    [points[n][1] for n in labels])],
                    title=f"compress and Torch-Pruning (1 epoch), reproduction study (3 epochs): {runtime}, "
                          f"batch {batch}")
        print(f"## {runtime}, batch {batch} ({path.name})")
        for n in labels:
            beaten = dominated_by(points, n) if n in ours else []
            verdict = ("  beaten by " + ", ".join(beaten)) if beaten else ("  on the front" if n in ours else "")
            print(f"{n:28s} {points[n][0]:.2f}×  {points[n][1]:.2f} %{verdict}")
        tp = pruning_points(pruning, compress, runtime, batch)
        if tp:
            print(f"\n{runtime}, batch {batch}, against channel pruning (mean error over seeds):\n")
            print("\n".join(against_pruning(ours, tp)) + "\n")


if __name__ == "__main__":
    main()
