"""Structured substitutes for pointwise convolutions ("deficient-efficient", blockswap-and-structured.md §2).

After grouping, the 1×1 convs hold most parameters. These blocks replace a dense C_in→C_out pointwise matrix
by a structured one. For a k×k conv (k > 1) the k×k part becomes depthwise (C_in·k² parameters, carrying
stride, padding and dilation) followed by the structured pointwise; a 1×1 conv becomes the structured part
alone (a strided 1×1 keeps its stride on the first structured op). There is no norm or activation inside.

| spelling    | structured pointwise                                                         | parameters        |
|-------------|------------------------------------------------------------------------------|-------------------|
| ``Sep``     | dense 1×1                                                                    | C_in·C_out        |
| ``LR(s)``   | 1×1 C_in→r, 1×1 r→C_out, r = max(1, int(s·max(C_in, C_out)))                 | r·(C_in + C_out)  |
| ``LRp(f)``  | as ``LR``, r chosen from the layer's shape to keep a fraction f of its params | ≤ f·C_in·C_out·k² |
| ``Shuffle(g)`` | grouped 1×1 C_in→C_out/4 (g groups) → channel shuffle → depthwise 3×3 → grouped 1×1 C_out/4→C_out | |
| ``ACDC(n)`` | n factors A·DCT·D·IDCT with a riffle permutation between them, N = max(C_in, C_out) | 2·N per factor |

Unlike the reference code: ``ACDC(n)`` builds exactly n factors, low-rank never reaches rank 0, and no
bias is forced anywhere. The tensor-train and Tucker substitutes are in :mod:`cheapconv.blocks.tensorized`.
The paper's recipe also scales
the weight decay of structured parameters by the compression ratio; that is a training option, not part of
the block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import BlockSpec, ConvGeometry, finish, register_block, register_module


def structured_reason(conv: nn.Conv2d, what: str) -> str | None:
    if conv.groups != 1:
        return f"already grouped (groups={conv.groups}); {what} replaces dense convs only"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported (zeros only)"
    if conv.kernel_size[0] != conv.kernel_size[1]:
        return f"{what} needs a square kernel, this conv is {conv.kernel_size[0]}×{conv.kernel_size[1]}"
    return None


class DepthwiseThen(nn.Module):
    """Optional depthwise k×k (carrying the stride) then a structured pointwise; shared by all substitutes."""

    def _depthwise(self, g: ConvGeometry) -> tuple[nn.Module | None, tuple[int, int]]:
        if g.kernel_size[0] > 1:
            dw = nn.Conv2d(g.in_channels, g.in_channels, g.kernel_size, stride=g.stride, padding=g.padding,
                           dilation=g.dilation, groups=g.in_channels, bias=False)
            return dw, (1, 1)
        return None, g.stride


@register_module
class LowRankPointwise(DepthwiseThen):
    """[depthwise k×k →] 1×1 C_in→r → 1×1 r→C_out."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride=1, padding=0, dilation=1,
                 rank: int = 1):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, rank=rank)
        g = geometry_of_args(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.depthwise, pw_stride = self._depthwise(g)
        self.down = nn.Conv2d(in_channels, rank, 1, stride=pw_stride, bias=False)
        self.up = nn.Conv2d(rank, out_channels, 1, bias=False)

    def forward(self, x):
        if self.depthwise is not None:
            x = self.depthwise(x)
        return self.up(self.down(x))


@register_module
class SeparablePointwise(DepthwiseThen):
    """[depthwise k×k →] dense 1×1 C_in→C_out (a depthwise-separable conv without the inner BN/ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride=1, padding=0, dilation=1):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation)
        g = geometry_of_args(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.depthwise, pw_stride = self._depthwise(g)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, stride=pw_stride, bias=False)

    def forward(self, x):
        if self.depthwise is not None:
            x = self.depthwise(x)
        return self.pointwise(x)


@register_module
class ShufflePointwise(DepthwiseThen):
    """[depthwise k×k →] grouped 1×1 C_in→C_out/4 → channel shuffle → depthwise 3×3 → grouped 1×1 →C_out."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride=1, padding=0, dilation=1,
                 groups: int = 1):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, groups=groups)
        g = geometry_of_args(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.depthwise, pw_stride = self._depthwise(g)
        mid = out_channels // 4
        self.reduce = nn.Conv2d(in_channels, mid, 1, stride=pw_stride, groups=groups, bias=False)
        self.shuffle = nn.ChannelShuffle(groups)
        self.mix = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.expand = nn.Conv2d(mid, out_channels, 1, groups=groups, bias=False)

    def forward(self, x):
        if self.depthwise is not None:
            x = self.depthwise(x)
        return self.expand(self.mix(self.shuffle(self.reduce(x))))


def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (its transpose is the inverse)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def _riffle(n: int) -> torch.Tensor:
    """The riffle shuffle: interleave the first half of the channels with the second (0, h, 1, h+1, ...).

    Built with tensor operations, not a Python loop, so that building it on the meta device for a crafted
    file's absurd width costs nothing (see cheapconv.store.graph_limits)."""
    half = (n + 1) // 2
    first = torch.arange(half)
    return torch.stack([first, first + half], 1).reshape(-1)[:n]  # for odd n the last pair's partner is n


@register_module
class ACDCPointwise(DepthwiseThen):
    """[depthwise k×k →] n factors x ↦ IDCT(D ⊙ DCT(A ⊙ x)) over channels, riffle-permuted between factors.

    Channels are zero-padded to N = max(C_in, C_out) and the first C_out are kept. The DCT matrices and
    the permutation are fixed, non-persistent buffers (not parameters, not in the state dict)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride=1, padding=0, dilation=1,
                 factors: int = 1):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, factors=factors)
        g = geometry_of_args(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.depthwise, self.stride = self._depthwise(g)
        n = max(in_channels, out_channels)
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, n
        # Diagonals start near 1 (the factor starts near the identity), as in the deficient-efficient code.
        self.a = nn.Parameter(1.0 + 0.06 * torch.randn(factors, n))
        self.d = nn.Parameter(1.0 + 0.06 * torch.randn(factors, n))
        self.register_buffer("dct", _dct_matrix(n), persistent=False)
        self.register_buffer("perm", _riffle(n), persistent=False)

    def forward(self, x):
        if self.depthwise is not None:
            x = self.depthwise(x)
        if self.stride != (1, 1):
            x = x[:, :, ::self.stride[0], ::self.stride[1]]
        if self.width > self.in_channels:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.width - self.in_channels))
        dct = self.dct.to(x.dtype)
        for f in range(self.a.shape[0]):
            if f:
                x = x[:, self.perm]
            x = x * self.a[f].view(1, -1, 1, 1)
            x = torch.einsum("oc,bchw->bohw", dct, x)
            x = x * self.d[f].view(1, -1, 1, 1)
            x = torch.einsum("co,bchw->bohw", dct, x)  # inverse DCT = transpose
        return x[:, :self.out_channels]


def geometry_of_args(cin, cout, k, stride, padding, dilation) -> ConvGeometry:
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return ConvGeometry(cin, cout, pair(k), pair(stride), padding if isinstance(padding, str) else pair(padding),
                        pair(dilation), 1, torch.device("cpu"), torch.float32, True)


def conv_args(conv: nn.Conv2d) -> dict:
    g = ConvGeometry.of(conv)
    return dict(in_channels=g.in_channels, out_channels=g.out_channels, kernel_size=g.kernel_size[0],
                stride=g.stride, padding=g.padding, dilation=g.dilation)


@register_block
@dataclass(frozen=True)
class Separable(BlockSpec):
    """``Sep``: depthwise k×k (if k > 1) + dense 1×1. On a 1×1 conv it would change nothing, so it refuses."""

    family = "Sep"
    level = "conv"
    signature = "Sep"
    structure = "[DWConv k×k, stride s] → Conv1x1 C_in→C_out (no norm/act inside)"
    params = "N(k² + N) per conv"

    def __str__(self) -> str:
        return "Sep"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("Sep", args, 0, "Sep")
        return cls()

    def conv_reason(self, conv):
        reason = structured_reason(conv, "Sep")
        if reason is None and conv.kernel_size[0] == 1:
            reason = "Sep on a 1×1 conv is the conv itself"
        return reason

    def build_conv(self, conv):
        return finish(SeparablePointwise(**conv_args(conv)), ConvGeometry.of(conv))


@register_block
@dataclass(frozen=True)
class LowRank(BlockSpec):
    """``LR(s)``: low-rank pointwise of rank r = max(1, int(s·max(C_in, C_out))), 0 < s ≤ 1."""

    scale: float = 0.25

    family = "LR"
    level = "conv"
    signature = "LR(s)"
    structure = "[DWConv k×k, stride s] → Conv1x1 C_in→r → Conv1x1 r→C_out, r = max(1, int(s·N))"
    params = "Nk² + 2rN per conv"

    def __str__(self) -> str:
        return f"LR({self.scale:g})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("LR", args, 1, "LR(s) with 0 < s <= 1, e.g. LR(0.25)")
        return cls(parser.fraction(args[0], "the rank scale s"))

    rounds_widths = True

    def rank(self, conv: nn.Conv2d) -> int:
        top = max(conv.in_channels, conv.out_channels)
        return self.round_width(max(1, int(self.scale * top)), top)

    def conv_reason(self, conv):
        return structured_reason(conv, str(self))

    def build_conv(self, conv):
        return finish(LowRankPointwise(**conv_args(conv), rank=self.rank(conv)), ConvGeometry.of(conv))


@register_block
@dataclass(frozen=True)
class LowRankFraction(LowRank):
    """``LRp(f)``: low-rank pointwise whose rank keeps a fraction f of the conv's own parameters, 0 < f ≤ 1.

    ``LR(s)`` takes its rank from the larger channel count, which on a narrowing or widening layer can give a
    block *bigger* than the conv (``LR(0.5)`` on MobileNetV2's 320→1280 1×1 conv). ``LRp(f)`` reads the
    layer's own shape: r = max(1, floor((f·C_in·C_out·k² − C_in·k²) / (C_in + C_out))) with the depthwise
    k×k part (k > 1) counted, so the block holds at most ``f`` of the conv's parameters (rank 1 is the floor).
    The rank never exceeds full rank, min(C_in, C_out): on a k×k conv the formula can ask for more (67 for a
    3×3 64→64 conv at f = 0.25), which would add parameters that represent nothing more, so there the block
    keeps less than ``f`` (full rank 64: 24 % of that conv)."""

    scale: float = 0.25

    family = "LRp"
    signature = "LRp(f)"
    structure = ("[DWConv k×k] → Conv1x1 C_in→r → Conv1x1 r→C_out, r chosen to keep a fraction f of the conv's "
                 "parameters")
    params = "≈ f · C_in·C_out·k² per conv"

    def __str__(self) -> str:
        return f"LRp({self.scale:g})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("LRp", args, 1, "LRp(f) with 0 < f <= 1, e.g. LRp(0.25)")
        return cls(parser.fraction(args[0], "the kept fraction f"))

    def rank(self, conv: nn.Conv2d) -> int:
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        cin, cout = conv.in_channels, conv.out_channels
        depthwise = cin * k2 if conv.kernel_size[0] > 1 else 0
        wanted = math.floor((self.scale * cin * cout * k2 - depthwise) / (cin + cout))
        full = min(cin, cout)                     # above min(C_in, C_out) a rank adds nothing but parameters
        return self.round_width(max(1, min(wanted, full)), full)


@register_block
@dataclass(frozen=True)
class Shuffle(BlockSpec):
    """``Shuffle(g)``: ShuffleNet-style pointwise; g must divide C_in and C_out/4 (which must be ≥ 1)."""

    groups: int = 4

    family = "Shuffle"
    level = "conv"
    signature = "Shuffle(g)"
    structure = "[DWConv k×k] → GConv1x1 C_in→C_out/4 (g) → shuffle → DWConv3x3 → GConv1x1 →C_out (g)"
    params = "Nk² + N²/(2g) + 9N/4 per conv"

    def __str__(self) -> str:
        return f"Shuffle({self.groups})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("Shuffle", args, 1, "Shuffle(g)")
        return cls(parser.positive_int(args[0], "the group count"))

    def conv_reason(self, conv):
        reason = structured_reason(conv, str(self))
        if reason:
            return reason
        mid = conv.out_channels // 4
        if mid < 1:
            return f"C_out={conv.out_channels} is too narrow for a C_out/4 shuffle unit"
        for width, name in ((conv.in_channels, "C_in"), (mid, "C_out/4")):
            if width % self.groups:
                return f"{self.groups} groups do not divide {name}={width}"
        return None

    def build_conv(self, conv):
        return finish(ShufflePointwise(**conv_args(conv), groups=self.groups), ConvGeometry.of(conv))


@register_block
@dataclass(frozen=True)
class ACDC(BlockSpec):
    """``ACDC(n)``: n stacked A·DCT·D·IDCT factors (exactly n; the reference code built n-1)."""

    factors: int = 12

    family = "ACDC"
    level = "conv"
    signature = "ACDC(n)"
    structure = "[DWConv k×k] → n × (diag A → DCT → diag D → IDCT), riffle between factors"
    params = "Nk² + 2nN per conv"

    def __str__(self) -> str:
        return f"ACDC({self.factors})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("ACDC", args, 1, "ACDC(n)")
        return cls(parser.positive_int(args[0], "the number of factors"))

    def conv_reason(self, conv):
        return structured_reason(conv, str(self))

    def build_conv(self, conv):
        return finish(ACDCPointwise(**conv_args(conv), factors=self.factors), ConvGeometry.of(conv))
