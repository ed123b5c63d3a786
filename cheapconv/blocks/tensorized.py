"""The spec's tensor-train and Tucker substitutes for pointwise convolutions (blockswap-and-structured.md §2).

As for the other structured substitutes, a k×k conv (k > 1) becomes a depthwise k×k (carrying stride, padding
and dilation) followed by the structured pointwise, a 1×1 conv the structured pointwise alone. The pointwise
C_out×C_in matrix, flattened row-major, is reshaped to a 3-way tensor (n1, n2, n3) whose factors are as near
equal as the divisors of C_out·C_in allow (64×64 → 16×16×16), and that tensor is held decomposed:

| spelling | the 3-way tensor as | parameters |
|---|---|---|
| ``TT(f)`` | a tensor train G1 (n1×r1), G2 (r1×n2×r2), G3 (r2×n3) | n1·r1 + r1·n2·r2 + r2·n3 |
| ``Tucker(f)`` | a Tucker core (r1×r2×r3) with factors U_m (n_m×r_m) | r1·r2·r3 + Σ n_m·r_m |

The forward pass rebuilds the C_out×C_in matrix from the factors (once per call, whatever the batch: those
multiply-adds are counted) and applies it as a 1×1 conv. f in (0, 1] is the fraction of the conv's parameters
the block keeps, depthwise part included; the ranks grow together in proportion to their largest useful values
(TT: min(n1, n2·n3), min(n1·n2, n3); Tucker: n_m) up to the largest that fit, rank 1 being the floor. Where
the full ranks fit in the budget the block holds them (the pointwise part is then exact) and keeps less than f.
``TT(f)`` and ``Tucker(f)`` are the spec's substitutes; ``Tucker2(f)`` (:mod:`.decomposed`) is another thing, a
Tucker-2 factorisation of the whole k×k kernel. No norm, activation or bias inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import ConvGeometry, finish, register_block, register_module
from .decomposed import FractionSpec, largest_fitting
from .factorize import near_equal_factors
from .structured import DepthwiseThen, conv_args, geometry_of_args, structured_reason


def _check_shape(in_channels: int, out_channels: int, shape, ranks, ways: int) -> tuple[tuple[int, ...], ...]:
    shape, ranks = tuple(int(n) for n in shape), tuple(int(r) for r in ranks)
    if len(shape) != 3 or len(ranks) != ways or min(shape + ranks) < 1:
        raise ValueError(f"a 3-way shape and {ways} positive ranks are needed, got {shape} and {ranks}")
    if math.prod(shape) != in_channels * out_channels:
        raise ValueError(f"shape {shape} does not hold a {out_channels}×{in_channels} matrix")
    return shape, ranks


class _TensorizedPointwise(DepthwiseThen):
    """Shared: the optional depthwise part, and applying the rebuilt matrix as a (strided) 1×1 conv."""

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation):
        g = geometry_of_args(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.depthwise, self.stride = self._depthwise(g)
        self.in_channels, self.out_channels = in_channels, out_channels

    def matrix(self) -> torch.Tensor:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def forward(self, x):
        if self.depthwise is not None:
            x = self.depthwise(x)
        weight = self.matrix().reshape(self.out_channels, self.in_channels, 1, 1)
        return F.conv2d(x, weight.to(x.dtype), stride=self.stride)


@register_module
class TensorTrainPointwise(_TensorizedPointwise):
    """[depthwise k×k →] 1×1 conv whose C_out×C_in matrix is a 3-way tensor train of TT-ranks ``ranks``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride=1, padding=0, dilation=1,
                 shape=(1, 1, 1), ranks=(1, 1)):
        super().__init__()
        (n1, n2, n3), (r1, r2) = _check_shape(in_channels, out_channels, shape, ranks, 2)
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, shape=[n1, n2, n3], ranks=[r1, r2])
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation)
        # Entries of variance σ² in each core give the rebuilt matrix variance r1·r2·σ⁶; σ is set so that it is
        # 1/(3·C_in), the variance of a kaiming-uniform 1×1 conv: a random start of the usual scale.
        scale = (1.0 / (3 * in_channels * r1 * r2)) ** (1 / 6)
        self.core1 = nn.Parameter(torch.randn(n1, r1) * scale)
        self.core2 = nn.Parameter(torch.randn(r1, n2, r2) * scale)
        self.core3 = nn.Parameter(torch.randn(r2, n3) * scale)

    def matrix(self) -> torch.Tensor:
        return torch.einsum("ai,ibj,jc->abc", self.core1, self.core2, self.core3)


@register_module
class TuckerPointwise(_TensorizedPointwise):
    """[depthwise k×k →] 1×1 conv whose C_out×C_in matrix is a 3-way Tucker tensor of multilinear ``ranks``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride=1, padding=0, dilation=1,
                 shape=(1, 1, 1), ranks=(1, 1, 1)):
        super().__init__()
        (n1, n2, n3), (r1, r2, r3) = _check_shape(in_channels, out_channels, shape, ranks, 3)
        self.init_args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              stride=stride, padding=padding, dilation=dilation, shape=[n1, n2, n3],
                              ranks=[r1, r2, r3])
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation)
        # orthonormal-ish factors (variance 1/n_m) and a core scaled so the product has a 1×1 conv's variance
        self.factor1 = nn.Parameter(torch.randn(n1, r1) / math.sqrt(n1))
        self.factor2 = nn.Parameter(torch.randn(n2, r2) / math.sqrt(n2))
        self.factor3 = nn.Parameter(torch.randn(n3, r3) / math.sqrt(n3))
        std = math.sqrt(n1 * n2 * n3 / (r1 * r2 * r3) / (3 * in_channels))
        self.core = nn.Parameter(torch.randn(r1, r2, r3) * std)

    def matrix(self) -> torch.Tensor:
        return torch.einsum("ijk,ai,bj,ck->abc", self.core, self.factor1, self.factor2, self.factor3)


def _depthwise_params(conv: nn.Conv2d) -> int:
    kh, kw = conv.kernel_size
    return conv.in_channels * kh * kw if kh > 1 else 0


@register_block
@dataclass(frozen=True)
class TensorTrain(FractionSpec):
    """``TT(f)``: [depthwise k×k →] tensor-train pointwise keeping about a fraction f of the conv's parameters."""

    scale: float = 0.25

    family = "TT"
    level = "conv"
    signature = "TT(f)"
    structure = ("[DWConv k×k] → 1×1 whose C_out×C_in matrix is a 3-way tensor train, ranks chosen to keep a "
                 "fraction f of the conv's parameters")
    params = "≤ f · C_in·C_out·k² per conv (rank 1 is the floor)"

    def shape_and_ranks(self, conv: nn.Conv2d) -> tuple[tuple[int, int, int], tuple[int, ...]]:
        n1, n2, n3 = near_equal_factors(conv.in_channels * conv.out_channels)
        count = lambda r: n1 * r[0] + r[0] * n2 * r[1] + r[1] * n3  # noqa: E731
        budget = self.budget(conv) - _depthwise_params(conv)
        return (n1, n2, n3), largest_fitting(count, (min(n1, n2 * n3), min(n1 * n2, n3)), budget)

    def conv_reason(self, conv):
        return structured_reason(conv, str(self))

    def build_conv(self, conv):
        shape, ranks = self.shape_and_ranks(conv)
        return finish(TensorTrainPointwise(**conv_args(conv), shape=shape, ranks=ranks), ConvGeometry.of(conv))


@register_block
@dataclass(frozen=True)
class Tucker(FractionSpec):
    """``Tucker(f)``: [depthwise k×k →] Tucker pointwise keeping about a fraction f of the conv's parameters."""

    scale: float = 0.25

    family = "Tucker"
    level = "conv"
    signature = "Tucker(f)"
    structure = ("[DWConv k×k] → 1×1 whose C_out×C_in matrix is a 3-way Tucker tensor, ranks chosen to keep a "
                 "fraction f of the conv's parameters")
    params = "≤ f · C_in·C_out·k² per conv (rank 1 is the floor)"

    def shape_and_ranks(self, conv: nn.Conv2d) -> tuple[tuple[int, int, int], tuple[int, ...]]:
        n1, n2, n3 = near_equal_factors(conv.in_channels * conv.out_channels)
        count = lambda r: r[0] * r[1] * r[2] + n1 * r[0] + n2 * r[1] + n3 * r[2]  # noqa: E731
        budget = self.budget(conv) - _depthwise_params(conv)
        return (n1, n2, n3), largest_fitting(count, (n1, n2, n3), budget)

    def conv_reason(self, conv):
        return structured_reason(conv, str(self))

    def build_conv(self, conv):
        shape, ranks = self.shape_and_ranks(conv)
        return finish(TuckerPointwise(**conv_args(conv), shape=shape, ranks=ranks), ConvGeometry.of(conv))
