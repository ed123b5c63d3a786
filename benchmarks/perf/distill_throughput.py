"""Distillation throughput: ``cheapconv.distill`` against a plain hand-written PyTorch loop, side by side.

Both loops distil the same student (``cheapen(teacher, BLOCK)``) from the same teacher with attention
transfer, on the same batches of real Fashion-MNIST (padded to 32×32, grayscale repeated to 3 channels), with
the same optimiser. The plain loop is what the Moonshine reference code does: fp32, NCHW, the teacher's
forward with autograd on (it runs in eval mode but builds a graph), ``loss.item()`` and accuracy read back
every step, a standard DataLoader. ``cheapconv.distill`` runs with its throughput settings (teacher under
``inference_mode``, channels_last, bf16 autocast), plus an ablation that switches them on one at a time.

Timing, two figures per loop: the per-step wall time (data included) after warm-up steps, median over all
timed steps; and the whole call (set-up, warm-up and every step: what a user waits for), as images/s over
all its steps. The loops alternate in rounds so that machine noise hits both alike; same-round ratios are
reported. Threads are stated (``--threads``), and the load average at the start.

Accuracy parity (``--parity-samples N --parity-epochs E``): both loops train a student from the same
initial weights for E epochs on the first N training images (same batches, lr schedule and augmentation
stream), then both students are evaluated in fp32 on the 10,000 test images. ``--teacher-file`` supplies
a trained teacher (e.g. from ``examples/demo.py --keep``); otherwise the teacher is trained here first with
``cheapconv.distill`` for ``--teacher-epochs`` on the same subset.

    python -m benchmarks.perf.distill_throughput --threads 2 --steps 22 --warmup 2 --rounds 3   # 24-step calls
    python -m benchmarks.perf.distill_throughput --threads 1 --parity-samples 10000 --parity-epochs 2 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
import warnings

import torch
from torch.utils.data import DataLoader

import cheapconv
from cheapconv import DistillConfig, distill, record
from cheapconv.data import get_dataset
from cheapconv.train import DistillationLoss

from ..common.report import say
from ..common.runs import StepTimer, subset

# ---------------------------------------------------------------------------------------- the plain loop


def plain_loop(teacher, student, data, *, batch_size: int, steps: int, cfg: DistillConfig, seed: int,
               epochs: int | None = None, device: str = "cpu") -> list[float]:
    """The reference code's loop, written plainly. Returns per-step wall times (seconds; on a GPU each step
    ends with the reference code's ``.item()`` reads, which synchronise)."""
    teacher, student = teacher.to(device), student.to(device)
    loss_fn = DistillationLoss(cfg.objective(teacher=True))
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, generator=g)
    spe = len(loader)
    total = steps if epochs is None else epochs * spe
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cfg.lr_factor(s, spe))
    teacher.eval()
    student.train()
    times, step = [], 0
    t_last = time.perf_counter()
    with record(teacher) as t_acts, record(student) as s_acts:
        while step < total:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                t_logits = teacher(x)                      # autograd on, as in the reference code
                s_logits = student(x)
                loss, _ = loss_fn(s_logits, y, teacher_logits=t_logits, student_acts=list(s_acts),
                                  teacher_acts=list(t_acts))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                _ = loss.item(), (s_logits.argmax(1) == y).float().mean().item()   # per-step logging
                now = time.perf_counter()
                times.append(now - t_last)
                t_last = now
                step += 1
                if step >= total:
                    break
    return times


def ours(teacher, student, data, cfg: DistillConfig) -> list[float]:
    timer = StepTimer()
    distill(teacher, student, data, config=cfg, callbacks=[timer])
    return timer.times


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.distill_throughput",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="wrn_16_2")
    p.add_argument("--data", default="fashion-mnist", help="Dataset name (e.g. synthetic:3x32x32:10:8192 where "
                   "Fashion-MNIST is not installed, as on the GPU machine).")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both loops run there).")
    p.add_argument("--teacher-file", default=None, help="A trained teacher (cheapconv file).")
    p.add_argument("--block", default="G(4)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=12, help="Timed steps per loop and round.")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--compile", action="store_true", help="Add a torch.compile variant (compiles for ~1 min).")
    p.add_argument("--parity-samples", type=int, default=0, help="0: skip the accuracy comparison.")
    p.add_argument("--parity-epochs", type=int, default=2)
    p.add_argument("--parity-seeds", type=int, default=1, help="Runs per loop (shuffle/augmentation seeds).")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--json", default=None, help="Also write the results here.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*(group|divide|kept).*")

    train = get_dataset(args.data, "train", in_chans=3, image_size=32)
    test = get_dataset(args.data, "test", in_chans=3, image_size=32)
    torch.manual_seed(0)
    if args.teacher_file:
        teacher = cheapconv.load(args.teacher_file)
    else:
        teacher = cheapconv.create_model(args.teacher)
    base = DistillConfig(batch_size=args.batch_size, loss="at", progress=False, seed=0, device=args.device)
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                                 "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                                 "cores": os.cpu_count(), "torch": torch.__version__,
                                 "load_avg_at_start": os.getloadavg()[0]},
                     "teacher": args.teacher_file or args.teacher, "block": args.block,
                     "batch_size": args.batch_size}

    if args.parity_samples and not args.teacher_file:
        part = subset(train, args.parity_samples, augment=True)
        say(f"training the teacher ({args.teacher_epochs} epochs on {args.parity_samples} images)...")
        distill(None, teacher, part, config=base.replace(epochs=args.teacher_epochs, loss="ce",
                                                          precision="bf16", channels_last=True))
        teacher = teacher.to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student0 = cheapconv.cheapen(teacher, args.block)
    results["params_paper"] = {"teacher": cheapconv.count_params(teacher, "paper"),
                               "student": cheapconv.count_params(student0, "paper")}

    # ------------------------------------------------------------------------ throughput, interleaved
    variants = {"plain": None,
                "cheapconv (fp32, NCHW)": base,
                "cheapconv (fp32, channels_last)": base.replace(channels_last=True),
                "cheapconv (bf16, channels_last)": base.replace(channels_last=True, precision="bf16")}
    if args.compile:
        variants["cheapconv (bf16, channels_last, compile)"] = base.replace(channels_last=True, precision="bf16",
                                                                            compile=True)
    if args.no_ablation:
        variants = {k: v for k, v in variants.items()
                    if k in ("plain", "cheapconv (fp32, NCHW)", "cheapconv (bf16, channels_last)") or "compile" in k}
    times: dict[str, list[float]] = {k: [] for k in variants}
    per_round: dict[str, list[float]] = {k: [] for k in variants}   # images/s of each round (median step)
    whole: dict[str, list[float]] = {k: [] for k in variants}       # images/s of each whole call
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            student = copy.deepcopy(student0)
            teacher_r = copy.deepcopy(teacher)
            n = args.warmup + args.steps + (2 if "compile" in name else 0)
            t0 = time.perf_counter()
            if variants[name] is None:
                t = plain_loop(teacher_r, student, train, batch_size=args.batch_size, steps=n, cfg=base, seed=r,
                               device=args.device)
            else:
                t = ours(teacher_r, student, train, variants[name].replace(max_steps=n, seed=r, epochs=None))
            whole[name].append(n * args.batch_size / (time.perf_counter() - t0))
            warm = args.warmup + (2 if "compile" in name else 0)   # compiling takes the first 2-3 steps
            times[name].extend(t[warm:])
            per_round[name].append(args.batch_size / statistics.median(t[warm:]))
            say(f"round {r + 1}/{args.rounds} {name}: {args.batch_size / statistics.median(t[warm:]):.1f} "
                f"images/s (median step), {whole[name][-1]:.1f} images/s (whole call)")
    plain_ips = args.batch_size / statistics.median(times["plain"])
    rows = []
    for name, ts in times.items():
        ips = args.batch_size / statistics.median(ts)
        # Same-round ratios are the robust figure on a noisy machine: both loops saw the same moment.
        ratios = [a / b for a, b in zip(per_round[name], per_round["plain"], strict=True)]
        whole_ratios = [a / b for a, b in zip(whole[name], whole["plain"], strict=True)]
        rows.append({"loop": name, "images_per_s": round(ips, 1), "vs_plain": round(ips / plain_ips, 2),
                     "vs_plain_per_round": [round(r, 2) for r in ratios],
                     "vs_plain_median_of_rounds": round(statistics.median(ratios), 2), "steps_timed": len(ts),
                     "whole_call_images_per_s": round(statistics.median(whole[name]), 1),
                     "whole_call_vs_plain_per_round": [round(r, 2) for r in whole_ratios],
                     "whole_call_vs_plain_median_of_rounds": round(statistics.median(whole_ratios), 2)})
    results["throughput"] = rows

    # ----------------------------------------------------------------------------------- accuracy
    if args.parity_samples:
        part = subset(train, args.parity_samples, augment=True)
        cfg = base.replace(epochs=args.parity_epochs, lr=0.1, schedule="multistep")
        parity: dict = {}
        for name in ("plain", "cheapconv (bf16, channels_last)"):
            runs = []
            for seed in range(args.parity_seeds):
                torch.manual_seed(1 + seed)   # augmentation stream
                student = copy.deepcopy(student0)
                t0 = time.perf_counter()
                if name == "plain":
                    plain_loop(copy.deepcopy(teacher), student, part, batch_size=args.batch_size, steps=0,
                               cfg=cfg, seed=seed, epochs=args.parity_epochs)
                else:
                    distill(copy.deepcopy(teacher), student, part,
                            config=cfg.replace(precision="bf16", channels_last=True, seed=seed))
                wall = time.perf_counter() - t0
                student = student.to(memory_format=torch.contiguous_format)
                acc = cheapconv.evaluate(student, test, batch_size=500)
                runs.append({"seed": seed, "test_top1": round(acc["top1"], 4), "test_top5": round(acc["top5"], 4),
                             "test_loss": round(acc["loss"], 4), "train_wall_s": round(wall, 1)})
                say(f"parity {name} seed {seed}: {runs[-1]}")
            parity[name] = {"runs": runs,
                            "test_top1_mean": round(statistics.mean(r["test_top1"] for r in runs), 4),
                            "train_wall_s_mean": round(statistics.mean(r["train_wall_s"] for r in runs), 1)}
        parity["teacher"] = {"test_top1": round(cheapconv.evaluate(teacher, test, batch_size=500)["top1"], 4)}
        results["parity"] = {"samples": args.parity_samples, "epochs": args.parity_epochs, **parity}

    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(_markdown(results))


def _markdown(res: dict) -> str:
    lines = [f"threads {res['machine']['threads']}, batch {res['batch_size']}, teacher {res['teacher']} -> "
             f"{res['block']} student, load average at start {res['machine']['load_avg_at_start']:.2f}", "",
             "| loop | images/s (median step) | × plain, each round | images/s (whole call) "
             "| × plain, each round |", "|---|---:|---|---:|---|"]
    lines += [f"| {r['loop']} | {r['images_per_s']:.1f} | {', '.join(f'{x:.2f}' for x in r['vs_plain_per_round'])} "
              f"| {r['whole_call_images_per_s']:.1f} | "
              f"{', '.join(f'{x:.2f}' for x in r['whole_call_vs_plain_per_round'])} |" for r in res["throughput"]]
    if "parity" in res:
        par = res["parity"]
        lines += ["", f"accuracy after {par['epochs']} epochs on {par['samples']} images (test set, fp32 eval; "
                  f"teacher {100 * par['teacher']['test_top1']:.2f}%):", "",
                  "| loop | test top-1 per seed | mean | train wall s (mean) |", "|---|---|---:|---:|"]
        for k in ("plain", "cheapconv (bf16, channels_last)"):
            per_seed = ", ".join(f"{100 * r['test_top1']:.2f}%" for r in par[k]["runs"])
            lines.append(f"| {k} | {per_seed} | {100 * par[k]['test_top1_mean']:.2f}% | "
                         f"{par[k]['train_wall_s_mean']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
