"""Cheap blocks for convs that pad "same" at run time (timm's ``Conv2dSame``, TensorFlow-ported models).

Such a conv has ``padding=0`` in its attributes and pads its input in ``forward`` so that the output is
``ceil(input / stride)``; a block built from its attributes alone would output another size. :class:`SamePadded`
pads the same way first (TensorFlow's rule: the extra pixel goes right/bottom) and then runs the cheap block
built for the conv with ``padding=0``. It is built from plain arguments (the block's spelling and the conv's
geometry), so saved students describe it as data like every other block.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .base import register_module
from .grammar import parse_block


def pads_at_run_time(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` computes "same" padding in forward (timm's ``Conv2dSame`` and ``*Same`` variants)."""
    return type(conv).__name__.endswith("Same") or bool(getattr(conv, "same_pad", False))


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


@register_module
class SamePadded(nn.Module):
    """Pad "same" at run time, then run the block ``block`` built for a ``padding=0`` conv of this geometry."""

    def __init__(self, block: str, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1,
                 bias: bool = False):
        super().__init__()

        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        self.init_args = dict(block=block, in_channels=in_channels, out_channels=out_channels,
                              kernel_size=pair(kernel_size), stride=pair(stride), dilation=pair(dilation), bias=bias)
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        # the geometry of the conv as build_conv reads it, with padding 0; nothing of that size is allocated
        geometry = SimpleNamespace(in_channels=in_channels, out_channels=out_channels, kernel_size=self.kernel_size,
                                   stride=self.stride, padding=(0, 0), dilation=self.dilation, groups=1,
                                   padding_mode="zeros", bias=None, weight=torch.empty(0), training=True)
        self.block = parse_block(block).build_conv(geometry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        ph = _same_padding(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = _same_padding(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return self.block(x)

    def extra_repr(self) -> str:
        return f"same padding, k={self.kernel_size}, s={self.stride}"
