"""Segmentation study: a teacher trained from scratch on fashion-mnist-seg and cheap students of it, each trained
from scratch and distilled with attention transfer (AT on encoder and decoder maps), with params, MACs, latency
and mIoU.

The claim it tests (issue 12): the distilled cheap student beats the same student trained from scratch.

Runs, in order: ``teacher`` (cross-entropy from scratch), then for each ``--students`` spec a ``scratch`` run
(cross-entropy) and an ``at`` run (distilled from the trained teacher). Both runs of a student start from the
same random weights (the student is cheapened from an untrained copy of the teacher built with the same seed),
as in the paper (students start from random initialisation, not from the teacher). ``--teacher-init`` adds a
third run per student: teacher-initialised (``cheapen(teacher, policy, init='teacher')``), then AT. Every
run uses the same
schedule (the teacher's own optimiser and schedule, spec section 6) and is evaluated on the whole test split.

Resumable: each finished run is appended as one JSON line to ``--results`` and skipped when the script runs
again (the trained teacher is kept as a cheapconv file beside it, so students can still be distilled from it).
Latency is measured once, side by side (teacher and students interleaved, batch 1 and batch 16), and appended as
a ``latency`` line. Training shows the library's progress bar.

    python -m benchmarks.segmentation                      # the study on benchmarks/segmentation/README.md
    python -m benchmarks.segmentation --steps 40 --results /tmp/seg.jsonl   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import cheapconv
from cheapconv import DistillConfig, count_macs, count_params, distill, measure_side_by_side
from cheapconv.data import get_dataset

from ..common.records import RESULTS, append_record, latest_by, read_records

#: how the study is started, as its records name the command
COMMAND = ("python", "-m", "benchmarks.segmentation")


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=" ".join(COMMAND), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist-seg:32:2", help="dataset (canvas 32, 1-2 items per scene)")
    p.add_argument("--teacher", default="segwrn_16_1", help="teacher architecture (a zoo name)")
    p.add_argument("--students", nargs="+", default=["B(2)", "G(4)"], help="student policies")
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-init", action="store_true", help="also: each student teacher-initialised "
                   "(cheapen(teacher, policy, init='teacher'), data-free) and then distilled with AT")
    p.add_argument("--beta", type=float, default=1000.0, help="AT weight (the paper's 1000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=RESULTS / "segmentation.jsonl")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _command() -> str:
    return shlex.join([*COMMAND, *sys.argv[1:]])


def _fresh(args, in_chans: int, size: int) -> torch.nn.Module:
    torch.manual_seed(args.seed)   # the same initial weights for every run built from it
    return cheapconv.create_model(args.teacher, num_classes=11, in_chans=in_chans)


def _config(args, loss: str) -> DistillConfig:
    return DistillConfig(max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                         loss={"name": loss, "beta": args.beta} if loss == "at" else loss, seed=args.seed,
                         num_workers=0, eval_every=1000, log_every=50,
                         progress=not args.no_progress, device="cpu")


def _row(run: str, policy: str, loss: str, model, result, args, shape, started: float, load: tuple) -> dict:
    return {"run": run, "policy": policy, "loss": loss, "data": args.data, "teacher": args.teacher,
            "params": count_params(model, "trainable"), "macs": count_macs(model, shape),
            "val_miou": result.last.get("val_miou"), "val_pixel_acc": result.last.get("val_pixel_acc"),
            "train_miou": result.last.get("train_miou"), "steps": result.steps,
            "last_epoch_terms": {k: result.history[-1].get(k) for k in ("ce", "at", "kd", "loss")} if result.history
            else None, "batch_size": args.batch_size,
            "lr": args.lr, "schedule": args.schedule, "beta": args.beta if loss == "at" else None,
            "wall_s": round(time.time() - started, 1),
            "threads": args.threads, "loadavg_start": load, "loadavg_end": os.getloadavg(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "command": _command()}


def main(argv=None) -> None:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    train = get_dataset(args.data, "train", in_chans=1, seed=args.seed)
    test = get_dataset(args.data, "test", in_chans=1, seed=args.seed)
    size = train.info.image_size
    shape = (1, 1, size, size)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = latest_by(read_records(args.results), "run")
    teacher_file = args.results.with_name(args.results.stem + ".teacher.pt")

    if "teacher" in done and teacher_file.is_file():
        teacher = _fresh(args, 1, size)
        state = torch.load(teacher_file, map_location="cpu", weights_only=True)   # data only, no code runs
        teacher.load_state_dict(state.get("state_dict", state))   # a cheapconv file, or a bare state dict
        print(f"teacher: done (val mIoU {done['teacher']['val_miou']:.4f}), loaded {teacher_file}")
    else:
        started, load, teacher = time.time(), os.getloadavg(), _fresh(args, 1, size)
        result = distill(None, teacher, train, val_data=test, config=_config(args, "ce"))
        cheapconv.save(teacher, teacher_file)
        row = _row("teacher", "S", "ce", teacher, result, args, shape, started, load)
        append_record(args.results, row)
        print(f"teacher: val mIoU {row['val_miou']:.4f}, pixel acc {row['val_pixel_acc']:.4f}")

    students = {}
    for policy in args.students:
        students[policy] = cheapconv.cheapen(_fresh(args, 1, size), policy, input_size=(1, size, size))
        for loss, init in (("ce", "random"), ("at", "random")) + ((("at", "teacher"),) if args.teacher_init else ()):
            run = f"{policy}/{'scratch' if loss == 'ce' else 'at'}" + ("" if init == "random" else "+teacher-init")
            if run in done:
                print(f"{run}: done (val mIoU {done[run]['val_miou']:.4f})")
                continue
            started, load = time.time(), os.getloadavg()
            source = _fresh(args, 1, size) if init == "random" else teacher   # teacher init: from the trained one
            student = cheapconv.cheapen(source, policy, input_size=(1, size, size), init=init)
            result = distill(teacher if loss == "at" else None, student, train, val_data=test,
                             config=_config(args, loss))
            row = _row(run, policy, loss, student, result, args, shape, started, load)
            append_record(args.results, row)
            print(f"{run}: val mIoU {row['val_miou']:.4f}, pixel acc {row['val_pixel_acc']:.4f}")

    if "latency" not in done:
        names = ["teacher", *students]
        models = [teacher, *students.values()]
        lat = {}
        for batch in (1, 16):
            timed = measure_side_by_side(models, (batch, 1, size, size), device="cpu", repeats=30,
                                         threads=args.threads)
            lat[f"batch{batch}_median_ms"] = {n: round(t.median_ms, 3) for n, t in zip(names, timed, strict=True)}
        append_record(args.results, {"run": "latency", **lat, "threads": args.threads, "loadavg": os.getloadavg(),
                                     "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                     "command": _command()})
        print(json.dumps(lat))


if __name__ == "__main__":
    main()
