"""``B(b)`` and ``BG(b,g)``/``BG(b,M/d)``/``BG(b,M)``: a residual branch's conv pair as one bottleneck."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import BlockSpec, ConvGeometry, GroupCount, dense_kxk_reason, finish, register_block, register_module


@register_module
class Bottleneck(nn.Module):
    """Conv1x1 C_in→M → BN → ReLU → Conv k×k M→M (stride, groups) → BN → ReLU → Conv1x1 M→C_out.

    It replaces the pair ``conv_a -> norm -> act -> conv_b`` of a residual branch: C_in is conv_a's input,
    C_out conv_b's output, the stride is conv_a's, and the norm/act between the two convs go with them.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, kernel_size: int, stride=1,
                 padding=0, dilation=1, groups: int = 1):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, mid_channels=mid_channels,
                              kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                              groups=groups)
        self.reduce = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(mid_channels, mid_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.act2 = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(mid_channels, out_channels, 1, bias=False)

    def forward(self, x):
        x = self.act1(self.bn1(self.reduce(x)))
        x = self.act2(self.bn2(self.conv(x)))
        return self.expand(x)


@register_block
@dataclass(frozen=True)
class BottleneckSpec(BlockSpec):
    """``B(b)``: bottleneck with contraction b, M = C_out // b, dense k×k. ``BG(b,g)``: the same with a grouped
    M→M conv (``BG(b,M/d)``: groups = M // d, at least 1; ``BG(b,M)``: depthwise)."""

    contraction: int = 2
    groups: GroupCount = GroupCount(value=1, symbol="M")

    family = "B"
    level = "block"
    signature = "B(b)"
    structure = "Conv1x1 C_in→M → BN → ReLU → Conv k×k M→M (stride s) → BN → ReLU → Conv1x1 M→C_out, M = C_out//b"
    params = "N²(k²/b² + 2/b) per block"

    def __str__(self) -> str:
        if self.groups == GroupCount(value=1, symbol="M"):
            return f"B({self.contraction})"
        return f"BG({self.contraction},{self.groups})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("B", args, 1, "B(b)")
        return cls(parser.positive_int(args[0], "the contraction b"))

    rounds_widths = True

    def mid_channels(self, conv_b: nn.Conv2d) -> int:
        return self.round_width(conv_b.out_channels // self.contraction, conv_b.out_channels)

    def mid_groups(self, mid: int) -> int:
        """The grouped M→M conv's group count (``@m`` rounds its channels per group)."""
        return self.round_groups(mid, self.groups.resolve(mid))

    def pair_reason(self, conv_a, conv_b):
        for conv in (conv_a, conv_b):
            reason = dense_kxk_reason(conv, str(self))
            if reason:
                return reason
        if conv_a.kernel_size != conv_b.kernel_size:
            return f"the pair's kernels differ ({tuple(conv_a.kernel_size)} vs {tuple(conv_b.kernel_size)})"
        if tuple(conv_b.stride) != (1, 1):
            return "the second conv of the pair is strided; the bottleneck carries only the first conv's stride"
        mid = self.mid_channels(conv_b)
        if mid < 1:
            return f"contraction {self.contraction} leaves no channels of C_out={conv_b.out_channels}"
        groups = self.mid_groups(mid)
        if mid % groups:
            return f"{groups} groups do not divide M={mid}"
        return None

    def build_pair(self, conv_a, conv_b):
        a, b = ConvGeometry.of(conv_a), ConvGeometry.of(conv_b)
        mid = self.mid_channels(conv_b)
        block = Bottleneck(a.in_channels, b.out_channels, mid, a.kernel_size[0], a.stride, a.padding,
                           a.dilation, self.mid_groups(mid))
        return finish(block, a)


@register_block
@dataclass(frozen=True)
class GroupedBottleneckSpec(BottleneckSpec):
    """``BG(b,g)``, ``BG(b,M/d)``, ``BG(b,M)``: a bottleneck whose M→M conv is grouped."""

    family = "BG"
    signature = "BG(b,g) | BG(b,M/d) | BG(b,M)"
    structure = "as B(b), with g groups in the k×k M→M conv"
    params = "N²(k²/(g b²) + 2/b) per block"

    def __str__(self) -> str:
        return f"BG({self.contraction},{self.groups})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("BG", args, 2, "BG(b,g), BG(b,M/d) or BG(b,M)")
        return cls(parser.positive_int(args[0], "the contraction b"), parser.group_count(args[1], "M"))
