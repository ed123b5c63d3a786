"""``DistillConfig``: every setting of a training run, as one frozen, serialisable dataclass.

The defaults are the paper's CIFAR recipe (``spec/moonshine.md`` section 6): SGD with momentum 0.9, lr 0.1,
weight decay 5e-4, batch 128, 200 epochs, lr × 0.2 at 30 %, 60 % and 80 % of training (epochs 60, 120,
160 of 200), attention transfer with β = 1000 when there is a teacher, plain cross-entropy when there is not.
That recipe was written for students that start from random weights; ``DistillConfig.fine_tuning()`` is the
one for students that start from their teacher (gradient norm clipped at 1, cosine decay: :data:`FINE_TUNING`).

A config turns into plain JSON data and back (``to_dict`` / ``from_dict``); checkpoints and saved models carry
it that way, never as pickled objects. Unknown keys are an error rather than silently ignored. Each field's
``metadata["help"]`` is its one-line description; the command line's options are made from the fields (names,
defaults, help), so a new field is a new option.

The objective is one field, ``loss``: an :class:`~cheapconv.train.objectives.Objective` holding its own settings
(``{"name": "kd", "alpha": 0.9, "temperature": 4.0, "kd_reduction": "batchmean"}`` in the stored form). Version 1
kept those settings as flat fields (``beta``, ``alpha``, ``temperature``, ``kd_reduction``, ``taps``) beside the
loss's name; :meth:`DistillConfig.from_dict` reads them into ``loss`` (for a version-1 config that named no loss,
AT settings other than the defaults become ``"at"``, the loss such a run used with a teacher, and KD settings,
unused there, are dropped).

Example::

    cfg = DistillConfig(epochs=2, lr=0.05, precision="bf16", channels_last=True, loss="kd")
    cfg.replace(epochs=3)                      # a new config; configs are immutable
    cfg.replace(loss={"name": "at", "beta": 500.0})
    DistillConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import UsageError
from .objectives import LOSSES, Objective, canonical_name, make_objective

__all__ = ["CONFIG_VERSION", "FINE_TUNING", "PRECISIONS", "RESUME_ADJUSTABLE", "DistillConfig", "check_precision"]

#: 2: the objective's settings live under ``loss`` (version 1: flat fields beside its name)
CONFIG_VERSION = 2
#: version 1's flat settings of the objectives, now each objective's own (see the module docstring)
_V1_LOSS_FIELDS = ("beta", "alpha", "temperature", "kd_reduction", "taps")

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
#: budget ends at a low lr instead of stopping before the first step decay). Measured in
#: benchmarks/teacher_init/README.md ("Students that start from their teacher"); see :mod:`cheapconv.train.fine_tuning`.
FINE_TUNING: dict[str, Any] = {"schedule": "cosine", "grad_clip": 1.0}


def _numbers(value: Any) -> tuple[Any, ...]:
    """``value`` as a tuple of the numbers a field holds (a tuple field such as ``milestones`` holds several)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _setting(default: Any, help: str, **meta: Any) -> Any:
    """A field with its one-line ``help`` (and ``min``, the smallest value, where there is one) in its metadata."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`cheapconv.distill` (and of ``cheapconv train`` / ``distill`` on the command line).

    Length of training: ``epochs`` (default 200), or ``max_steps`` optimiser steps, which takes precedence
    (the schedule is then laid out over ``max_steps``).

    - Objective: ``loss``, an :class:`~cheapconv.train.objectives.Objective` (one of
      :data:`~cheapconv.train.objectives.LOSSES`) with its own settings; a name (``"kd"``) or the stored form
      (``{"name": "at", "beta": 500.0}``) is accepted and converted. None means ``"at"`` with a teacher and
      ``"ce"`` without. The built-in objectives' settings: ``beta`` (AT weight, 1000) and ``taps`` (the stage
      outputs AT matches, by module name, the same in teacher and student; empty: found automatically by
      :func:`cheapconv.surgery.taps.find_stages` and matched by name where the names agree); ``alpha`` (KD
      weight, 0.9), ``temperature`` (4) and ``kd_reduction`` (``"batchmean"``, the standard per-sample KL, or
      ``"reference"``, the Moonshine code's batch×classes mean times 2: see
      :func:`cheapconv.train.losses.kd_loss`).
    - Segmentation: ``aux_weight`` (0.5) weighs an auxiliary head's CE (a model returning ``{"out", "aux"}``);
      ``ignore_index`` (255, VOC's and Cityscapes') marks mask pixels that count in no loss and no metric.
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

    epochs: int | None = _setting(200, "Epochs of training (the paper's recipe).", min=1)
    max_steps: int | None = _setting(None, "Stop after this many optimiser steps (takes precedence over the epochs; "
                                     "the schedule is laid out over them).", min=1)
    batch_size: int = _setting(128, "Global batch size (split across torchrun processes).", min=1)
    loss: Objective | None = _setting(None, "The objective (default: at with a teacher, ce without).")
    aux_weight: float = _setting(0.5, "Weight of an auxiliary head's cross-entropy (segmentation models that "
                                 "return 'out' and 'aux').")
    ignore_index: int = _setting(255, "Mask value of unlabelled pixels (segmentation): in no loss and no metric.")
    lr: float = _setting(0.1, "Learning rate.")
    momentum: float = _setting(0.9, "SGD momentum.")
    nesterov: bool = _setting(False, "Nesterov momentum.")
    weight_decay: float = _setting(5e-4, "Weight decay.")
    structured_wd: bool = _setting(True, "Scale the weight decay of structured blocks by each block's compression "
                                   "ratio (spec §2); off: the plain decay for every parameter.")
    schedule: str = _setting("multistep", "Learning-rate schedule: multistep (× gamma at each milestone), cosine "
                             "(to 0) or constant.")
    milestones: tuple[float, ...] = _setting((0.3, 0.6, 0.8), "Fractions of training at which multistep "
                                             "multiplies the lr by gamma.")
    gamma: float = _setting(0.2, "The lr factor at each multistep milestone.")
    warmup_epochs: float = _setting(0.0, "Linear learning-rate warm-up, in epochs.")
    seed: int = _setting(0, "Seed of shuffling and augmentation.")
    precision: str = _setting("fp32", "fp32, bf16 (autocast) or fp16 (autocast with a gradient scaler; GPU only).")
    channels_last: bool = _setting(False, "NHWC memory format (faster convs on recent CPUs/GPUs).")
    grad_clip: float | None = _setting(None, "Clip the gradient norm to this value (default: off).")
    checkpoint_every: int = _setting(1, "Epochs between checkpoints.", min=1)
    checkpoint_every_steps: int | None = _setting(None, "Also checkpoint every N steps.", min=1)
    log_every: int = _setting(50, "Steps between metrics records.", min=1)
    eval_every: int = _setting(1, "Epochs between validation passes (the last epoch is always evaluated).", min=1)
    eval_start: bool | None = _setting(None, "Evaluate the student before the first step and warn if training ends "
                                       "worse (default: for a student that starts from its teacher).")
    device: str = _setting("auto", "auto, cpu, cuda or cuda:N.")
    num_workers: int | None = _setting(None, "DataLoader workers (default: chosen for the dataset).", min=0)
    compile: bool = _setting(False, "torch.compile the networks (measure: it does not always help).")
    progress: bool = _setting(True, "A progress bar on stderr (epoch lines and the metrics file remain without it).")
    tensorboard: bool = _setting(False, "Also write TensorBoard events (if installed).")
    version: int = field(default=CONFIG_VERSION, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if isinstance(self.loss, (str, Mapping)):   # a name or the stored form: the objective (validates it)
            object.__setattr__(self, "loss", make_objective(self.loss))
        # NaN passes every `x < 0` test and inf most upper bounds: refuse non-finite numbers in any field first
        # (a NaN weight_decay would make every weight NaN at the first step)
        problems = [f"{f.name} must be finite, got {getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                    if any(isinstance(v, float) and not math.isfinite(v) for v in _numbers(getattr(self, f.name)))]
        if problems:
            raise UsageError("Invalid training configuration: " + "; ".join(problems) + ".")
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
        if self.loss is not None and not isinstance(self.loss, Objective):
            problems.append(f"loss must be an objective, its name or its stored form, got {self.loss!r}")
        if problems:
            raise UsageError("Invalid training configuration: " + "; ".join(problems) + ".")

    # ------------------------------------------------------------------------------------ derived

    def resolved_loss(self, *, teacher: bool) -> str:
        """The loss kind actually used: ``loss``'s name, or ``"at"``/``"ce"`` by whether a teacher is given."""
        return self.objective(teacher=teacher).name

    def objective(self, *, teacher: bool) -> Objective:
        """The objective actually used: ``loss``, or ``"at"``/``"ce"`` with their defaults by whether a teacher is
        given (run it with :class:`~cheapconv.train.losses.DistillationLoss`)."""
        if self.loss is None:
            return make_objective("at" if teacher else "ce")
        return self.loss

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
        """Plain JSON-able data (tuples become lists; ``loss`` its stored form, ``{"name": ..., settings}``)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["milestones"] = list(self.milestones)
        data["loss"] = self.loss.to_dict() if self.loss is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Inverse of :meth:`to_dict`, reading version-1 configs too (see the module docstring); unknown keys
        are an error (a typo must not silently fall back)."""
        data = _from_version_1(dict(data)) if data.get("version", CONFIG_VERSION) < 2 else dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise UsageError(f"Unknown training setting(s) in the configuration: {', '.join(sorted(unknown))}. "
                             f"Valid: {', '.join(sorted(names))}.")
        if "milestones" in data:
            data["milestones"] = tuple(data["milestones"])
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


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config dict with the objective's flat settings moved under ``loss`` (see the module
    docstring)."""
    flat = {k: data.pop(k) for k in _V1_LOSS_FIELDS if k in data}
    flat = {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}
    name = data.get("loss")
    if name is None:   # "at" with a teacher, "ce" without: AT settings that are not the defaults were meant for "at"
        at = {f.name: f.default for f in dataclasses.fields(LOSSES.get("at"))}   # type: ignore[arg-type]
        name = "at" if any(flat.get(k, default) != default for k, default in at.items()) else None
    if name is not None:
        own = {f.name for f in dataclasses.fields(LOSSES.get(canonical_name(name)))}   # type: ignore[arg-type]
        data["loss"] = {"name": name, **{k: v for k, v in flat.items() if k in own}}
    data["version"] = CONFIG_VERSION
    return data
