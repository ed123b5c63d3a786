"""``S`` (keep the standard conv) and ``S-2x2`` (a 2×2 kernel with dilation: the corner taps of k×k)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import BlockSpec, ConvGeometry, dense_kxk_reason, finish, register_alias, register_block


@register_block
@dataclass(frozen=True)
class Standard(BlockSpec):
    """``S``: the standard conv, unchanged. In a policy it means "keep" (``keep`` is an alias)."""

    family = "S"
    level = "keep"
    signature = "S"
    structure = "unchanged (keep)"
    params = "N²k² per conv"

    def __str__(self) -> str:
        return "S"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("S", args, 0, "S")
        return cls()

    def conv_reason(self, conv):
        return None


register_alias("keep", "S")


@register_block
@dataclass(frozen=True)
class Dilated2x2(BlockSpec):
    """``S-2x2``: replace a k×k conv by a 2×2 kernel with dilation k-1 and the same padding, i.e. the four
    corner taps of the k×k window; the output size is unchanged. For k = 3 this is the spec's
    "2×2 kernel, dilation 2, padding 1"."""

    family = "S-2x2"
    level = "conv"
    signature = "S-2x2"
    structure = "Conv 2×2, dilation k-1, same padding and stride (the corners of the k×k window)"
    params = "4N² per conv"

    def __str__(self) -> str:
        return "S-2x2"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("S-2x2", args, 0, "S-2x2")
        return cls()

    def conv_reason(self, conv):
        reason = dense_kxk_reason(conv, "S-2x2")
        if reason is None and conv.kernel_size[0] < 3:
            reason = "S-2x2 needs a kernel of at least 3×3 to take the corners of"
        if reason is None and isinstance(conv.padding, str) and conv.padding != "valid":
            reason = f"padding={conv.padding!r} cannot be reproduced exactly with a dilated 2×2 kernel"
        return reason

    def build_conv(self, conv):
        g = ConvGeometry.of(conv)
        k = g.kernel_size[0]
        dilation = tuple(d * (k - 1) for d in g.dilation)
        new = nn.Conv2d(g.in_channels, g.out_channels, 2, stride=g.stride, padding=g.padding,
                        dilation=dilation, bias=False)
        return finish(new, g)
