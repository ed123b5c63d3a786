"""The whole Moonshine recipe on real data, end to end, in a few minutes on a laptop-class CPU.

1. Train a small teacher (WRN-16-2) from scratch on real Fashion-MNIST (28×28 grayscale, zero-padded to
   32×32 and repeated to 3 channels, so the network is exactly the paper's CIFAR WRN).
2. Cheapen it twice: every residual block becomes a cheap block (default ``B(2)``, a bottleneck), once with
   random weights (as in the papers) and once started from the teacher: ``init="teacher"``, then
   ``cheapconv.reconstruct`` fits each cheap block to the teacher's output at that block on calibration
   images (training images the students never train on).
3. Distil both students from the teacher with attention transfer for the same short budget: the random one
   with the teacher's own recipe, the teacher-initialised one with its gradient norm clipped at 1 (at lr 0.1
   its first unclipped steps undo the good start; see ``benchmarks/teacher_init/README.md``).
4. Print a table: parameters (both conventions), MACs per image, measured latency (batch 1, side by side)
   and test accuracy, before distillation for the teacher-initialised student too.

The same steps on the command line::

    cheapconv train wrn_16_2 --data fashion-mnist --epochs 2 --precision bf16 --channels-last -o teacher.pt
    cheapconv cheapen teacher.pt --block 'B(2)' -o student.pt
    cheapconv cheapen teacher.pt --block 'B(2)' --init teacher --calib-data fashion-mnist -o student-ti.pt
    cheapconv distill --teacher teacher.pt --student student.pt --data fashion-mnist --loss at \\
        --epochs 1 --precision bf16 --channels-last -o trained.pt
    cheapconv distill --teacher teacher.pt --student student-ti.pt --data fashion-mnist --loss at \\
        --epochs 1 --precision bf16 --channels-last --grad-clip 1 -o trained-ti.pt
    cheapconv evaluate trained.pt --data fashion-mnist

To stay within minutes, the demo trains on the first ``--train-samples`` training images (default 20,000
of 60,000) for 2 epochs (teacher) and 1 epoch (each student), calibrates on 512 other training images, and
evaluates on all 10,000 test images; bf16 autocast and channels_last make the convolutions 2-4× faster on
CPUs with AVX-512 bf16/AMX. Progress goes to stderr, the table to stdout.

    python examples/demo.py                      # ~4-9 min on 2 cores, depending on how busy they are
    python examples/demo.py --block 'G(4)' --train-samples 60000 --teacher-epochs 5 --student-epochs 5
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path


def pick_threads(requested: str) -> int:
    """``auto``: every core this process may use, minus those other processes are busy on (load average).

    On a shared machine OpenMP threads that must wait for a busy core make every convolution wait; one
    thread per free core avoids that.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested != "auto":
        return max(1, int(requested))
    return max(1, min(cores, cores - math.floor(os.getloadavg()[0] + 0.25)))


def main() -> int:
    p = argparse.ArgumentParser(description="Train a teacher, cheapen it, distil the student, compare.")
    p.add_argument("--teacher", default="wrn_16_2")
    p.add_argument("--block", default="B(2)", help="Cheap block for every residual block, e.g. 'G(4)', 'B(2)'.")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-samples", type=int, default=20000, help="Training images used (0: all).")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--student-epochs", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=512, help="Calibration images of the teacher-initialised "
                   "student (0: skip that student).")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--loss", default="at", help="at, kd or at+kd.")
    p.add_argument("--precision", default="bf16", help="bf16 or fp32.")
    p.add_argument("--threads", default="auto", help="CPU threads (auto: free cores).")
    p.add_argument("--out", default="demo-out", help="Folder for the model files and metrics.")
    args = p.parse_args()

    import torch

    threads = pick_threads(args.threads)
    torch.set_num_threads(threads)

    import cheapconv
    from cheapconv import DistillConfig, distill
    from cheapconv.data import TensorImageDataset, get_dataset
    from cheapconv.errors import CheapconvError
    from cheapconv.train.metrics import evaluate

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"cheapconv demo: {args.teacher} -> {args.block} on {args.data}, {threads} thread(s), "
        f"{args.precision}, channels_last")
    try:
        train = get_dataset(args.data, "train", in_chans=3, image_size=32)
        test = get_dataset(args.data, "test", in_chans=3, image_size=32)
    except CheapconvError as e:
        say(f"error: {e}")
        return 2
    full = train   # all training images; the teacher-initialised student calibrates on ones not trained on
    if args.train_samples and args.train_samples < len(train):
        # The first N images: Fashion-MNIST's training set is shuffled, so every class is represented.
        train = TensorImageDataset(train.images[:args.train_samples], train.labels[:args.train_samples],
                                   train.info, augment=True, repeat=train.repeat)
    say(f"data: {len(train):,} training and {len(test):,} test images, padded 28->32, gray->3 channels")

    # The paper's optimiser and batch; for a 2-epoch run a cosine decay suits better than the paper's steps
    # at 30/60/80 % (designed for 200 epochs). Validation once, at the end, to spend the minutes on training.
    epochs = max(args.teacher_epochs, args.student_epochs)
    recipe = DistillConfig(batch_size=args.batch_size, precision=args.precision, channels_last=True, seed=0,
                           schedule="cosine", log_every=20, eval_every=epochs)
    # 1. the teacher, from scratch (the same loop with no teacher)
    torch.manual_seed(0)
    teacher = cheapconv.create_model(args.teacher, num_classes=train.info.num_classes)
    t0 = time.perf_counter()
    t_result = distill(None, teacher, train, val_data=test,
                       config=recipe.replace(epochs=args.teacher_epochs, loss="ce"), checkpoint=out / "teacher.ckpt",
                       overwrite=True)  # the demo owns its folder: a rerun starts over
    teacher_time = time.perf_counter() - t0
    teacher = teacher.to(memory_format=torch.contiguous_format)
    cheapconv.save(teacher, out / "teacher.pt")

    # 2. the students: the teacher's architecture with cheap blocks, (a) random initial weights, as in the
    # papers, (b) started from the teacher and fitted block by block to its outputs on calibration images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes about layers that keep their conv (the stem)
        student = cheapconv.cheapen(teacher, args.block)
        warm = cheapconv.cheapen(teacher, args.block, init="teacher") if args.calib_samples else None
    cheapconv.save(student, out / "student-init.pt")
    warm_time = 0.0
    if warm is not None:
        # the last training images: the teacher and the students train on the first --train-samples only
        n = min(args.calib_samples, max(0, len(full) - len(train)))
        calib = TensorImageDataset(full.images[len(full) - n:], full.labels[len(full) - n:], full.info,
                                   augment=False, repeat=full.repeat) if n else full
        t0 = time.perf_counter()
        say(f"reconstructing the teacher-initialised student on {len(calib) if n else args.calib_samples:,} "
            "calibration images")
        cheapconv.reconstruct(student=warm, teacher=teacher, data=calib, samples=args.calib_samples, steps=100,
                              progress=True)
        warm_time = time.perf_counter() - t0
        warm_start = evaluate(warm, test, batch_size=500, precision=args.precision, channels_last=True)
        cheapconv.save(warm, out / "student-teacher-init.pt")

    # 3. distillation with attention transfer, the same budget for both students
    t0 = time.perf_counter()
    s_result = distill(teacher, student, train, val_data=test,
                       config=recipe.replace(epochs=args.student_epochs, loss=args.loss),
                       checkpoint=out / "student.ckpt", overwrite=True)
    student_time = time.perf_counter() - t0
    student = student.to(memory_format=torch.contiguous_format)
    cheapconv.save(student, out / "student.pt")
    runs = [(f"teacher {args.teacher}", teacher, t_result.last, teacher_time),
            (f"{args.block} random init → {args.loss.upper()}", student, s_result.last, student_time)]
    if warm is not None:
        t0 = time.perf_counter()
        w_result = distill(teacher, warm, train, val_data=test,
                           config=recipe.replace(epochs=args.student_epochs, loss=args.loss, grad_clip=1.0),
                           checkpoint=out / "student-teacher-init.ckpt", overwrite=True)
        warm_train = time.perf_counter() - t0
        warm = warm.to(memory_format=torch.contiguous_format)
        cheapconv.save(warm, out / "student-teacher-init-trained.pt")
        runs += [(f"{args.block} teacher init", warm,
                  {"val_top1": warm_start["top1"], "val_top5": warm_start["top5"]}, warm_time),
                 (f"{args.block} teacher init → {args.loss.upper()}", warm, w_result.last, warm_time + warm_train)]

    # 4. the table: costs counted, latency measured (batch 1, every model timed side by side in one run),
    # accuracy on the full test set
    from cheapconv.measure.runtimes import measure_in_runtime

    models = list({id(m): m for _, m, _, _ in runs}.values())
    timed = measure_in_runtime([m.eval() for m in models], (1, 3, 32, 32), "torch", repeats=30, warmup=5)
    latency_of = {id(m): t.median_ms for m, t in zip(models, timed, strict=True)}
    rows = []
    for name, model, last, spent in runs:
        rows.append((name, cheapconv.count_params(model, "trainable"), cheapconv.count_params(model, "paper"),
                     cheapconv.count_macs(model, (1, 3, 32, 32)), latency_of[id(model)], last["val_top1"],
                     last["val_top5"], spent))
    _print_table(rows, args, len(train))
    say(f"done in {time.perf_counter() - started:.0f} s; models and metrics in {out}/")
    return 0


def _print_table(rows, args, n_train: int) -> None:
    from rich.console import Console
    from rich.table import Table

    teacher = rows[0]
    t = Table(title=f"Moonshine on {args.data}: {args.teacher} teacher vs its {args.block} students "
                    f"({n_train:,} training images; teacher {args.teacher_epochs} epochs, students "
                    f"{args.student_epochs} epoch{'s' if args.student_epochs != 1 else ''} of {args.loss.upper()})",
              title_justify="left")
    for col in ("model", "params (trainable)", "params (paper)", "MACs / image", "latency, batch 1",
                "test top-1", "test top-5", "time spent"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, trainable, paper, macs, ms, top1, top5, spent in rows:
        first = name == teacher[0]
        rel = "" if first else f" ({paper / teacher[2]:.0%})"
        mrel = "" if first else f" ({macs / teacher[3]:.0%})"
        speed = "" if first else f" ({teacher[4] / ms:.2f}×)"
        t.add_row(name, f"{trainable:,}", f"{paper:,}{rel}", f"{macs / 1e6:.1f} M{mrel}", f"{ms:.2f} ms{speed}",
                  f"{100 * top1:.2f}%", f"{100 * top5:.2f}%", f"{spent:.0f} s")
    Console(width=max(140, Console().width)).print(t)
    print("Latency: torch eager, fp32, median of 30 passes of each model in turn (speed-up over the teacher). "
          "Time spent: training, and for the teacher-initialised student the calibration fit before it.")


if __name__ == "__main__":
    sys.exit(main())
