"""``G(g)``, ``G(N/d)``, ``G(N)`` (alias ``DW``): a grouped k×k conv followed by a pointwise conv."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import (
    BlockSpec,
    ConvGeometry,
    GroupCount,
    dense_kxk_reason,
    finish,
    register_alias,
    register_block,
    register_module,
)


@register_module
class GroupedPointwise(nn.Module):
    """GConv k×k C_in→C_in (``groups``, the replaced conv's stride/padding/dilation) → BN(C_in) → ReLU →
    Conv1x1 C_in→C_out. No biases. Exactly the reference code's grouped block (``moonshine.md`` section 2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, padding=0,
                 dilation=1, groups: int = 1):
        super().__init__()
        # recorded so a saved student can be rebuilt from data alone (cheapconv.store.graph_codec)
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.grouped = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                                 dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.act(self.bn(self.grouped(x))))


@register_block
@dataclass(frozen=True)
class Grouped(BlockSpec):
    """``G(g)`` with an absolute group count, ``G(N/d)`` with groups = C_in // d (at least 1), ``G(N)``
    depthwise-separable. The group count must divide C_in; if it does not, the conv is kept with that
    reason (never another count picked silently)."""

    groups: GroupCount = GroupCount(value=1)

    family = "G"
    level = "conv"
    signature = "G(g) | G(N/d) | G(N)"
    structure = "GConv k×k C_in→C_in (g groups, stride s) → BN → ReLU → Conv1x1 C_in→C_out"
    params = "N²(k²/g + 1) per conv"

    rounds_widths = True

    def __str__(self) -> str:
        return f"G({self.groups})"

    def group_count(self, channels: int) -> int:
        """Groups for a conv of ``channels`` input channels (``@m`` rounds its channels per group)."""
        return self.round_groups(channels, self.groups.resolve(channels))

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("G", args, 1, "G(g), G(N/d) or G(N)")
        return cls(parser.group_count(args[0], "N"))

    def conv_reason(self, conv):
        reason = dense_kxk_reason(conv, str(self))
        if reason:
            return reason
        groups = self.group_count(conv.in_channels)
        if conv.in_channels % groups:
            return f"{groups} groups do not divide C_in={conv.in_channels}"
        return None

    def build_conv(self, conv):
        g = ConvGeometry.of(conv)
        block = GroupedPointwise(g.in_channels, g.out_channels, g.kernel_size[0], g.stride, g.padding,
                                 g.dilation, self.group_count(g.in_channels))
        return finish(block, g)


register_alias("DW", "G(N)")
