"""Step-0 test accuracy of teacher-initialised + reconstructed students against the reconstruction's settings.

For each ``BLOCK:SAMPLES:STEPS:LR[:BATCH]`` given: ``cheapen(teacher, BLOCK, init="teacher")``, then
``cheapconv.reconstruct`` on the last SAMPLES Fashion-MNIST training images with STEPS Adam steps per site at
learning rate LR, then top-1 on the first ``--test-samples`` test images (bf16, channels_last; no training).
One JSON line per setting is appended to ``--results`` (the setting, the accuracy, each site's relative output
error after reconstruction, seconds and load average). Issue 11 chose the default lr with it.

    python -m benchmarks.teacher_init.reconstruct_sweep --teacher bench-out/teacher-init-2/teacher.pt \\
        'B(2):2048:200:1e-3' 'B(2):2048:200:1e-2' 'G(4):2048:200:1e-3' 'G(4):2048:200:1e-2'
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import cheapconv
from cheapconv.data import get_dataset
from cheapconv.train import evaluate

from ..common.records import RESULTS, append_record
from ..common.runs import quiet_cheapen, subset


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.teacher_init.reconstruct_sweep",
                                description=__doc__.split("\n")[0])
    p.add_argument("settings", nargs="+", help="BLOCK:SAMPLES:STEPS:LR[:BATCH], e.g. 'B(2):2048:200:1e-2'.")
    p.add_argument("--teacher", required=True, help="A trained teacher saved by cheapconv.save.")
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS / "reconstruct_sweep.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    full = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    test = subset(get_dataset("fashion-mnist", "test", in_chans=3, image_size=32), args.test_samples, augment=False)
    teacher = cheapconv.load(args.teacher).eval()
    for setting in args.settings:
        block, samples, steps, lr, *rest = setting.split(":")
        samples, steps, lr = int(samples), int(steps), float(lr)
        batch = int(rest[0]) if rest else 64
        torch.manual_seed(0)
        student = quiet_cheapen(teacher, block, init="teacher")
        t0 = time.perf_counter()
        calib = subset(full, samples, augment=False, start=len(full) - samples)
        report = cheapconv.reconstruct(student, teacher, calib, samples=samples, steps=steps, lr=lr, batch_size=batch,
                                       progress=False)
        seconds = time.perf_counter() - t0
        top1 = evaluate(student, test, batch_size=500, precision="bf16", channels_last=True)["top1"]
        rec = {"spec": setting, "step0": top1, "seconds": round(seconds, 1),
               "errors": [round(s.after, 3) for s in report.sites], "load": os.getloadavg()[0],
               "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(json.dumps(rec), flush=True)
        append_record(args.results, rec)


if __name__ == "__main__":
    main()
