"""The tap: an identity leaf module marking a stage output for attention transfer.

It lives at the bottom of the graph layer because the tracer treats it as a leaf, the data-only file format
stores it, and :mod:`cheapconv.surgery.taps` inserts and reads it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TAPS_ATTR", "Tap"]

TAPS_ATTR = "cheapconv_taps"


class Tap(nn.Module):
    """Identity that hands its input to the active :func:`record` context (if any)."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage
        self.init_args = {"stage": stage}
        self._sink: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sink is not None:
            self._sink[self.stage] = x
        return x

    def extra_repr(self) -> str:
        return repr(self.stage)
