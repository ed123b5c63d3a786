"""The pruning study's tables (Markdown) from its results file, one section per teacher file: each student's size,
latency and accuracy against the teacher, then, for each latency budget in each runtime, the mildest ratio whose
measured latency is within it (the Torch-Pruning student a ``compress`` student at that budget is compared with)."""

from __future__ import annotations

from ..common.stats import mean_sd

#: latency budgets as fractions of the teacher's measured latency (issue 31: 30 %, 50 % and 70 %)
BUDGETS = (0.3, 0.5, 0.7)
#: table column -> runtime; int8 students are compared with the int8 teacher
COLUMNS = {"eager": "torch", "ORT fp32": "onnxruntime", "ORT int8": "onnxruntime-int8"}


def _top1(figures: dict | None):
    figures = figures or {}
    return figures.get("top1", figures.get("val_top1"))


def _mean_sd(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{100 * mean:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def _latencies(records: list[dict], sha: str) -> dict[str, dict]:
    """runtime -> the latest latency record of the teacher ``sha``."""
    return {r["runtime"]: r for r in records if r.get("stage") == "latency" and r["teacher_sha"] == sha}


def _ratio(latency: dict | None, name: str) -> float | None:
    if latency is None or name not in latency["ms"]:
        return None
    return latency["ms"][name] / latency["ms"]["teacher"]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def students_table(teacher: dict, runs: dict[str, list[dict]], latencies: dict[str, dict]) -> list[str]:
    epochs = {r["epochs"] for rs in runs.values() for r in rs}
    after = f"top-1 after {'/'.join(map(str, sorted(epochs)))} epoch(s), mean ± sd" if epochs else "top-1 after"
    lines = ["| student | params | MACs | " + " | ".join(COLUMNS) + f" | top-1 at step 0 | {after} | seeds |",
             "|---|---:|---:|" + "---:|" * len(COLUMNS) + "---:|---:|---|",
             "| teacher | 1.00 | 1.00 | " + " | ".join("1.00" if rt in latencies else "–" for rt in COLUMNS.values())
             + f" | {100 * teacher['top1']:.2f} | | |"]
    for name, rs in runs.items():
        first = rs[0]
        ends = [_top1(r["end"]) for r in rs]
        lines.append(f"| {name} | {first['params'] / teacher['params']:.2f} | {first['macs'] / teacher['macs']:.2f} | "
                     + " | ".join(_fmt(_ratio(latencies.get(rt), name)) for rt in COLUMNS.values())
                     + f" | {100 * _top1(first['start']):.2f} | {_mean_sd(ends)} | "
                     + ", ".join(f"s{r['seed']}: {100 * e:.2f}" for r, e in zip(rs, ends, strict=True)) + " |")
    return lines


def budget_table(runs: dict[str, list[dict]], latencies: dict[str, dict]) -> list[str]:
    """For each runtime, budget and importance: the mildest ratio (the least pruned student) whose measured latency
    is within the budget."""
    lines = ["| runtime | budget | importance | mildest ratio within | student ÷ teacher | top-1 after, mean ± sd |",
             "|---|---:|---|---:|---:|---:|"]
    importances = sorted({rs[0]["importance"] for rs in runs.values()})
    for runtime, latency in latencies.items():
        for budget in BUDGETS:
            for importance in importances:
                timed = [(rs[0]["ratio"], _ratio(latency, name), rs) for name, rs in runs.items()
                         if rs[0]["importance"] == importance and _ratio(latency, name) is not None]
                within = sorted((t for t in timed if t[1] <= budget), key=lambda t: t[0])
                if within:
                    ratio, lat, rs = within[0]
                    lines.append(f"| {runtime} | {budget:.0%} | {importance} | {ratio:g} | {lat:.2f} | "
                                 f"{_mean_sd([_top1(r['end']) for r in rs])} |")
                else:
                    fastest = min((t[1] for t in timed), default=None)
                    lines.append(f"| {runtime} | {budget:.0%} | {importance} | none (fastest: {_fmt(fastest)}) | | |")
    return lines


def render(records: list[dict]) -> str:
    teachers = {r["teacher_sha"]: r for r in records if r.get("stage") == "teacher"}
    out: list[str] = []
    for sha, teacher in teachers.items():
        runs: dict[str, list[dict]] = {}
        for r in sorted((r for r in records if r.get("stage") == "students" and r["teacher_sha"] == sha),
                        key=lambda r: (r["importance"], r["ratio"], r["seed"])):
            runs.setdefault(r["name"], []).append(r)
        latencies = _latencies(records, sha)
        loads = ", ".join(f"{rt} {lat['loadavg'][0]}" for rt, lat in latencies.items())
        out += [f"## Teacher {sha} ({teacher['file']})", "",
                f"Ratios to the teacher; latency at batch 1 on 1 thread, medians of side-by-side rounds (load "
                f"average: {loads or 'not timed yet'}); ORT int8 against the int8 teacher.", "",
                *students_table(teacher, runs, latencies), "",
                *(budget_table(runs, latencies) if latencies else []), ""]
    return "\n".join(out).rstrip() or "No records yet."
