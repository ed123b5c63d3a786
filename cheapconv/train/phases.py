"""Training in phases: a list of (modules trained, taps, β, length, prediction read), each run by :func:`distill`.

ERFNet is trained encoder first (Romera et al.; the Moonshine paper's segmentation study, Section 5.2): the
encoder with its own 1×1 output conv, on the labels downsampled to its 1/8 resolution, then the whole network.
The Moonshine paper distils both phases with attention transfer, on layers 7, 12 and 16 with β = 1000 in the
first and on 7, 12, 16, 19 and 22 with β = 600 in the second (:func:`erfnet_phases`). A :class:`Phase` says:

- ``train``: ``"all"``; the name of a side head (:class:`~cheapconv.blocks.SideHead`), meaning every module the
  forward runs up to and including that head (ERFNet's ``"encoder"``: layers 1-16 and the encoder's own output
  conv; found by running one training image, so it holds for a cheapened or saved student too); or module names
  (``("layers.17", "layers.18")``), each with its submodules. The other modules' parameters are frozen and their
  BatchNorm statistics and dropout left alone (:class:`~cheapconv.train.phase_view.PhaseView`).
- ``target``: ``"final"`` (the model's output) or the name of a side head: the phase's prediction is that head's
  output (the forward stops there), scored against the masks resized to its size by nearest-neighbour sampling
  (:class:`~cheapconv.data.resized_masks.ResizedMasks`), the validation masks too.
- ``taps`` and ``beta``: the attention-transfer settings of the phase (empty / None: the run's config's). They
  apply where the run's objective has them (``at``, ``at+kd``); a run without a teacher trains with
  cross-entropy and does not use them, so the same phases describe a scratch run.
- ``epochs`` / ``max_steps``: the phase's length (None: the run's config's; ``max_steps`` takes precedence).

Every other setting is the run's :class:`~cheapconv.train.config.DistillConfig`. Each phase is one
:func:`~cheapconv.train.loop.distill` call with its own checkpoint (``NAME.phase1.ckpt``, ``NAME.phase2.ckpt``,
metrics beside each): ``resume=True`` hands back the finished phases from their final checkpoints and continues
the interrupted one.

On the command line: ``cheapconv distill ... --phases FILE`` (a JSON list of phases, or ``{"phases": [...]}``)
or ``--phase 'train=encoder; target=encoder; taps=layers.7,layers.12,layers.16; beta=1000; epochs=150'``
repeated, in order (:func:`parse_phase`).

Example::

    from cheapconv.train.phases import erfnet_phases, run_phases
    results = run_phases(teacher, student, train, erfnet_phases(150, 150), val_data=test,
                         config=DistillConfig(lr=0.05), checkpoint="student.ckpt")
    print(results[-1].last["val_miou"])
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..bounded import MiB, read_text
from ..data import default_workers
from ..data.resized_masks import ResizedMasks
from ..errors import UsageError
from .checkpoint import check_run_paths, refuse_fresh_start
from .config import DistillConfig
from .loop import DistillResult, distill
from .objectives import make_objective
from .phase_view import PhaseView, frozen_except, modules_up_to, side_head_names

__all__ = ["MAX_PHASES", "PHASES_FILE_LIMIT", "Phase", "erfnet_phases", "load_phases", "parse_phase",
           "phase_checkpoint", "phase_config", "run_phases"]

#: the largest phases file read (bytes), and the most phases it may list
PHASES_FILE_LIMIT = 1 * MiB
MAX_PHASES = 100
_SPELLING = ("train=encoder; target=encoder; taps=layers.7,layers.12,layers.16; beta=1000; epochs=150")


def _problem(message: str) -> UsageError:
    return UsageError(f"Bad phase: {message}. A phase is written {_SPELLING!r} (fields: train, target, taps, beta, "
                      "epochs, max_steps, name; see cheapconv.train.phases).")


@dataclass(frozen=True)
class Phase:
    """One phase of a training run; see the module docstring for each field."""

    train: str | tuple[str, ...] = "all"
    taps: tuple[str, ...] = ()
    beta: float | None = None
    epochs: int | None = None
    max_steps: int | None = None
    target: str = "final"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        train = self.train
        if isinstance(train, str):
            train = train.strip()
            parts = tuple(p.strip() for p in train.split(",") if p.strip())
            train = parts if len(parts) > 1 else train
        elif isinstance(train, (list, tuple)) and train and all(isinstance(t, str) and t.strip() for t in train):
            train = tuple(t.strip() for t in train)
        else:
            raise _problem(f"train must be 'all', a side head's name or module names, got {self.train!r}")
        if train in ("", ()):
            raise _problem("train is empty (use 'all' for every module)")
        object.__setattr__(self, "train", train)
        taps = self.taps.split(",") if isinstance(self.taps, str) else self.taps
        if not isinstance(taps, (list, tuple)) or not all(isinstance(t, str) for t in taps):
            raise _problem(f"taps must be module names, got {self.taps!r}")
        object.__setattr__(self, "taps", tuple(t.strip() for t in taps if t.strip()))
        if self.beta is not None:
            if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 <= self.beta < math.inf:
                raise _problem(f"beta must be a finite non-negative number, got {self.beta!r}")
            object.__setattr__(self, "beta", float(self.beta))
        for key in ("epochs", "max_steps"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise _problem(f"{key} must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.target, str) or not self.target.strip():
            raise _problem(f"target must be 'final' or a side head's name, got {self.target!r}")
        object.__setattr__(self, "target", self.target.strip())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Phase:
        """A phase from its stored form (what :meth:`to_dict` gives; unknown keys are an error)."""
        if not isinstance(data, Mapping):
            raise _problem(f"each phase is an object of its fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _problem(f"unknown field(s) {', '.join(map(repr, unknown))}")
        values = dict(data)
        if isinstance(values.get("train"), list):
            values["train"] = tuple(values["train"])
        if isinstance(values.get("taps"), list):
            values["taps"] = tuple(values["taps"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``from_dict(p.to_dict()) == p``)."""
        d = dataclasses.asdict(self)
        d["train"] = list(self.train) if isinstance(self.train, tuple) else self.train
        d["taps"] = list(self.taps)
        return d

    def __str__(self) -> str:
        train = ",".join(self.train) if isinstance(self.train, tuple) else self.train
        parts = [f"train={train}", f"target={self.target}"]
        if self.taps:
            parts.append("taps=" + ",".join(self.taps))
        parts += [f"{k}={getattr(self, k):g}" for k in ("beta", "epochs", "max_steps") if getattr(self, k) is not None]
        return "; ".join(parts)


def parse_phase(text: str) -> Phase:
    """A phase from its one-line spelling, ``key=value`` pairs separated by ``;`` (lists by ``,``)::

        parse_phase("train=encoder; target=encoder; taps=layers.7,layers.12,layers.16; beta=1000; epochs=150")
    """
    values: dict[str, Any] = {}
    for item in (p.strip() for p in str(text).split(";")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not eq or not key:
            raise _problem(f"{item!r} in {text!r} is not key=value")
        if key in values:
            raise _problem(f"{key!r} is given twice in {text!r}")
        if key in ("epochs", "max_steps"):
            if not value.isdigit() or not value.isascii():
                raise _problem(f"{key} must be a whole number, got {value!r}")
            values[key] = int(value)
        elif key == "beta":
            try:
                values[key] = float(value)
            except ValueError:
                raise _problem(f"beta must be a number, got {value!r}") from None
        else:
            values[key] = value
    if not values:
        raise _problem(f"{text!r} names no field")
    return Phase.from_dict(values)


def load_phases(path: str | Path) -> list[Phase]:
    """The phases of a JSON file: a list of phase objects, or ``{"phases": [...]}`` (at most :data:`MAX_PHASES`)."""
    fix = ('Write a JSON list of phases, e.g. [{"train": "encoder", "target": "encoder", "epochs": 150}, '
           '{"train": "all", "epochs": 150}].')
    text = read_text(path, what="phases file", limit=PHASES_FILE_LIMIT, fix=fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"The phases file {str(path)!r} is not valid JSON ({e.msg}, line {e.lineno}). {fix}") from None
    if isinstance(data, Mapping) and set(data) == {"phases"}:
        data = data["phases"]
    if not isinstance(data, list) or not data:
        raise UsageError(f"The phases file {str(path)!r} holds no list of phases. {fix}")
    return check_phases([Phase.from_dict(d) for d in data])


def check_phases(phases: Sequence[Phase]) -> list[Phase]:
    """``phases`` as a list, checked: at least one, at most :data:`MAX_PHASES`, each a :class:`Phase`."""
    phases = list(phases)
    if not phases:
        raise UsageError("A phased run needs at least one phase.")
    if len(phases) > MAX_PHASES:
        raise UsageError(f"{len(phases)} phases given; at most {MAX_PHASES} are allowed.")
    for p in phases:
        if not isinstance(p, Phase):
            raise UsageError(f"Phases must be Phase objects (or parsed with parse_phase / load_phases), got "
                             f"{type(p).__name__}.")
    return phases


def erfnet_phases(encoder_epochs: int = 150, full_epochs: int = 150, *, encoder_steps: int | None = None,
                  full_steps: int | None = None) -> list[Phase]:
    """The Moonshine paper's ERFNet recipe: the encoder with its own output conv (labels at 1/8), AT on layers 7,
    12 and 16 with β = 1000; then the whole network, AT on layers 7, 12, 16, 19 and 22 with β = 600 (150 epochs
    each in the ERFNet paper). Without a teacher the same phases train from scratch."""
    return [Phase(train="encoder", target="encoder", taps=("layers.7", "layers.12", "layers.16"), beta=1000.0,
                  epochs=encoder_epochs, max_steps=encoder_steps, name="encoder"),
            Phase(train="all", taps=("layers.7", "layers.12", "layers.16", "layers.19", "layers.22"), beta=600.0,
                  epochs=full_epochs, max_steps=full_steps, name="whole network")]


def phase_config(base: DistillConfig, phase: Phase, *, teacher: bool) -> DistillConfig:
    """The config of ``phase``'s :func:`distill` call: ``base`` with the phase's length, and its taps and β given
    to the objective where it takes them (the objective: ``base.loss``, else ``at`` with a teacher and ``ce``
    without)."""
    loss = base.loss if base.loss is not None else make_objective("at" if teacher else "ce")
    own = {f.name for f in dataclasses.fields(loss)}   # type: ignore[arg-type]
    settings = {k: v for k, v in (("taps", phase.taps), ("beta", phase.beta)) if v not in (None, ()) and k in own}
    changes: dict[str, Any] = {"loss": make_objective(loss, **settings)}
    if phase.max_steps is not None:
        changes["max_steps"] = phase.max_steps
    elif phase.epochs is not None:
        changes.update(epochs=phase.epochs, max_steps=None)
    return base.replace(**changes)


def phase_checkpoint(checkpoint: str | Path, index: int) -> Path:
    """Phase ``index``'s (from 1) checkpoint beside ``checkpoint``: ``NAME.ckpt`` -> ``NAME.phase1.ckpt``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.phase{index}{path.suffix or '.ckpt'}")


def _trained(model: nn.Module, spec: str | tuple[str, ...], example: torch.Tensor) -> list[str] | None:
    """The module names ``spec`` trains (None: all), checked against ``model``."""
    if spec == "all":
        return None
    names = (spec,) if isinstance(spec, str) else spec
    if isinstance(spec, str) and spec in side_head_names(model):
        return modules_up_to(model, spec, example)[0]
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        heads = ", ".join(map(repr, side_head_names(model))) or "none"
        top = ", ".join(n for n, _ in model.named_children())
        raise UsageError(f"A phase trains {', '.join(map(repr, missing))}, which the model does not have. Name "
                         f"'all', a side head (this model's: {heads}) for everything up to it, or modules "
                         f"(its top-level ones: {top}).")
    return list(names)


def run_phases(teacher: nn.Module | None, student: nn.Module, train_data: Dataset, phases: Sequence[Phase], *,
               val_data: Dataset | None = None, config: DistillConfig = DistillConfig(),
               checkpoint: str | Path | None = None, resume: bool = False, overwrite: bool = False,
               callbacks: Sequence[Any] = ()) -> list[DistillResult]:
    """Train ``student`` phase by phase (see the module docstring), each phase one :func:`distill` call with
    :func:`phase_config`'s config; returns their results in order (each ``student`` is ``student`` itself).

    Everything that can be checked is checked before the first step: the phases, the modules each trains and
    the side head each reads (one forward on a training image), every phase's checkpoint path, and that no
    unfinished run's checkpoint is overwritten (unless ``resume`` or ``overwrite``). ``checkpoint``: the run's
    name; phase i writes ``phase_checkpoint(checkpoint, i)`` and its metrics beside it (None: no checkpoints).
    ``resume=True`` resumes each phase from its checkpoint where one exists (a finished phase trains no step).
    """
    phases = check_phases(phases)
    ckpts = [phase_checkpoint(checkpoint, i) if checkpoint is not None else None for i in range(1, len(phases) + 1)]
    for ckpt in ckpts:
        if ckpt is not None:
            check_run_paths(ckpt, ckpt.with_suffix(".metrics.jsonl"))
            if not resume and not overwrite:
                refuse_fresh_start(ckpt)
    param = next(iter(student.parameters()), None)
    example = torch.as_tensor(train_data[0][0])[None]
    if param is not None:
        example = example.to(param.device, param.dtype)
    plans = []
    for phase in phases:   # every phase's modules and target resolved before any step
        trained = _trained(student, phase.train, example)
        size = None
        if phase.target != "final":
            view = PhaseView(student, target=phase.target)   # checks the head exists
            size = modules_up_to(view.wrapped, phase.target, example)[1][-2:]
            if teacher is not None and phase.target not in side_head_names(teacher):
                needs = phase_config(config, phase, teacher=True).loss
                if needs is not None and needs.name not in ("at", "ce"):
                    raise UsageError(f"Phase '{phase}' reads the student's side head {phase.target!r}, and the "
                                     f"{needs.name} loss compares it with the teacher's, which has no such head. "
                                     "Use the 'at' loss in this phase, or a teacher with that side head.")
        plans.append((phase, trained, size))
    results = []
    for (phase, trained, size), ckpt in zip(plans, ckpts, strict=True):
        cfg = phase_config(config, phase, teacher=teacher is not None)
        tr, va, t = train_data, val_data, teacher
        if size is not None:
            tr = ResizedMasks(train_data, size)
            va = ResizedMasks(val_data, size) if val_data is not None else None
            if cfg.num_workers is None:   # the wrapper is not an in-memory dataset: keep the base's choice
                cfg = cfg.replace(num_workers=default_workers(train_data))
            if teacher is not None and phase.target in side_head_names(teacher):
                t = PhaseView(teacher, target=phase.target)
        view = PhaseView(student, trained=trained, target=None if phase.target == "final" else phase.target)
        resume_from: bool | Path = ckpt if resume and ckpt is not None and ckpt.exists() else False
        with frozen_except(student, trained):
            result = distill(t, view, tr, val_data=va, config=cfg, callbacks=callbacks, checkpoint=ckpt,
                             resume=resume_from, overwrite=overwrite)
        result.student = student
        results.append(result)
    return results
