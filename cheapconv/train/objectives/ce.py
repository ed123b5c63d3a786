"""``ce``: plain cross-entropy, no teacher (the spec's "scratch": the same student trained alone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._base import Objective

__all__ = ["CrossEntropy"]


@dataclass(frozen=True)
class CrossEntropy(Objective, name="ce", aliases=("scratch",), help="cross-entropy only, no teacher"):
    """``CE(student, labels)``: training without a teacher."""

    needs_teacher = False

    def __call__(self, x: Any) -> tuple[Any, dict[str, Any]]:
        ce = x.ce()
        return ce, {"ce": ce}
