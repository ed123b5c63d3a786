"""Continuing a run from its checkpoint: what must match, what may change, and loading the state.

A resume must use the settings (:meth:`DistillConfig.trajectory_diff`), the training data and the teacher
(fingerprints in the checkpoint's info) of the run it continues; otherwise it is refused with the list of
differences. ``lr`` and ``grad_clip`` may be changed on purpose (the advice after a non-finite loss): the
schedule then continues from the new base lr, a warning says so, and the run logs a ``resume`` record.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .callbacks import Callback
from .checkpoint import fingerprint_differences, load_checkpoint, restore_rng
from .config import DistillConfig
from .distributed import DistContext

__all__ = ["emit_resume_record", "resume_from"]


def resume_from(path: Path, cfg: DistillConfig, ctx: DistContext, student: nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, steps_per_epoch: int,
                data_fp: dict | None, teacher_fp: dict | None) -> tuple[int, dict[str, Any], dict[str, tuple]]:
    """Load a checkpoint into the run's objects; returns the step to continue from, the checkpoint's info
    and the resume-adjustable settings that changed (``{name: (now, checkpoint)}``)."""
    payload = load_checkpoint(path)
    saved = DistillConfig.from_dict(json.loads(payload["config_json"]))
    info = payload.get("info") or {}
    problems = []
    diff = cfg.trajectory_diff(saved)
    if diff:
        listed = "; ".join(f"{k}: checkpoint {a_b[1]!r}, now {a_b[0]!r}" for k, a_b in sorted(diff.items()))
        problems.append(f"the training settings differ ({listed})")
    problems += fingerprint_differences(info, data_fp, teacher_fp)
    if problems:
        raise UsageError(f"Cannot resume from {str(path)!r} exactly: {'; '.join(problems)}. Resume with the "
                         "data, teacher and settings of the interrupted run (only --lr and --grad-clip may change "
                         "on a resume), or start a new run with --overwrite (overwrite=True) instead of --resume.")
    step = payload["step"]   # a whole number >= 0 (load_checkpoint checked it)
    total = cfg.total_steps(steps_per_epoch)
    if step > total:
        raise UsageError(f"The checkpoint {str(path)!r} is at step {step:,}, past the {total:,} steps of this run: "
                         "it was edited, or belongs to a run on other data. Resume from the checkpoint the run "
                         "wrote, or start over with --overwrite.")
    try:
        student.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise UsageError(f"The checkpoint {str(path)!r} does not fit this student: "
                         f"{str(e).strip().splitlines()[0]}") from None
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if payload.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(payload["scaler"])
    rng = payload["rng"]
    if len(rng) == ctx.world_size:
        restore_rng(rng[ctx.rank])
    else:  # a different number of processes: the data order is the same, the augmentation draws are not
        warnings.warn(f"The checkpoint was written by {len(rng)} process(es), this run has {ctx.world_size}: "
                      "resuming with fresh augmentation randomness (the run continues, not bit-exactly).",
                      stacklevel=4)
        torch.manual_seed(cfg.seed + ctx.rank + 7919 * payload["step"])
    changes = cfg.resume_changes(saved)
    if "lr" in changes:   # the schedule continues from the new base lr
        scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.lr
            group["lr"] = cfg.lr * cfg.lr_factor(step, steps_per_epoch)
    if changes and ctx.is_main:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (new, old) in changes.items())
        warnings.warn(f"Resuming from {str(path)!r} at step {step} with changed settings: {listed} (recorded in the "
                      "metrics file and the new checkpoints).", stacklevel=4)
    return step, info, changes


def emit_resume_record(step: int, changes: dict[str, tuple[Any, Any]], callbacks: Sequence[Callback]) -> None:
    """A ``resume`` record in the metrics: the settings this resumed run changed (``lr``, ``grad_clip``)."""
    rec = {"kind": "resume", "step": step, "time": round(time.time(), 3),
           "changed": {k: {"checkpoint": old, "now": new} for k, (new, old) in changes.items()}}
    for cb in callbacks:
        cb.on_record(rec)
