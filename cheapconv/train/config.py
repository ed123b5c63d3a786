"""``DistillConfig``: every setting of a training run, as one frozen, serialisable dataclass.

The defaults are the paper's CIFAR recipe (``spec/moonshine.md`` section 6): SGD with momentum 0.9, lr 0.1,
weight decay 5e-4, batch 128, 200 epochs, lr × 0.2 at 30 %, 60 % and 80 % of training (epochs 60, 120,
160 of 200), attention transfer with β = 1000 when there is a teacher, plain cross-entropy when there is not.
That recipe was written for students that start from random weights; ``DistillConfig.fine_tuning()`` is the
one for students that start from their teacher (gradient norm clipped at 1, cosine decay: :data:`FINE_TUNING`).

A config turns into plain JSON data and back (``to_dict`` / ``from_dict``); checkpoints and saved models carry
it that way, never as pickled objects. Unknown keys are an error rather than silently ignored.

Example::

    cfg = DistillConfig(epochs=2, lr=0.05, precision="bf16", channels_last=True)
    cfg.replace(epochs=3)                      # a new config; configs are immutable
    DistillConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import UsageError
from .losses import KD_REDUCTIONS, DistillationLoss

__all__ = ["CONFIG_VERSION", "FINE_TUNING", "PRECISIONS", "RESUME_ADJUSTABLE", "DistillConfig", "check_precision"]

CONFIG_VERSION = 1

Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["multistep", "cosine", "constant"]
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("multistep", "cosine", "constant")


def check_precision(precision: str) -> None:
    """Raise :class:`~cheapconv.errors.UsageError` unless ``precision`` is one of :data:`PRECISIONS` (for
    callers without a :class:`DistillConfig`, which checks its own: evaluation, the CLI's early checks)."""
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}.")


# Fields that only say where and how verbosely to run. They may differ between a run and its resumption;
# every other field shapes the trajectory of the weights and must match for an exact resume.
RUNTIME_FIELDS = frozenset({"device", "log_every", "num_workers", "checkpoint_every", "checkpoint_every_steps",
                            "eval_every", "progress", "tensorboard", "eval_start"})
# Fields that shape the trajectory but may be changed deliberately when resuming (the advice after a
# non-finite loss is "resume with a lower lr or gradient clipping"); a resumed run says that they changed.
RESUME_ADJUSTABLE = frozenset({"lr", "grad_clip"})

#: What :meth:`DistillConfig.fine_tuning` changes in the paper's recipe for a student that starts from its
#: teacher: the gradient norm clipped at 1 (unclipped first steps undo the start) and a cosine decay (a short
#: budget ends at a low lr instead of stopping before the first step decay). Measured in benchmarks/README.md
#: ("Students that start from their teacher"); see :mod:`cheapconv.train.fine_tuning`.
FINE_TUNING: dict[str, Any] = {"grad_clip": 1.0, "schedule": "cosine"}


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`cheapconv.distill` (and of ``cheapconv train`` / ``distill`` on the command line).

    Length of training: ``epochs`` (default 200), or ``max_steps`` optimiser steps, which takes precedence
    (the schedule is then laid out over ``max_steps``).

    - Objective: ``loss`` is ``"at"``, ``"kd"``, ``"at+kd"`` or ``"ce"``; None means ``"at"`` with a teacher
      and ``"ce"`` without. ``beta`` (AT weight, 1000), ``alpha`` (KD weight, 0.9), ``temperature`` (4),
      ``kd_reduction`` (``"batchmean"``, the standard per-sample KL, or ``"reference"``, the Moonshine
      code's batch×classes mean times 2: see :func:`cheapconv.train.losses.kd_loss`).
    - Segmentation: ``aux_weight`` (0.5) weighs an auxiliary head's CE (a model returning ``{"out", "aux"}``);
      ``ignore_index`` (255, VOC's and Cityscapes') marks mask pixels that count in no loss and no metric.
    - ``taps``: the stage outputs to match with attention transfer, by module name (the same names in teacher
      and student, e.g. ``("backbone.layer2", "backbone.layer3", "classifier.0")``); empty: found
      automatically (:func:`cheapconv.surgery.taps.find_stages`) and matched by name where the names agree.
    - Optimiser: SGD with ``momentum`` (0.9), ``nesterov`` (False), ``lr`` (0.1), ``weight_decay`` (5e-4).
      ``structured_wd`` (True): the parameters of structured blocks (``Sep``, ``LR``, ``Shuffle``, ``ACDC``,
      tensor-train, Tucker, ...) get ``weight_decay`` × their compression ratio (block params / params of the
      conv it replaced), the deficient-efficient recipe; False gives every parameter the plain decay
      (:mod:`cheapconv.train.param_groups`).
    - ``batch_size``: the *global* batch (128); under ``torchrun`` each of W processes gets batch_size / W,
      so a run on W GPUs follows the same recipe as on one.
    - Schedule: ``"multistep"`` multiplies the lr by ``gamma`` (0.2) at each fraction of training in
      ``milestones`` (0.3, 0.6, 0.8; epochs 60/120/160 of 200); ``"cosine"``
      decays to 0 per step; ``"constant"``. ``warmup_epochs`` ramps the lr linearly from ~0 over that many
      epochs (fractions allowed) before the schedule's own factor applies.
    - ``precision``: ``"fp32"``; ``"bf16"`` (autocast, CPU or GPU); ``"fp16"`` (autocast with a gradient
      scaler; GPU only). Losses are computed in float32 in every case.
    - ``channels_last``: NHWC memory format for both networks and the inputs (faster convolutions on
      recent CPUs and on tensor-core GPUs).
    - ``grad_clip``: clip the global gradient norm to this value (None: off).
    - ``seed``: seeds initialisation-independent randomness of the run: shuffling (per epoch) and augmentation.
    - ``checkpoint_every`` (epochs, 1) and ``checkpoint_every_steps`` (None: off): when to write the resume
      checkpoint; a checkpoint is also written at the end and on Ctrl-C.
    - ``log_every``: steps between "step" records in the metrics file (and progress updates of the losses).
    - ``eval_every``: epochs between validation passes (the last epoch is always evaluated).
    - ``eval_start``: evaluate the student on ``val_data`` before the first step too, and warn if training
      ends worse (:mod:`cheapconv.train.start_end`); None (default): only for a student that starts from its
      teacher; True: always; False: never (it changes nothing in the trajectory, so a resume may differ).
    - ``device``: ``"auto"`` (the local CUDA device if any, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    - ``num_workers``: DataLoader workers for datasets that need them (None: chosen by
      :func:`cheapconv.data.make_loader`); in-memory datasets are batched in the main process.
    - ``compile``: wrap the student and teacher in ``torch.compile`` (off by default; measure first).
    - ``progress``: a rich progress bar on stderr; ``tensorboard``: also write TensorBoard events if the
      ``tensorboard`` package is installed.
    """

    epochs: int | None = 200
    max_steps: int | None = None
    batch_size: int = 128
    loss: str | None = None
    beta: float = 1000.0
    alpha: float = 0.9
    temperature: float = 4.0
    kd_reduction: str = "batchmean"
    aux_weight: float = 0.5
    ignore_index: int = 255
    taps: tuple[str, ...] = ()
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    structured_wd: bool = True
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.2
    warmup_epochs: float = 0.0
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    grad_clip: float | None = None
    checkpoint_every: int = 1
    checkpoint_every_steps: int | None = None
    log_every: int = 50
    eval_every: int = 1
    eval_start: bool | None = None
    device: str = "auto"
    num_workers: int | None = None
    compile: bool = False
    progress: bool = True
    tensorboard: bool = False
    version: int = field(default=CONFIG_VERSION, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        object.__setattr__(self, "taps", tuple(str(t) for t in self.taps))
        problems = []
        if self.epochs is None and self.max_steps is None:
            problems.append("give epochs or max_steps")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be at least 1, got {self.max_steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            problems.append("nesterov needs a non-zero momentum")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be non-negative, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            problems.append(f"milestones must be increasing fractions of training in (0, 1), got "
                            f"{list(self.milestones)}")
        if not 0 < self.gamma <= 1:
            problems.append(f"gamma must lie in (0, 1], got {self.gamma}")
        if self.warmup_epochs < 0:
            problems.append(f"warmup_epochs must be non-negative, got {self.warmup_epochs}")
        if not self.aux_weight >= 0:
            problems.append(f"aux_weight must be non-negative, got {self.aux_weight}")
        if self.precision not in PRECISIONS:
            problems.append(f"unknown precision {self.precision!r} (valid: {', '.join(PRECISIONS)})")
        if self.kd_reduction not in KD_REDUCTIONS:
            problems.append(f"unknown kd_reduction {self.kd_reduction!r} (valid: {', '.join(KD_REDUCTIONS)})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be positive (or None), got {self.grad_clip}")
        for name in ("checkpoint_every", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_start not in (None, True, False):
            problems.append(f"eval_start must be None, True or False, got {self.eval_start!r}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            problems.append(f"checkpoint_every_steps must be at least 1 (or None), got {self.checkpoint_every_steps}")
        if self.version > CONFIG_VERSION:
            problems.append(f"config version {self.version} is newer than this cheapconv ({CONFIG_VERSION})")
        if problems:
            raise UsageError("Invalid training configuration: " + "; ".join(problems) + ".")
        if self.loss is not None:
            self.loss_fn(teacher=True)  # validates the name and the loss's own settings

    # ------------------------------------------------------------------------------------ derived

    def resolved_loss(self, *, teacher: bool) -> str:
        """The loss kind actually used: ``loss``, or ``"at"``/``"ce"`` by whether a teacher is given."""
        if self.loss is None:
            return "at" if teacher else "ce"
        return DistillationLoss(self.loss).kind

    def loss_fn(self, *, teacher: bool) -> DistillationLoss:
        """The configured :class:`~cheapconv.train.losses.DistillationLoss`."""
        return DistillationLoss(self.resolved_loss(teacher=teacher), beta=self.beta, alpha=self.alpha,
                                temperature=self.temperature, kd_reduction=self.kd_reduction,  # type: ignore[arg-type]
                                aux_weight=self.aux_weight, ignore_index=self.ignore_index)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run."""
        if self.max_steps is not None:
            return self.max_steps
        assert self.epochs is not None
        return self.epochs * steps_per_epoch

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """Multiplier of ``lr`` for optimiser step ``step`` (0-based): warm-up × schedule.

        Multistep milestones fall on step ``round(fraction × total_steps)``: for the paper's 200 epochs these
        are exactly the starts of epochs 60, 120 and 160; short runs get their decays inside epochs rather
        than rounded to whole epochs.
        """
        return self.lr_schedule(steps_per_epoch)(step)

    def lr_schedule(self, steps_per_epoch: int) -> Callable[[int], float]:
        """:meth:`lr_factor` as a function of the step alone, for the scheduler to call every step: the run's
        constants (total steps, warm-up length, milestone steps) are worked out once, here."""
        total = self.total_steps(steps_per_epoch)
        warmup = self.warmup_epochs * steps_per_epoch
        milestones = [round(m * total) for m in self.milestones]   # non-decreasing, as the fractions are
        schedule, gamma = self.schedule, self.gamma

        def factor(step: int) -> float:
            f = 1.0
            if warmup > 0 and step < warmup:
                f = min(1.0, (step + 1) / warmup)
            if schedule == "multistep":
                f *= gamma ** bisect.bisect_right(milestones, step)   # milestones passed: step >= m
            elif schedule == "cosine":
                f *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
            return f

        return factor

    @classmethod
    def fine_tuning(cls, **changes: Any) -> DistillConfig:
        """The recipe for a student that starts from its teacher (``cheapen(..., init="teacher")``,
        :func:`cheapconv.reconstruct`): the paper's with :data:`FINE_TUNING` applied, then ``changes``.

        Example: ``DistillConfig.fine_tuning(epochs=1, precision="bf16")``."""
        return cls(**{**FINE_TUNING, **changes})

    # ------------------------------------------------------------------------------ serialisation

    def replace(self, **changes: Any) -> DistillConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"Unknown training setting(s): {', '.join(sorted(unknown))}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        data["taps"] = list(self.taps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not silently fall back)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise UsageError(f"Unknown training setting(s) in the configuration: {', '.join(sorted(unknown))}. "
                             f"Valid: {', '.join(sorted(names))}.")
        data = dict(data)
        if "milestones" in data:
            data["milestones"] = tuple(data["milestones"])
        if "taps" in data:
            data["taps"] = tuple(data["taps"])
        return cls(**data)

    def trajectory_diff(self, other: DistillConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (other than where/how verbosely to run, and the settings a resume may adjust: ``lr``,
        ``grad_clip``) whose values differ: ``{name: (self, other)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a
                if k not in RUNTIME_FIELDS and k not in RESUME_ADJUSTABLE and a[k] != b[k]}

    def resume_changes(self, other: DistillConfig) -> dict[str, tuple[Any, Any]]:
        """The resume-adjustable fields (``lr``, ``grad_clip``) whose values differ: ``{name: (self, other)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in sorted(RESUME_ADJUSTABLE) if a[k] != b[k]}
