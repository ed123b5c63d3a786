"""Stage ``latency`` of the pruning study: the teacher and every pruned student timed side by side, one runtime at
a time (``cheapconv.measure.measure_in_runtime``: each model exported once, checked against eager, then one pass of
each in turn per round), at batch 1 on 1 thread, so that each ratio to the teacher compares passes of the same
rounds. ``onnxruntime-int8`` students are compared with the int8 teacher (static QDQ, per-channel; see that runtime's
docstring). A student's latency does not depend on its seed, so each (importance, ratio) is timed once, from the
file of its lowest finished seed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cheapconv
from cheapconv.measure import measure_in_runtime

#: the runtimes of the issue's table: eager torch, ONNX Runtime float32 and static int8
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


def students_to_time(records: list[dict]) -> dict[str, Path]:
    """Student name -> the file of its lowest finished seed, from the student records, in (importance, ratio)
    order."""
    found: dict[str, tuple[int, Path]] = {}
    for r in sorted((r for r in records if r.get("stage") == "students" and "name" in r),
                    key=lambda r: (r["importance"], r["ratio"], r["seed"])):
        if r["name"] not in found and Path(r["file"]).is_file():
            found[r["name"]] = (r["seed"], Path(r["file"]))
    return {name: file for name, (_, file) in found.items()}


def latency_record(files: dict[str, Path], input_shape: tuple[int, ...], runtime: str, *, repeats: int) -> dict:
    """The median, quartiles and minimum (ms) of each model of ``files`` (``"teacher"`` first) in ``runtime``."""
    names = list(files)
    models = [cheapconv.load(f).eval() for f in files.values()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # export notes (BatchNorm folded), said once per model
        timed = measure_in_runtime(models, (1, *input_shape), runtime, threads=1, repeats=repeats)
    return {"runtime": runtime, "batch": 1, "threads": 1, "repeats": repeats, "models": names,
            "files": {n: str(f) for n, f in files.items()},
            "ms": {n: t.median_ms for n, t in zip(names, timed, strict=True)},
            "q1_ms": {n: t.q1_ms for n, t in zip(names, timed, strict=True)},
            "q3_ms": {n: t.q3_ms for n, t in zip(names, timed, strict=True)},
            "min_ms": {n: t.min_ms for n, t in zip(names, timed, strict=True)},
            "loadavg": [round(v, 2) for v in os.getloadavg()]}
