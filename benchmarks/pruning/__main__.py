"""The channel-pruning baseline (issue 31 item 3): Torch-Pruning students of the compress study's teacher, fine-tuned
with cheapconv's own recipe and measured where a ``compress`` student is, so the two meet at the same budgets.

The teacher is the WRN-16-2 of ``benchmarks/compress`` (real Fashion-MNIST at 32×32, 3 channels). Each student is
``MetaPruner`` at a global ratio with L2-magnitude or Taylor importance, the classifier ignored, then distilled from
the teacher for one epoch per seed with ``DistillConfig.fine_tuning`` (``students.py``); the teacher and one student
per (importance, ratio) are then timed side by side in eager torch, ONNX Runtime and ONNX Runtime int8 at batch 1
on 1 thread (``latency.py``). Stages, each resumable (a record already in ``benchmarks/results/pruning.jsonl`` is
skipped; students are saved in ``--out``):

    python -m benchmarks.pruning --teacher T.pt --out bench-out/pruning                   # students (training)
    python -m benchmarks.pruning --teacher T.pt --out bench-out/pruning --stage latency   # quiet machine
    python -m benchmarks.pruning --report
    python -m benchmarks.pruning --smoke --out /tmp/pruning-smoke   # every stage on a random wrn_10_1, in seconds

Needs Torch-Pruning (``pip install 'cheapconv[baselines]'``). Latency figures need a quiet machine: every record
keeps the load average.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import cheapconv
from cheapconv import UsageError
from cheapconv.data import get_dataset

from ..common.records import append_record, file_sha, latest_by, read_records
from ..common.report import say
from ..common.runs import subset
from .latency import RUNTIMES, latency_record, students_to_time
from .students import (
    IMPORTANCES,
    TAYLOR_SAMPLES,
    fine_tune,
    prune,
    save_student,
    student_name,
    student_path,
    torch_pruning,
)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "pruning.jsonl"
RATIOS = (0.3, 0.45, 0.6, 0.75)
INPUT_SHAPE = (3, 32, 32)


def teacher_lr(teacher_file: Path) -> float:
    """The peak lr the teacher file records for its training (compress fine-tunes at it), else 0.1."""
    config = (cheapconv.read_recipe(teacher_file).get("training") or {}).get("config") or {}
    lr = config.get("lr")
    return float(lr) if isinstance(lr, (int, float)) and 0 < lr < 10 else 0.1


def datasets(args: argparse.Namespace) -> tuple:
    """(augmented training set, unaugmented Taylor calibration images, test set); a few images under --smoke."""
    data = dict(in_chans=INPUT_SHAPE[0], image_size=INPUT_SHAPE[1])
    train = get_dataset("fashion-mnist", "train", **data)
    plain = get_dataset("fashion-mnist", "train", augment=False, **data)
    test = get_dataset("fashion-mnist", "test", **data)
    if args.smoke:
        return subset(train, 64, augment=True), subset(plain, 64, augment=False), subset(test, 64, augment=False)
    return train, subset(plain, TAYLOR_SAMPLES, augment=False), test


def run_students(args: argparse.Namespace, sha: str) -> None:
    """The teacher's record, then every (importance, ratio, seed) not yet in the results file."""
    teacher = cheapconv.load(args.teacher)
    train, calibration, test = datasets(args)
    done = latest_by(read_records(args.results), "key")
    params, macs = cheapconv.count_params(teacher, "paper"), cheapconv.count_macs(teacher, (1, *INPUT_SHAPE))
    if f"teacher {sha}" not in done:
        top1 = cheapconv.evaluate(teacher, test)["top1"]
        append_record(args.results, {"key": f"teacher {sha}", "stage": "teacher", "teacher_sha": sha,
                                     "file": str(args.teacher), "top1": top1, "params": params, "macs": macs})
    lr = teacher_lr(args.teacher)
    for importance in args.importances:
        for ratio in args.ratios:
            name = student_name(importance, ratio)
            keys = {seed: f"student {name} {sha} e{args.epochs} s{seed}" for seed in args.seeds}
            todo = [seed for seed, key in keys.items() if key not in done]
            if not todo:
                continue
            say(f"== {name}: pruning")
            start, recipe = prune(teacher, importance, ratio, INPUT_SHAPE, calibration=calibration)
            counts = {"params": cheapconv.count_params(start, "paper"),
                      "macs": cheapconv.count_macs(start, (1, *INPUT_SHAPE))}
            for seed in todo:
                say(f"== {name} seed {seed}: {counts['params'] / params:.2f}× the params, fine-tuning")
                began = time.perf_counter()
                result = fine_tune(teacher, start, train, test, lr=lr, epochs=args.epochs, seed=seed,
                                   max_steps=2 if args.smoke else None, batch_size=32 if args.smoke else 128,
                                   precision=args.precision, channels_last=args.channels_last,
                                   progress=not args.quiet)
                seconds = time.perf_counter() - began
                say(f"   {name} seed {seed}: {result.start_end}")
                path = student_path(args.out, importance, ratio, seed)
                storage = save_student(result.student, path, recipe, INPUT_SHAPE,
                                       extra={"training": {"seed": seed, "epochs": args.epochs, "lr": lr,
                                                           "start": result.start, "end": result.end}})
                append_record(args.results, {
                    "key": keys[seed], "stage": "students", "teacher_sha": sha, "name": name,
                    "importance": importance, "ratio": ratio, "seed": seed, "epochs": args.epochs,
                    "steps": result.steps, "lr": lr, "precision": args.precision, **counts,
                    "teacher_params": params, "teacher_macs": macs, "start": result.start, "end": result.end,
                    "pruning": recipe, "file": str(path), "storage": storage, "seconds": seconds})


def run_latency(args: argparse.Namespace, sha: str) -> None:
    """One side-by-side record per runtime for the teacher and the students trained so far."""
    records = [r for r in read_records(args.results) if r.get("teacher_sha") == sha]
    students = students_to_time(records)
    if not students:
        say("No trained students to time yet: run the students stage first.")
        return
    files = {"teacher": args.teacher, **students}
    done = latest_by(records, "key")
    for runtime in args.runtimes:
        key = f"latency {runtime} {sha} {','.join(files)}"
        if key in done:
            continue
        say(f"== {key}")
        append_record(args.results, {"key": key, "stage": "latency", "teacher_sha": sha,
                                     **latency_record(files, INPUT_SHAPE, runtime, repeats=args.repeats)})


def smoke_teacher(out: Path) -> Path:
    """A random wrn_10_1 saved in ``out`` (made once): the smoke run's teacher."""
    path = out / "smoke-teacher.pt"
    if not path.is_file():
        torch.manual_seed(0)
        cheapconv.save(cheapconv.create_model("wrn_10_1", num_classes=10, in_chans=INPUT_SHAPE[0]), path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pruning", description=__doc__.split("\n")[0])
    p.add_argument("--teacher", type=Path, help="The trained WRN-16-2 teacher file (benchmarks/compress's).")
    p.add_argument("--out", type=Path, default=Path("bench-out/pruning"), help="Where the students are saved.")
    p.add_argument("--stage", choices=("students", "latency"), default="students")
    p.add_argument("--importances", nargs="+", choices=IMPORTANCES, default=list(IMPORTANCES))
    p.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS), help="Global pruning ratios.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Fine-tuning seeds.")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES))
    p.add_argument("--repeats", type=int, default=30, help="Side-by-side timing rounds.")
    p.add_argument("--results", type=Path, default=RESULTS, help="The results file (JSON lines).")
    p.add_argument("--smoke", action="store_true", help="Every stage on a random wrn_10_1, 64 images, 2 steps, "
                   "ratio 0.5, seed 0, 2 timing rounds; results in OUT/pruning-smoke.jsonl; then the report.")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", action="store_true", help="Print the tables from the results file and stop.")
    args = p.parse_args(argv)
    if args.report:
        from .report import render

        print(render(read_records(args.results)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.teacher, args.results = smoke_teacher(args.out), args.out / "pruning-smoke.jsonl"
        args.ratios, args.seeds, args.repeats = [0.5], [0], 2
    elif args.teacher is None:
        p.error("--teacher is required (or --report, --smoke)")
    stages = ("students", "latency") if args.smoke else (args.stage,)
    if "students" in stages:
        try:
            torch_pruning()   # missing: said before any work, as a usage error (exit 2)
        except UsageError as e:
            p.error(str(e))
    torch.set_num_threads(1)
    sha = file_sha(args.teacher)
    for stage in stages:
        (run_students if stage == "students" else run_latency)(args, sha)
    if args.smoke:
        from .report import render

        print(render(read_records(args.results)))


if __name__ == "__main__":
    main()
