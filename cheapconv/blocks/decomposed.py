"""Decomposed k×k convolutions: ``Tucker2(f)`` and ``SVDk(f)``, linear blocks that keep a k×k conv's reach.

Unlike the structured pointwise substitutes (a depthwise k×k then a structured 1×1), these factorise the whole
k×k kernel, so a teacher's conv has a closed-form starting point for them (:mod:`cheapconv.blocks.factorize`):

| spelling | structure replacing a k×k conv C_in→C_out | parameters |
|---|---|---|
| ``Tucker2(f)`` | 1×1 C_in→r1 → k×k r1→r2 (stride, padding, dilation) → 1×1 r2→C_out | C_in·r1 + r1·r2·k² + r2·C_out |
| ``SVDk(f)`` | k×1 C_in→r (vertical stride) → 1×k r→C_out (horizontal stride) | r·k·(C_in + C_out) |

The hyper-parameter f in (0, 1] is the fraction of the conv's own parameters (C_in·C_out·k²) the block may
keep, so it means the same on narrowing and widening layers: Tucker-2 keeps r1/C_in = r2/C_out (as nearly as
integers allow) at the largest ranks that fit, spatial SVD the largest r that fits; rank 1 is the floor. No
norm, activation or bias inside (each is exactly a factorised conv).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .base import BlockSpec, ConvGeometry, dense_kxk_reason, finish, register_block, register_module


def largest_fitting(count: Callable[[tuple[int, ...]], int], maxima: tuple[int, ...], budget: float
                    ) -> tuple[int, ...]:
    """The largest ranks, scaled together in proportion to ``maxima``, whose parameter ``count`` fits ``budget``.

    Ranks ``max(1, round(t·m / T))`` for t = 1..T (T = the largest maximum) grow with t, so the last t that fits
    wins; when none fits, every rank is 1 (the floor)."""
    top = max(maxima)
    best = tuple(1 for _ in maxima)
    lo, hi = 1, top
    ranks = lambda t: tuple(max(1, min(m, round(t * m / top))) for m in maxima)  # noqa: E731
    while lo <= hi:  # count(ranks(t)) is non-decreasing in t: bisect
        mid = (lo + hi) // 2
        if count(ranks(mid)) <= budget:
            best, lo = ranks(mid), mid + 1
        else:
            hi = mid - 1
    return best


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@register_module
class Tucker2Conv(nn.Module):
    """1×1 C_in→rank_in → k×k rank_in→rank_out (the conv's stride, padding, dilation) → 1×1 rank_out→C_out.

    A Tucker-2 factorised conv (Kim et al. 2016, tensorly-torch's ``FactorizedConv``): no norm, activation or
    bias inside, so it equals a k×k conv whose kernel has multilinear rank (rank_out, rank_in)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, padding=0, dilation=1,
                 rank_in: int = 1, rank_out: int = 1):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, rank_in=rank_in, rank_out=rank_out)
        self.reduce = nn.Conv2d(in_channels, rank_in, 1, bias=False)
        self.core = nn.Conv2d(rank_in, rank_out, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              bias=False)
        self.expand = nn.Conv2d(rank_out, out_channels, 1, bias=False)

    def forward(self, x):
        return self.expand(self.core(self.reduce(x)))


@register_module
class SpatialSVDConv(nn.Module):
    """kh×1 conv C_in→rank (vertical stride/padding/dilation) → 1×kw conv rank→C_out (horizontal ones).

    With zero padding and no bias this is exactly a k×k conv whose kernel, reshaped to (C_in·k)×(C_out·k), has
    rank ≤ ``rank`` (the spatial SVD of Jaderberg et al. 2014 and AIMET)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, padding=0, dilation=1,
                 rank: int = 1):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, rank=rank)
        (kh, kw), (sh, sw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            pad_v = pad_h = padding
        else:
            ph, pw = _pair(padding)
            pad_v, pad_h = (ph, 0), (0, pw)
        self.vertical = nn.Conv2d(in_channels, rank, (kh, 1), stride=(sh, 1), padding=pad_v, dilation=(dh, 1),
                                  bias=False)
        self.horizontal = nn.Conv2d(rank, out_channels, (1, kw), stride=(1, sw), padding=pad_h, dilation=(1, dw),
                                    bias=False)

    def forward(self, x):
        return self.horizontal(self.vertical(x))


def _geometry_args(conv: nn.Conv2d) -> dict:
    g = ConvGeometry.of(conv)
    return dict(in_channels=g.in_channels, out_channels=g.out_channels, kernel_size=g.kernel_size[0],
                stride=g.stride, padding=g.padding, dilation=g.dilation)


class FractionSpec(BlockSpec):
    """Shared notation of the blocks whose one argument is the kept fraction f of the conv's parameters."""

    scale: float = 0.25

    def __str__(self) -> str:
        return f"{self.family}({self.scale:g})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity(cls.family, args, 1, f"{cls.family}(f) with 0 < f <= 1, e.g. {cls.family}(0.25)")
        return cls(parser.fraction(args[0], "the kept fraction f"))

    def budget(self, conv: nn.Conv2d) -> float:
        kh, kw = conv.kernel_size
        return self.scale * conv.in_channels * conv.out_channels * kh * kw


@register_block
@dataclass(frozen=True)
class Tucker2(FractionSpec):
    """``Tucker2(f)``: Tucker-2 factorised k×k conv keeping about a fraction f of the conv's parameters.

    Ranks r1 (input side) and r2 (output side) grow together with r1/C_in ≈ r2/C_out, the largest that fit
    C_in·r1 + r1·r2·k² + r2·C_out ≤ f·C_in·C_out·k². ``init="teacher"`` starts it from the HOSVD of the kernel."""

    scale: float = 0.25

    family = "Tucker2"
    rounds_widths = True
    level = "conv"
    signature = "Tucker2(f)"
    structure = ("Conv1x1 C_in→r1 → Conv k×k r1→r2 (stride s) → Conv1x1 r2→C_out, ranks chosen to keep a "
                 "fraction f of the conv's parameters")
    params = "≤ f · C_in·C_out·k² per conv (rank 1 is the floor)"

    def ranks(self, conv: nn.Conv2d) -> tuple[int, int]:
        """(rank_in, rank_out) for ``conv``."""
        cin, cout = conv.in_channels, conv.out_channels
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        count = lambda r: cin * r[0] + r[0] * r[1] * k2 + r[1] * cout  # noqa: E731
        rank_in, rank_out = largest_fitting(count, (cin, cout), self.budget(conv))
        return self.round_width(rank_in, cin), self.round_width(rank_out, cout)

    def conv_reason(self, conv):
        return dense_kxk_reason(conv, str(self))

    def build_conv(self, conv):
        rank_in, rank_out = self.ranks(conv)
        return finish(Tucker2Conv(**_geometry_args(conv), rank_in=rank_in, rank_out=rank_out), ConvGeometry.of(conv))


@register_block
@dataclass(frozen=True)
class SpatialSVD(FractionSpec):
    """``SVDk(f)``: spatial-SVD conv (k×1 then 1×k) of rank r = max(1, ⌊f·C_in·C_out·k / (C_in + C_out)⌋),
    which keeps at most a fraction f of the conv's parameters. ``init="teacher"`` starts it from the SVD of the
    kernel reshaped to (C_in·k)×(C_out·k)."""

    scale: float = 0.5

    family = "SVDk"
    rounds_widths = True
    level = "conv"
    signature = "SVDk(f)"
    structure = "Conv k×1 C_in→r (stride s) → Conv 1×k r→C_out, r chosen to keep a fraction f of the conv's parameters"
    params = "r·k·(C_in + C_out) ≈ f · C_in·C_out·k² per conv"

    def rank(self, conv: nn.Conv2d) -> int:
        k = conv.kernel_size[0]
        rank = max(1, math.floor(self.budget(conv) / (k * (conv.in_channels + conv.out_channels))))
        return self.round_width(rank, k * min(conv.in_channels, conv.out_channels))

    def conv_reason(self, conv):
        return dense_kxk_reason(conv, str(self))

    def build_conv(self, conv):
        return finish(SpatialSVDConv(**_geometry_args(conv), rank=self.rank(conv)), ConvGeometry.of(conv))
