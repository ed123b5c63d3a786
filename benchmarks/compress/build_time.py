"""Stage ``build-time`` of the compress study: issue 27's cost targets, measured on a quiet machine.

"At the defaults, the library for WRN-16-2 builds in ≤ 15 min on this 2-core CPU, and one budget solves in ≤ 5 s."
The study's own libraries cannot answer the first: the eager one was built beside the test suite, and the others
took its fits (``--fits-from``). So this stage builds a fresh library at the defaults (default families, samples and
held-out images, one timing thread, batch 1) into a new folder, which it deletes afterwards (the timing must not
resume a half-built one), then times :func:`cheapconv.compression.select` on it for each ``--budgets``: the median
of five solves.
One record, ``build-time <runtime> b<batch> <teacher sha>``, with the load average before and after.

    python -m benchmarks.compress --stage build-time --teacher T.pt --out OUT --runtime torch
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
import warnings
from pathlib import Path

import cheapconv
from cheapconv.compression import BudgetUnreachableError, select

from ..common.records import append_record
from ..common.report import say

SOLVES = 5


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def solve_seconds(library, budget: str, solves: int = SOLVES) -> float | None:
    """Median seconds of ``solves`` calls of :func:`~cheapconv.compression.select` at ``budget``.

    None where the budget is out of the library's reach."""
    times = []
    for _ in range(solves):
        started = time.perf_counter()
        try:
            select(library, budget)
        except BudgetUnreachableError:
            return None
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(teacher, train, args, sha: str, results: Path, done: set[str]) -> None:
    """Build a fresh default library for ``teacher`` on ``train``, time it and its solves, record both."""
    key = f"build-time {args.runtime} b{args.batch} {sha}"
    if key in done:
        return
    folder = args.out / f"library-build-time-{args.runtime}-b{args.batch}"
    shutil.rmtree(folder, ignore_errors=True)       # a leftover from a killed run would make the build look quick
    before = _loadavg()
    say(f"== {key} (load average {before})")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = cheapconv.build_library(teacher, train, runtime=args.runtime, batch=args.batch, threads=1,
                                          directory=folder, progress=not args.quiet, seed=args.seed)
    seconds = time.perf_counter() - started
    after = _loadavg()
    solves = {budget: solve_seconds(library, budget) for budget in args.budgets}
    append_record(results, {"key": key, "stage": "build-time", "teacher_sha": sha, "runtime": args.runtime,
                            "batch": args.batch, "seconds": seconds, "sites": len(library.sites),
                            "options": sum(len(s.options) - 1 for s in library.sites),
                            "teacher_latency_ms": library.teacher_latency_ms, "solve_seconds": solves,
                            "loadavg_before": before, "loadavg": after, "cpus": os.cpu_count()})
    say(f"built in {seconds / 60:.1f} min; solves {solves}")
    shutil.rmtree(folder, ignore_errors=True)
