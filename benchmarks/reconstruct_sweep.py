"""Step-0 test accuracy of teacher-initialised + reconstructed students against the reconstruction's settings.

For each ``BLOCK:SAMPLES:STEPS:LR[:BATCH]`` given: ``cheapen(teacher, BLOCK, init="teacher")``, then
``cheapconv.reconstruct`` on the last SAMPLES Fashion-MNIST training images with STEPS Adam steps per site at
learning rate LR, then top-1 on the first ``--test-samples`` test images (bf16, channels_last; no training).
One JSON line per setting is appended to ``--results`` (the setting, the accuracy, each site's relative output
error after reconstruction, seconds and load average). Issue 11 chose the default lr with it.

    python benchmarks/reconstruct_sweep.py --teacher bench-out/teacher-init-2/teacher.pt \\
        'B(2):2048:200:1e-3' 'B(2):2048:200:1e-2' 'G(4):2048:200:1e-3' 'G(4):2048:200:1e-2'
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

import cheapconv
from cheapconv.data import TensorImageDataset, get_dataset
from cheapconv.train.metrics import evaluate


def subset(data: TensorImageDataset, n: int, start: int = 0) -> TensorImageDataset:
    return TensorImageDataset(data.images[start:start + n], data.labels[start:start + n], data.info,
                              augment=False, repeat=data.repeat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("settings", nargs="+", help="BLOCK:SAMPLES:STEPS:LR[:BATCH], e.g. 'B(2):2048:200:1e-2'.")
    p.add_argument("--teacher", required=True, help="A trained teacher saved by cheapconv.save.")
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default="benchmarks/results/reconstruct_sweep.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    full = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    test = subset(get_dataset("fashion-mnist", "test", in_chans=3, image_size=32), args.test_samples)
    teacher = cheapconv.load(args.teacher).eval()
    for setting in args.settings:
        block, samples, steps, lr, *rest = setting.split(":")
        samples, steps, lr = int(samples), int(steps), float(lr)
        batch = int(rest[0]) if rest else 64
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the plan's "kept: ..." notes
            student = cheapconv.cheapen(teacher, block, init="teacher")
        t0 = time.perf_counter()
        report = cheapconv.reconstruct(student, teacher, subset(full, samples, start=len(full) - samples),
                                       samples=samples, steps=steps, lr=lr, batch_size=batch, progress=False)
        seconds = time.perf_counter() - t0
        top1 = evaluate(student, test, batch_size=500, precision="bf16", channels_last=True)["top1"]
        rec = {"spec": setting, "step0": top1, "seconds": round(seconds, 1),
               "errors": [round(s.after, 3) for s in report.sites], "load": os.getloadavg()[0],
               "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(json.dumps(rec), flush=True)
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
