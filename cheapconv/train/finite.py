"""Stopping on a NaN/inf loss without a host sync per step on a GPU.

:class:`FiniteGuard` checks the loss of every step: at once where a sync is free (CPU, one process), so the
bad step never changes the weights; otherwise the steps' loss terms are kept on the device and checked
together at the next logging point, checkpoint or epoch end, and the error still names the first bad step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import CheapconvError
from .distributed import DistContext

__all__ = ["FiniteGuard", "NonFiniteLossError"]

_TERMS = ("ce", "kd", "at", "total")


class NonFiniteLossError(CheapconvError):
    """The loss became NaN or infinite; the message names the step and the term."""


class FiniteGuard:
    """Checks loss terms for NaN/inf (see the module docstring).

    ``fall_back()`` is called once a non-finite loss is found: it picks the checkpoint to keep and returns
    what the error message says about it.
    """

    def __init__(self, ctx: DistContext, fall_back: Callable[[], str], *, immediate: bool) -> None:
        self.ctx, self.fall_back, self.immediate = ctx, fall_back, immediate
        self.pending: list[tuple[int, int, dict[str, Tensor]]] = []

    def add(self, step: int, epoch: int, terms: dict[str, Tensor]) -> None:
        """Note the loss terms of ``step`` (1-based); in immediate mode, check them now."""
        if self.immediate:
            # The total is non-finite exactly when a term is (the terms are non-negative and NaN/inf
            # propagate through the weighted sum), so one read of it is the whole check of a good step.
            total = terms.get("total")
            if total is not None and math.isfinite(total.item()):
                return
            self.pending = [(step, epoch, terms)]
            self.check()
            return
        self.pending.append((step, epoch, terms))

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` if a pending loss is not finite (on every rank if on any)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        names = [k for k in _TERMS if k in pending[0][2]]
        values = torch.stack([torch.stack([t[k].float() for k in names]) for _, _, t in pending])
        bad = ~torch.isfinite(values)
        if not self.ctx.any(bool(bad.any())):
            return
        kept = self.fall_back()
        if not bool(bad.any()):
            raise NonFiniteLossError(f"Another process saw a non-finite loss; the run stopped. {kept}")
        row = int(bad.any(dim=1).nonzero()[0])
        step, epoch, _ = pending[row]
        term = next(n for n, b in zip(names, bad[row].tolist(), strict=True) if b)
        value = values[row, names.index(term)].item()
        raise NonFiniteLossError(f"The loss term {term!r} became non-finite ({value}) at step {step} "
                                 f"(epoch {epoch + 1}); the run stopped. {kept}")
