"""``at``: attention transfer, ``CE + at_loss`` (spec section 5; :func:`cheapconv.train.losses.at_loss`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...errors import UsageError
from ._base import Objective

__all__ = ["AttentionTransfer"]


@dataclass(frozen=True)
class AttentionTransfer(Objective, name="at", help="attention transfer: CE + β·(matched stage outputs' attention "
                                                    "maps apart)"):
    """``CE(student, labels) + at_loss(student taps, teacher taps, beta)``: the student's stage outputs are
    pulled towards the teacher's attention maps (:func:`~cheapconv.train.losses.at_loss` has the scaling)."""

    beta: float = field(default=1000.0, metadata={"help": "AT weight β (the paper's 1000)."})
    taps: tuple[str, ...] = field(default=(), metadata={
        "help": "Stage outputs for AT, by module name, the same in teacher and student (e.g. 'backbone.layer2, "
                "backbone.layer3, classifier.0'); default: found in both networks, matched by name."})

    needs_taps = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "taps", tuple(str(t) for t in self.taps))
        if not 0.0 <= self.beta < math.inf:   # inf (or NaN) would make every loss inf: refused before any work
            raise UsageError(f"AT weight beta must be a finite non-negative number, got {self.beta} (the paper "
                             "uses 1000).")

    def __call__(self, x: Any) -> tuple[Any, dict[str, Any]]:
        ce, at = x.ce(), x.at(self.beta)
        return ce + at, {"ce": ce, "at": at}
