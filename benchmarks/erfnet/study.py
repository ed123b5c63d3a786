"""The Moonshine paper's segmentation study (Section 5.2, Table 4) on fashion-mnist-seg, resumably (issue 28).

The paper: an ERFNet teacher (2,073,428 parameters, 70.59 mIoU on Cityscapes), its ERFNet-G(N) student (503,956)
at 65.29 from scratch and 68.11 with attention transfer: "AT recovers part of the scratch gap". Here, on the
offline scenes ``fashion-mnist-seg`` at their native 64×64 (ERFNet's 8× downsampling leaves 8×8), 11 classes:

- ``teacher``: ERFNet from scratch, encoder first (its own 1×1 output conv, labels at 1/8), then the whole
  network, each phase until validation mIoU stops improving for ``--patience`` epochs (at most
  ``--teacher-max-epochs``, the lr decaying over those); the best epoch's weights are kept, then trained
  ``--teacher-anneal-epochs`` more with the lr decayed to 0 from its value there (a phase the rule stops early
  would otherwise end at a high lr, where the students' phases end at 0); the per-epoch curve is recorded;
- ``scratch``: ERFNet-G(N) from random weights in the same two phases, cross-entropy, ``--seeds`` seeds;
- ``at``: the same with attention transfer from the teacher via :func:`cheapconv.train.erfnet_phases`: layers 7,
  12, 16 at β = 1000 in the encoder phase, 7, 12, 16, 19, 22 at β = 600 in the whole-network phase;
- ``init``: ERFNet-G(N) from the trained teacher (``cheapen(init="teacher")``), reconstructed
  (:func:`cheapconv.reconstruct`), then one whole-network AT phase with ``DistillConfig.fine_tuning()``
  (``--init-seeds`` seeds);
- ``--stage latency``: teacher and student side by side at batch 1 in eager torch and ONNX Runtime.

Students train as many epochs per phase as the teacher's phases ran, annealing included (``--student-epochs``
overrides). Every
finished run is one JSON line in ``--results`` (``benchmarks/results/erfnet.jsonl``) and is skipped when the
command runs again; an interrupted run resumes from its checkpoints under ``--work``. Validation (stopping the
teacher, the curves) uses the last ``--val`` training scenes, held out from training; the table's figures are on
the test split. ``python -m benchmarks.erfnet.report`` renders the page from the results.

Where this differs from the paper, and why: the ERFNet paper trains with Adam and a poly schedule; cheapconv's
loop is SGD (momentum 0.9) with a cosine decay over each phase's length, used here for every row alike. Models
stay in memory or in state-dict files loaded into the zoo's ERFNet, whose module paths the AT taps name.

    python -m benchmarks.erfnet --smoke                 # every stage with tiny settings, results in /tmp
    python -m benchmarks.erfnet                         # the study (resumable; Ctrl-C is safe)
    python -m benchmarks.erfnet --stage latency         # on a quiet machine
    python -m benchmarks.erfnet.report --write          # the page benchmarks/erfnet/README.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import cheapconv
from cheapconv import count_macs, count_params
from cheapconv.data import SegmentationTensorDataset, get_dataset

from ..common.records import RESULTS as RESULTS_DIR
from ..common.records import append_record, file_sha, latest_by, read_records
from ..common.report import say
from . import latency as latency_mod
from . import training

COMMAND = ("python", "-m", "benchmarks.erfnet")
RESULTS = RESULTS_DIR / "erfnet.jsonl"
WORK = RESULTS_DIR.parents[1] / "runs" / "erfnet"   # checkpoints and the teacher (/runs/ is ignored by git)
#: the settings that shape the trained models: records made under others are not mixed with this run's
SETTINGS = ("data", "block", "subset", "val", "test_subset", "batch_size", "lr", "weight_decay", "precision",
            "teacher_seed", "teacher_max_epochs", "patience", "min_delta", "teacher_anneal_epochs",
            "student_epochs", "init_epochs", "calib_samples", "calib_steps")
SMOKE = {"subset": 128, "val": 32, "test_subset": 64, "teacher_max_epochs": 3, "patience": 1,
         "teacher_anneal_epochs": 1, "seeds": 1, "init_seeds": 1, "calib_samples": 32, "calib_steps": 5,
         "latency_repeats": 3, "latency_sizes": "64x64"}


def environment(args) -> dict:
    """What every record carries: the command, versions, machine state and date."""
    return {"command": shlex.join([*COMMAND, *args.argv]), "cheapconv": cheapconv.__version__,
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_avg": round(os.getloadavg()[0], 2), "host": platform.node(),
            **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def settings_of(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS}


# ---------------------------------------------------------------------------------------------------- data


def part(ds: SegmentationTensorDataset, start: int, stop: int, *, augment: bool) -> SegmentationTensorDataset:
    """Scenes ``start:stop`` of ``ds`` (the same tensors), with or without the training augmentation."""
    return SegmentationTensorDataset(ds.images[start:stop], ds.masks[start:stop], ds.info, augment=augment,
                                     crop_padding=ds.crop_padding, pad_value=ds.pad_value, repeat=ds.repeat)


def load_data(args) -> tuple:
    """(train, val, test, calib): training scenes less the last ``--val`` (augmented), those ``--val`` held out,
    the test split (the first ``--test-subset``), and the training scenes unaugmented for reconstruction."""
    full = get_dataset(args.data, "train", in_chans=1, seed=0)
    test = get_dataset(args.data, "test", in_chans=1, seed=0)
    n = len(full) - args.val
    if n < 1:
        raise SystemExit(f"--val {args.val} leaves no training scenes of {len(full)}")
    used = min(n, args.subset) if args.subset else n
    size = full.info.image_size
    if size % 8 or size // 8 < 4:
        raise SystemExit(f"{args.data}: ERFNet needs sides that are multiples of 8 with at least 4×4 left at 1/8, "
                         f"got {size}×{size}")
    return (part(full, 0, used, augment=True), part(full, n, len(full), augment=False),
            part(test, 0, min(len(test), args.test_subset or len(test)), augment=False),
            part(full, 0, used, augment=False))


# ---------------------------------------------------------------------------------------------------- runs


def student_epochs(args, teacher_record: dict) -> tuple[int, int]:
    """Epochs per phase of the students: ``--student-epochs`` or the teacher's phases' lengths."""
    if args.student_epochs != "teacher":
        e1, e2 = (int(x) for x in args.student_epochs.split(","))
        return e1, e2
    e1, e2 = (p["epochs_total"] for p in teacher_record["phases"])
    return e1, e2


def sizes(model: torch.nn.Module, image: int) -> dict:
    return {"params": count_params(model, "paper"), "macs": count_macs(model, (1, 1, image, image))}


def train_stage(args) -> None:
    records = read_records(args.results)
    other = [r for r in records if r.get("kind") == "run" and r.get("settings") != settings_of(args)]
    if other:
        raise SystemExit(f"{args.results} holds runs made with other settings (e.g. {other[0]['key']!r}); give "
                         "another --results (and --work) for these settings")
    done = latest_by([r for r in records if r.get("kind") == "run"], "key")
    args.work.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    image = data[0].info.image_size
    teacher_file = args.work / "teacher.pt"
    common = {"kind": "run", "block": args.block, "settings": settings_of(args), "train_images": len(data[0]),
              "val_images": len(data[1]), "test_images": len(data[2])}

    def finish(record: dict) -> None:
        append_record(args.results, {**common, **record, **environment(args)}, sort_keys=True)
        say(f"{record['key']}: test mIoU {record['test_miou']:.4f} (val {record['val_miou']:.4f})")

    if "teacher" in done:
        if not teacher_file.is_file():
            raise SystemExit(f"the teacher's record is in {args.results} but its weights {teacher_file} are gone; "
                             "give the --work folder it was trained in")
        teacher, trecord = training.load_teacher(teacher_file), done["teacher"]
    elif "teacher" in args.only:
        say("teacher: ERFNet from scratch, phase by phase until validation mIoU stops improving")
        teacher, fields = training.train_teacher(args, data[:3], args.work)
        torch.save(teacher.state_dict(), teacher_file)
        trecord = {"key": "teacher", "row": "teacher", "seed": args.teacher_seed, **sizes(teacher, image),
                   **fields, "teacher_sha": file_sha(teacher_file)}
        finish(trecord)
        teacher.eval()
    else:
        raise SystemExit("the students need the teacher: run with --only teacher first")
    epochs = student_epochs(args, trecord)
    for row, n in (("scratch", args.seeds), ("at", args.seeds), ("init", args.init_seeds)):
        if row not in args.only:
            continue
        for seed in range(n):
            key = f"{row}/{seed}"
            if key in done:
                continue
            say(f"{key}: ERFNet-{args.block} {row}, phases of {epochs} epochs")
            if row == "init":
                fields = training.fine_tune_student(seed, teacher, args, data[:3], data[3], args.work,
                                                    args.init_epochs or epochs[1])
            else:
                fields = training.train_student(row, seed, teacher, args, data[:3], args.work, epochs)
            model = training.fresh_student(args.block, seed)   # the same architecture in every student row
            finish({"key": key, "row": row, "seed": seed, **sizes(model, image), **fields,
                    "teacher_sha": trecord["teacher_sha"]})


def latency_stage(args) -> None:
    say(f"latency: teacher and ERFNet-{args.block} at batch 1, eager torch and onnxruntime, "
        f"{args.latency_sizes}, {args.latency_repeats} repeats (run it on a quiet machine)")
    record = {"kind": "latency", "key": "latency", "block": args.block, **latency_mod.measure(args),
              **environment(args)}
    append_record(args.results, record, sort_keys=True)
    for size, by_rt in record["sizes"].items():
        say(f"  {size}: " + "; ".join(f"{rt} teacher {v['teacher']['median_ms']} ms, student "
                                      f"{v['student']['median_ms']} ms" for rt, v in by_rt.items()))


def estimate(args) -> None:
    """A real epoch's training time per row and phase, extrapolated from the steps/s of this run's phases (their
    epochs' training time, validation excluded; on this machine as loaded as the records' load averages say)."""
    real = len(get_dataset(args.data, "train", in_chans=1, seed=0)) - PARSER_DEFAULTS["val"]
    steps = math.ceil(real / args.batch_size)
    say(f"extrapolation to a real epoch ({real:,} scenes, {steps} steps at batch {args.batch_size}) from the "
        "steps/s of this run's tiny phases, on a loaded machine (first epochs include warm-up): an estimate, not a "
        "measurement")
    for r in read_records(args.results):
        for p in r.get("phases", []) if r.get("kind") == "run" else []:
            i = p["curve_columns"].index("epoch_time_s")
            train_s = sum(pt[i] for pt in p["curve"])
            cols = p["curve_columns"]   # the teacher's curve has each epoch's last step: a stopped phase ran
            done = p["curve"][-1][cols.index("step")] if "step" in cols and p["curve"] else p["steps"]   # one more
            if done and train_s:
                rate = done / train_s
                say(f"  {r['key']} {p['name']}: {rate:.2f} steps/s (load average {r['load_avg']}) -> "
                    f"~{steps / rate / 60:.0f} min per real epoch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=" ".join(COMMAND), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["train", "latency", "all"], default="train")
    p.add_argument("--only", default="teacher,scratch,at,init", help="rows, a comma list of teacher,scratch,at,init")
    p.add_argument("--smoke", action="store_true", help="every stage with tiny settings (" +
                   ", ".join(f"{k}={v}" for k, v in SMOKE.items()) + "); results and work in a temporary folder")
    p.add_argument("--data", default="fashion-mnist-seg", help="the scenes at their native 64×64, 4 items at most")
    p.add_argument("--block", default="G(N)", help="the students' block (the paper's G(N))")
    p.add_argument("--subset", type=int, default=None, help="train on the first N scenes only (default: all)")
    p.add_argument("--val", type=int, default=2000, help="training scenes held out for validation")
    p.add_argument("--test-subset", type=int, default=None, help="the first N test scenes (default: all 2,000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=2e-4, help="the ERFNet paper's 2e-4")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher-seed", type=int, default=0)
    p.add_argument("--teacher-max-epochs", type=int, default=60, help="cap of each teacher phase")
    p.add_argument("--patience", type=int, default=5, help="epochs without a better validation mIoU that end a "
                   "teacher phase")
    p.add_argument("--min-delta", type=float, default=0.002, help="the mIoU gain that counts as better")
    p.add_argument("--teacher-anneal-epochs", type=int, default=5, help="epochs each teacher phase's best weights "
                   "train on, the lr decayed to 0 from its value at the best epoch (0: none)")
    p.add_argument("--student-epochs", default="teacher", help="E1,E2: epochs of the students' phases (default: "
                   "as many as the teacher's phases ran)")
    p.add_argument("--init-epochs", type=int, default=None, help="epochs of the init row's fine-tuning (default: "
                   "the students' second phase)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the scratch and AT rows")
    p.add_argument("--init-seeds", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=2048)
    p.add_argument("--calib-steps", type=int, default=200)
    p.add_argument("--latency-sizes", default="64x64,512x1024", help="HxW list (the study's and the paper's size)")
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--latency-threads", type=int, default=1)
    p.add_argument("--latency-device", default="cpu", help="where latency is measured (ONNX Runtime runs on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for training")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="checkpoints and the trained teacher")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in args.argv if a.startswith("--")}
    if args.smoke:
        for k, v in SMOKE.items():
            if k not in given:
                setattr(args, k, v)
        tmp = Path(tempfile.gettempdir()) / "erfnet-smoke"
        args.results = args.results or tmp / "erfnet.jsonl"
        args.work = args.work or tmp / "work"
        args.stage = "all" if "stage" not in given else args.stage
    args.results = args.results or RESULTS
    args.work = args.work or WORK
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = args.only - {"teacher", "scratch", "at", "init"}
    if unknown:
        p.error(f"--only takes teacher, scratch, at and init; got {', '.join(sorted(unknown))}")
    return args


PARSER_DEFAULTS = {"val": 2000}   # what estimate() extrapolates to, whatever a smoke run held out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.stage in ("train", "all"):
            train_stage(args)
        measured = any(r.get("kind") == "latency" for r in read_records(args.results))
        if args.stage == "latency" or (args.stage == "all" and not measured):   # 'all' measures once
            latency_stage(args)
        if args.smoke:
            estimate(args)
    except KeyboardInterrupt:
        say("interrupted: finished runs are in the results file and the current one left a checkpoint; run the "
            "same command again to continue")
        raise SystemExit(130) from None
    except cheapconv.CheapconvError as e:
        say(f"error: {e}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
