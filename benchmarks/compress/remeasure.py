"""Stage ``remeasure`` of the compress study: every finished student of one setting timed again, all of them side by
side with the teacher in one loop (one pass of each in turn, the order rotating every round), with more rounds
than ``compress``'s own final measurement.

``compress`` measures its student once, after distillation, beside the teacher (20 rounds). On this shared 2-core
VM one such measurement can move by several per cent (a neighbour, a frequency change), so the study times the
saved students of a setting again together, at the budget's batch and at batch 1: one record
``remeasure <setting> <teacher sha>`` with each model's median ms. The report gives both measurements. Quiet
machine only (the record keeps the load average).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cheapconv
from cheapconv.measure import measure_in_runtime

from ..common.records import append_record
from ..common.report import say


def students(out: Path, stem: str, budgets: list[str]) -> dict[str, Path]:
    """Budget -> saved student file ``OUT/<stem>-<budget>.pt`` (those that exist)."""
    files = {b: out / f"{stem}-{b.rstrip('%')}.pt" for b in budgets}
    return {b: f for b, f in files.items() if f.is_file()}


def run(teacher, args, setting: str, sha: str, results: Path, done: set[str], budgets: list[str], *,
        stem: str | None = None, input_shape: tuple[int, ...] = (3, 32, 32)) -> None:
    """Time the teacher and every saved student of ``setting`` side by side (batch 1 and the setting's batch).

    ``stem``: the students' file names before ``-<budget>.pt`` (default ``student-<setting>``, the WRN study's);
    ``input_shape``: (C, H, W) they are timed at."""
    key = f"remeasure {setting} {sha}"
    found = students(args.out, stem or f"student-{setting}", budgets)
    if key in done or not found:
        say(f"-- {key}: " + ("already recorded" if key in done else "no student saved yet"))
        return
    models = [teacher, *(cheapconv.load(f) for f in found.values())]
    names = ["teacher", *found]
    ms: dict[str, dict[str, float]] = {}
    for batch in sorted({1, args.batch}):
        say(f"== {key}: batch {batch}, {', '.join(names)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timed = measure_in_runtime(models, (batch, *input_shape), args.runtime, threads=1,
                                       repeats=args.remeasure_repeats)
        ms[str(batch)] = {n: t.median_ms for n, t in zip(names, timed, strict=True)}
        for n in names:
            say(f"  {n:8s} {ms[str(batch)][n]:8.3f} ms  {ms[str(batch)][n] / ms[str(batch)]['teacher']:.3f}×")
    append_record(results, {"key": key, "stage": "remeasure", "runtime": args.runtime, "batch": args.batch,
                            "setting": setting, "repeats": args.remeasure_repeats, "ms": ms,
                            "loadavg": [round(v, 2) for v in os.getloadavg()]})
