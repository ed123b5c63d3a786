"""What a training objective is: a frozen dataclass of its own settings, registered by name in :data:`LOSSES`.

An objective's file (one per objective, in this package) imports nothing heavy: it combines the terms that the
tensors handed to it compute (:class:`~cheapconv.train.losses.LossInputs`: ``ce()``, ``kd(...)``, ``at(...)``,
and the raw logits and stage outputs), so listing the objectives and their settings, as the command line's help
does, loads no torch. Its settings are dataclass fields with a ``help`` in their metadata; the command line turns
them into options (``--beta``, ``--temperature``, ...) and :class:`~cheapconv.train.config.DistillConfig` stores
them under ``loss``.

Example (a file ``cheapconv/train/objectives/l2.py``, or any module imported before use)::

    @dataclass(frozen=True)
    class LogitMatching(Objective, name="l2", help="mean squared distance to the teacher's logits"):
        weight: float = field(default=1.0, metadata={"help": "Weight of the distance."})

        def __call__(self, x):
            ce = x.ce()
            gap = (x.student_logits.float() - x.teacher_logits.float()).pow(2).mean()
            return ce + self.weight * gap, {"ce": ce, "l2": gap}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import UsageError
from ...extensions import LOSSES

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["LOSSES", "Objective", "canonical_name", "make_objective"]


class Objective:
    """Base of every training objective. A subclass is a frozen dataclass of the objective's settings and is
    registered by defining it: ``class KD(Objective, name="kd", help="...")`` (``aliases=`` for other spellings).

    ``needs_teacher``: whether the run must run the teacher; ``needs_taps``: whether it must record stage outputs
    (attention transfer). ``__call__(x)`` gets the step's :class:`~cheapconv.train.losses.LossInputs` and returns
    ``(total, terms)``: the loss to minimise and its named parts (``"ce"`` the unweighted cross-entropy, then the
    objective's own terms), for the metrics.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    needs_taps: ClassVar[bool] = False

    def __init_subclass__(cls, name: str | None = None, help: str = "", aliases: tuple[str, ...] = (),
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            LOSSES.add(name, cls, help=help, aliases=aliases)

    def __call__(self, x: Any) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The objective's own settings by name (tuples as lists: plain JSON data)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}   # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **settings}``, what a configuration stores."""
        return {"name": self.name, **self.settings()}

    def __str__(self) -> str:
        own = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name}({own})" if own else self.name


def canonical_name(name: str) -> str:
    """The registered name that ``name`` spells (case and spaces do not matter; aliases resolve)."""
    return LOSSES.entry(name.strip().lower().replace(" ", "")).name


def make_objective(spec: str | Mapping[str, Any] | Objective, **settings: Any) -> Objective:
    """An objective from its name (``"kd"``), its stored form (``{"name": "kd", "alpha": 0.5}``) or itself, with
    ``settings`` given by keyword on top. A setting the objective does not take is a
    :class:`~cheapconv.errors.UsageError` that lists the ones it takes."""
    if isinstance(spec, Objective):
        return dataclasses.replace(spec, **settings) if settings else spec   # type: ignore[type-var]
    data = {"name": spec} if isinstance(spec, str) else dict(spec)
    if "name" not in data:
        raise UsageError(f"A loss configuration needs its name ({{'name': ..., settings}}); got {dict(spec)!r}. "
                         f"Valid names: {LOSSES.describe()}.")
    cls = LOSSES.get(canonical_name(str(data.pop("name"))))
    data.update(settings)
    own = {f.name for f in dataclasses.fields(cls)}   # type: ignore[arg-type]
    unknown = sorted(set(data) - own)
    if unknown:
        takes = f"it takes {', '.join(sorted(own))}" if own else "it takes none"
        raise UsageError(f"The {cls.name} loss has no setting {', '.join(unknown)} ({takes}). Choose the loss whose "
                         f"settings you give (the loss kinds: {LOSSES.describe()}).")
    return cls(**data)
