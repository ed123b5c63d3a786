"""``kd``: knowledge distillation, ``(1 − α)·CE + α·T²·KL`` (Hinton et al.; :func:`cheapconv.train.losses.kd_loss`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...errors import UsageError
from ._base import Objective

__all__ = ["KD_REDUCTIONS", "KnowledgeDistillation", "check_kd_settings"]

#: ``batchmean``: the standard per-sample KL; ``reference``: the Moonshine code's batch×classes mean times 2
KD_REDUCTIONS: tuple[str, ...] = ("batchmean", "reference")


def check_kd_settings(alpha: float, temperature: float, reduction: str) -> None:
    """Raise :class:`~cheapconv.errors.UsageError` for KD settings outside their ranges."""
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"KD weight alpha must lie in [0, 1], got {alpha}.")
    if not 0.0 < temperature < math.inf:
        raise UsageError(f"KD temperature must be a finite positive number, got {temperature}.")
    if reduction not in KD_REDUCTIONS:
        raise UsageError(
            f"Unknown KD reduction {reduction!r}; valid: {', '.join(KD_REDUCTIONS)} "
            "('batchmean' is the standard form, 'reference' reproduces the Moonshine code)."
        )


@dataclass(frozen=True)
class KnowledgeDistillation(Objective, name="kd", help="knowledge distillation: (1 − α)·CE + α·T²·KL(teacher ‖ "
                                                       "student)"):
    """:func:`~cheapconv.train.losses.kd_loss`: the student's softened class distribution is pulled towards the
    teacher's; ``kd_reduction`` chooses the standard KL or the Moonshine code's."""

    alpha: float = field(default=0.9, metadata={"help": "KD weight α (the CE weight is 1 − α)."})
    temperature: float = field(default=4.0, metadata={"help": "KD temperature T."})
    kd_reduction: str = field(default="batchmean", metadata={
        "help": "batchmean (the standard per-sample KL) or reference (the Moonshine code: batch×classes mean × 2)."})

    def __post_init__(self) -> None:
        check_kd_settings(self.alpha, self.temperature, self.kd_reduction)

    def __call__(self, x: Any) -> tuple[Any, dict[str, Any]]:
        ce, soft = x.kd(self.alpha, self.temperature, self.kd_reduction)
        return (1.0 - self.alpha) * ce + soft, {"ce": ce, "kd": soft}
