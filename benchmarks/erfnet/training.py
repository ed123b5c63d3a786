"""The study's training runs, each on models held in memory (rebuilt from the zoo and loaded from state dicts, so
module paths such as ``layers.7`` stay the paper's, which the AT taps name):

- :func:`train_teacher`: ERFNet from scratch in the ERFNet recipe's two phases (encoder with its own output conv
  on labels at 1/8, then the whole network), each phase ended by :class:`~.plateau.Plateau` when validation mIoU
  stops improving (or at ``--teacher-max-epochs``); the best epoch's weights are kept;
- :func:`train_student`: ERFNet-G(N) from random weights, in the same two phases, from scratch (cross-entropy)
  or distilled with attention transfer on the paper's layers and β (:func:`cheapconv.train.erfnet_phases`);
- :func:`fine_tune_student`: ERFNet-G(N) built from the trained teacher (``cheapen(..., init="teacher")``),
  reconstructed block by block (:func:`cheapconv.reconstruct`), then one whole-network AT phase (layers 7, 12,
  16, 19, 22 at β = 600) with :meth:`cheapconv.DistillConfig.fine_tuning`.

Every phase is one :func:`cheapconv.train.run_phases` call with a checkpoint under ``--work``, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from cheapconv import DistillConfig, cheapen, create_model, evaluate, reconstruct
from cheapconv.train import Interrupted, Phase, erfnet_phases, phase_checkpoint, run_phases

from .plateau import Plateau

#: fashion-mnist-seg's classes (background and the ten items)
NUM_CLASSES = 11


def quiet(fn, *a, **kw):
    """``fn(*a, **kw)`` without its warnings (cheapen's "kept: ..." notes for the downsamplers' convs, which the
    paper keeps too, would bury the study's progress lines)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def fresh_teacher(seed: int) -> torch.nn.Module:
    """ERFNet for the scenes' 11 classes and one input channel, randomly initialised from ``seed``."""
    torch.manual_seed(seed)
    return create_model("erfnet", num_classes=NUM_CLASSES, in_chans=1)


def fresh_student(block: str, seed: int) -> torch.nn.Module:
    """ERFNet-``block`` from random weights (the paper's students start from random initialisation)."""
    return quiet(cheapen, fresh_teacher(seed), block)


def config(args, seed: int, *, fine_tuning: bool = False) -> DistillConfig:
    """The study's recipe for one run (lengths come from each phase)."""
    kw = dict(epochs=1, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=seed,
              precision=args.precision, device=args.device, progress=not args.quiet, num_workers=0, eval_every=1,
              checkpoint_every=1)
    return DistillConfig.fine_tuning(**kw) if fine_tuning else DistillConfig(schedule="cosine", **kw)


def scores(model: torch.nn.Module, data, prefix: str) -> dict:
    """mIoU and pixel accuracy of ``model`` on ``data`` (fractions), keys prefixed."""
    got = evaluate(model, data, batch_size=100)
    return {f"{prefix}_miou": round(got["miou"], 5), f"{prefix}_pixel_acc": round(got["pixel_acc"], 5)}


def metrics_file(ckpt: Path, index: int = 1) -> Path:
    """The metrics file of phase ``index`` of the run checkpointed as ``ckpt`` (beside its checkpoint)."""
    return phase_checkpoint(ckpt, index).with_suffix(".metrics.jsonl")


def phase_summary(phase: Phase, result, metrics: Path) -> dict:
    """A finished phase of a fixed length: its validation curve (read from the phase's metrics file, so a phase
    resumed after an interruption keeps its earlier epochs), steps and training time (the epochs' own time,
    validation excluded, on a machine as loaded as the record's load average says)."""
    epochs = {}
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        rec = json.loads(line) if line.strip() else {}
        if rec.get("kind") == "epoch":
            epochs[rec["epoch"]] = rec   # an epoch replayed by a resume counts once, the later record
    records = [epochs[k] for k in sorted(epochs)] or result.history
    curve = [[r["epoch"], r.get("val_miou"), r.get("loss"), r.get("epoch_time_s")] for r in records]
    return {"name": phase.name, "phase": str(phase), "steps": result.steps,
            "wall_s": round(sum(r.get("epoch_time_s") or 0.0 for r in records), 1),
            "curve": curve, "curve_columns": ["epoch", "val_miou", "train_loss", "epoch_time_s"],
            "val_miou": result.last.get("val_miou")}


# ------------------------------------------------------------------------------------------------ the teacher


def train_teacher(args, data, work: Path) -> tuple[torch.nn.Module, dict]:
    """The teacher, phase by phase until validation mIoU stops improving; returns it and its record's fields."""
    train, val, test = data
    model = fresh_teacher(args.teacher_seed)
    cap = args.teacher_max_epochs
    summaries = []
    for i, phase in enumerate(erfnet_phases(cap, cap), start=1):
        done = work / f"teacher-{i}.done.pt"
        if done.exists():   # a finished phase: its best weights and summary, read as data only
            saved = torch.load(done, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["state"])
            summaries.append(json.loads(saved["summary"]))
            continue
        ckpt = work / f"teacher-{i}.ckpt"
        plateau = Plateau(model, work / f"teacher-{i}.curve.jsonl", patience=args.patience, min_delta=args.min_delta)
        if not any(work.glob(f"teacher-{i}.phase*.ckpt")):   # points of an attempt that left no checkpoint
            plateau.curve.unlink(missing_ok=True)
            plateau.best_file.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            [result] = run_phases(None, model, train, [phase], val_data=val, config=config(args, args.teacher_seed),
                                  checkpoint=ckpt, resume=True, callbacks=[plateau])
            steps = result.steps
        except Interrupted as e:
            if not plateau.stopped:   # Ctrl-C: the phase's checkpoint is written; the next run resumes it
                raise
            steps = e.step
        model.load_state_dict(plateau.best_state())
        summary = {"name": phase.name, "phase": str(phase), **plateau.summary(), "steps": steps,
                   "wall_s": round(time.perf_counter() - t0, 1), "max_epochs": cap}
        summary["anneal"] = anneal(model, phase, summary, args, (train, val), work / f"teacher-{i}-anneal.ckpt")
        summary["epochs_total"] = summary["epochs_run"] + (summary["anneal"]["epochs"] if summary["anneal"] else 0)
        torch.save({"state": model.state_dict(), "summary": json.dumps(summary)}, done)
        summaries.append(summary)
    return model, {"phases": summaries, **scores(model, val, "val"), **scores(model, test, "test")}


def anneal(model: torch.nn.Module, phase: Phase, summary: dict, args, data, ckpt: Path) -> dict | None:
    """The phase's best weights trained ``--teacher-anneal-epochs`` more, the lr decayed (cosine) to 0 from its
    value at the best epoch: a phase stopped by the plateau rule stops at a high lr, where the students' own
    phases end at 0, which would favour the students. None where the length is 0."""
    if not args.teacher_anneal_epochs:
        return None
    columns = summary["curve_columns"]
    best = next(pt for pt in summary["curve"] if pt[columns.index("epoch")] == summary["best_epoch"])
    lr = best[columns.index("lr")]
    tail = Phase(train=phase.train, taps=phase.taps, beta=phase.beta, target=phase.target,
                 epochs=args.teacher_anneal_epochs, name=f"{phase.name}, annealed")
    [result] = run_phases(None, model, data[0], [tail], val_data=data[1],
                          config=config(args, args.teacher_seed).replace(lr=lr), checkpoint=ckpt, resume=True)
    return {**phase_summary(tail, result, metrics_file(ckpt)), "epochs": args.teacher_anneal_epochs, "lr_start": lr}


def load_teacher(path: Path) -> torch.nn.Module:
    """The trained teacher from its state dict (data only): the zoo's ERFNet, with its module paths."""
    model = fresh_teacher(0)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


# ------------------------------------------------------------------------------------------------ the students


def train_student(mode: str, seed: int, teacher: torch.nn.Module | None, args, data, work: Path,
                  epochs: tuple[int, int]) -> dict:
    """ERFNet-G(N) from random weights in the two phases: ``mode`` ``"scratch"`` (no teacher) or ``"at"``."""
    train, val, test = data
    student = fresh_student(args.block, seed)
    phases = erfnet_phases(*epochs)
    t0 = time.perf_counter()
    ckpt = work / f"{mode}-{seed}.ckpt"
    results = run_phases(teacher if mode == "at" else None, student, train, phases, val_data=val,
                         config=config(args, seed), checkpoint=ckpt, resume=True)
    wall = time.perf_counter() - t0
    return {"phases": [phase_summary(p, r, metrics_file(ckpt, i))
                       for i, (p, r) in enumerate(zip(phases, results, strict=True), start=1)],
            "wall_s": round(wall, 1), **scores(student, val, "val"), **scores(student, test, "test")}


def fine_tune_student(seed: int, teacher: torch.nn.Module, args, data, calib, work: Path, epochs: int) -> dict:
    """ERFNet-G(N) from the trained teacher: closed-form start, reconstruction, then one AT phase (fine-tuning)."""
    train, val, test = data
    torch.manual_seed(seed)
    student = quiet(cheapen, teacher, args.block, init="teacher")
    t0 = time.perf_counter()
    quiet(reconstruct, student, teacher, calib, samples=args.calib_samples, steps=args.calib_steps, seed=seed,
          progress=not args.quiet)
    start = {"init_s": round(time.perf_counter() - t0, 1), **scores(student, test, "start_test")}
    whole = erfnet_phases()[1]
    phase = Phase(train="all", taps=whole.taps, beta=whole.beta, epochs=epochs, name="fine-tuning")
    t0 = time.perf_counter()
    ckpt = work / f"init-ft-{seed}.ckpt"
    [result] = run_phases(teacher, student, train, [phase], val_data=val, config=config(args, seed, fine_tuning=True),
                          checkpoint=ckpt, resume=True)
    wall = time.perf_counter() - t0
    return {**start, "phases": [phase_summary(phase, result, metrics_file(ckpt))], "wall_s": round(wall, 1),
            "calib_samples": args.calib_samples, "calib_steps": args.calib_steps,
            **scores(student, val, "val"), **scores(student, test, "test")}
