"""``at+kd``: the KD objective plus attention transfer, ``(1 − α)·CE + α·T²·KL + at_loss``.

This is what the Moonshine reference code does when both are switched on (its loss starts from the KD
objective and adds the AT terms), so the CE weight is (1 − α), not 1. Its file name spells ``+`` as ``_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._base import Objective
from .at import AttentionTransfer
from .kd import KnowledgeDistillation

__all__ = ["AttentionAndKD"]


@dataclass(frozen=True)
class AttentionAndKD(KnowledgeDistillation, AttentionTransfer, Objective, name="at+kd", aliases=("kd+at",),
                     help="knowledge distillation plus attention transfer"):
    """The settings of both (``beta``, ``taps``; ``alpha``, ``temperature``, ``kd_reduction``), checked as
    each checks them."""

    def __post_init__(self) -> None:
        AttentionTransfer.__post_init__(self)
        KnowledgeDistillation.__post_init__(self)

    def __call__(self, x: Any) -> tuple[Any, dict[str, Any]]:
        total, terms = KnowledgeDistillation.__call__(self, x)
        at = x.at(self.beta)
        return total + at, {**terms, "at": at}
