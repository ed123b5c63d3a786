"""How long cheapening takes: trace + plan + rewrite of torchvision ResNet-34 (and friends) on this CPU.

Prints the median and spread of several runs per step, side by side in one run. Usage:
    python -m benchmarks.perf.cheapen_speed [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import cheapconv


def timed(fn, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[0], times[-1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.cheapen_speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} runs per row\n")
    print("| model | policy | step | median s | min s | max s |\n|---|---|---|---:|---:|---:|")
    cases = [("resnet34", "G(4)"), ("resnet34", "conv1=keep; layer4.*=BG(2,4); G(4)"), ("resnet34", "B(2)"),
             ("wrn_40_2", "G(4)"), ("resnet50", "G(4)")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.pt"
        for name, policy in cases:
            model = cheapconv.create_model(name)
            cheapconv.cheapen(model, policy)  # warm-up: imports, first trace
            student = cheapconv.cheapen(model, policy)
            steps = {
                "plan (dry run)": lambda m=model, p=policy: cheapconv.plan(m, p),
                "cheapen": lambda m=model, p=policy: cheapconv.cheapen(m, p),
                "save": lambda s=student: cheapconv.save(s, path),
            }
            cheapconv.save(student, path)
            steps["load"] = lambda: cheapconv.load(path)
            for step, fn in steps.items():
                med, lo, hi = timed(fn, args.repeats)
                print(f"| {name} | `{policy}` | {step} | {med:.3f} | {lo:.3f} | {hi:.3f} |", flush=True)


if __name__ == "__main__":
    main()
