"""The latency stage: teacher and student side by side at batch 1, in eager torch and in ONNX Runtime.

All four (two models × two runtimes) are timed in one interleaved loop (:func:`cheapconv.measure.time_side_by_side`:
each round times every runner once, starting with a different one), so load on the machine hits them alike; the
record keeps the 1-minute load average before and after, and the thread count. Latency depends on the
architecture only, so the models are the zoo's ERFNet and its G(N) student with random weights (the trained
ones are the same graphs). Run it on a quiet machine.
"""

from __future__ import annotations

import os

from cheapconv.measure import make_runners, time_side_by_side

from .training import fresh_student, fresh_teacher

RUNTIMES = ("torch", "onnxruntime")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"64x64,512x1024"`` -> [(64, 64), (512, 1024)] (each side a multiple of 8, as ERFNet needs)."""
    sizes = []
    for item in text.split(","):
        h, _, w = item.strip().lower().partition("x")
        if not (h.isdigit() and w.isdigit()) or int(h) % 8 or int(w) % 8 or not int(h) or not int(w):
            raise ValueError(f"a latency size is HxW with both sides positive multiples of 8, got {item!r}")
        sizes.append((int(h), int(w)))
    return sizes


def measure(args) -> dict:
    """Median, quartiles and minimum (ms) per size, runtime and model; the record's fields."""
    models = {"teacher": fresh_teacher(0).eval(), "student": fresh_student(args.block, 0).eval()}
    out: dict = {"load_avg_before": [round(x, 2) for x in os.getloadavg()], "threads": args.latency_threads,
                 "device": args.latency_device,
                 "repeats": args.latency_repeats, "batch": 1, "sizes": {}}
    for h, w in parse_sizes(args.latency_sizes):
        runners, labels = [], []
        try:
            for runtime in RUNTIMES:
                runners += make_runners(list(models.values()), runtime, (1, h, w), threads=args.latency_threads,
                                        device=args.latency_device, labels=[f"{n} {runtime}" for n in models])
                labels += [(runtime, n) for n in models]
            timed = time_side_by_side(runners, (1, 1, h, w), repeats=args.latency_repeats,
                                      threads=args.latency_threads)
        finally:
            for r in runners:
                r.close()
        size: dict = {rt: {} for rt in RUNTIMES}
        for (runtime, name), lat in zip(labels, timed, strict=True):
            size[runtime][name] = {"median_ms": round(lat.median_ms, 3), "q1_ms": round(lat.q1_ms, 3),
                                   "q3_ms": round(lat.q3_ms, 3), "min_ms": round(lat.min_ms, 3)}
        out["sizes"][f"{h}x{w}"] = size
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out
