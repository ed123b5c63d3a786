"""``W(f)``: a residual pair kept as it is, but thinner: a fraction f of its free channels.

The free channels of a residual-branch pair ``conv_a → norm → act → conv_b`` are conv_a's outputs: nothing but
conv_b reads them, so they can be removed without touching any other layer (the channels the residual adds share
are not free; they shrink only together, issue 31 item 2). ``W(f)`` rebuilds the pair with

    Conv C_in→m (conv_a's kernel, stride, padding, dilation) → BatchNorm m → act → Conv m→C_out (conv_b's)

where m = :func:`kept_channels` (f, C_mid): f·C_mid rounded half up, at least 1 and at most C_mid, computed on the
fraction as written (``W(0.5)`` on 33 channels keeps 17), so parameters and MACs are exact integers that the plan,
the search and the compress library compute alike. At f = 1 it is the teacher's pair.

Unlike the bottleneck (``B(b)``), which brings its own BatchNorm and ReLU, the thin pair reproduces the teacher's
layers between the two convs (:meth:`ThinSpec.build_pair_with`): its BatchNorm (eps, momentum), its activation
(ReLU, ReLU6, SiLU, GELU, Hardswish, LeakyReLU, Mish) and its dropout. Identity-like layers are dropped, and
anything else (a GroupNorm, whose groups would change; a PReLU; an unknown function) is a reason not to apply.
Called without the between layers (:meth:`ThinSpec.build_pair`), it assumes the usual BatchNorm → ReLU. The convs
keep their bias flags, so ``init="teacher"`` at f = 1 reproduces the pair exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from .base import BlockSpec, ConvGeometry, finish, register_block, register_module

__all__ = ["ACTIVATIONS", "Thin", "ThinSpec", "kept_channels"]

#: activations the thin pair can rebuild, by the name its module records (``slope``: LeakyReLU's negative slope)
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU, "gelu_tanh": nn.GELU,
               "hardswish": nn.Hardswish, "leaky_relu": nn.LeakyReLU, "mish": nn.Mish, "identity": nn.Identity}


def kept_channels(fraction: float, channels: int) -> int:
    """The channels ``W(fraction)`` keeps of ``channels``: fraction·channels rounded half up, within [1, channels].

    The product is taken on the fraction's decimal text (``Fraction(repr(f))``), so ``W(0.1)`` on 30 channels keeps
    exactly 3 and ``W(0.5)`` on 33 keeps 17, with no binary round-off deciding a tie."""
    exact = Fraction(repr(float(fraction))) * channels
    return max(1, min(channels, math.floor(exact + Fraction(1, 2))))


def _activation(name: str, slope: float) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    return ACTIVATIONS[name]()


@register_module
class Thin(nn.Module):
    """Conv C_in→m → [BatchNorm m] → activation → [Dropout] → Conv m→C_out: a residual pair at inner width m.

    ``conv1`` takes the first conv's kernel, stride, padding and dilation (``kernel_size``, ``stride``, ...),
    ``conv2`` the second's (``kernel_size_b``, ...); ``bias``/``bias_b`` keep the teacher convs' bias flags.
    ``norm`` False leaves the BatchNorm out (the teacher had none there)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, kernel_size_b=3, stride_b=1, padding_b=0, dilation_b=1, bias: bool = False,
                 bias_b: bool = False, norm: bool = True, eps: float = 1e-5, momentum: float | None = 0.1,
                 activation: str = "relu", slope: float = 0.01, dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.init_args = dict(in_channels=in_channels, mid_channels=mid_channels, out_channels=out_channels,
                              kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                              kernel_size_b=kernel_size_b, stride_b=stride_b, padding_b=padding_b,
                              dilation_b=dilation_b, bias=bias, bias_b=bias_b, norm=norm, eps=eps,
                              momentum=momentum, activation=activation, slope=slope, dropout=dropout)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size, stride=stride, padding=padding,
                               dilation=dilation, bias=bias)
        self.bn = nn.BatchNorm2d(mid_channels, eps=eps, momentum=momentum) if norm else nn.Identity()
        self.act = _activation(activation, slope)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(mid_channels, out_channels, kernel_size_b, stride=stride_b, padding=padding_b,
                               dilation=dilation_b, bias=bias_b)

    def forward(self, x):
        return self.conv2(self.drop(self.act(self.bn(self.conv1(x)))))


def _between_args(between: Sequence[nn.Module | str]) -> tuple[dict, str | None]:
    """(Thin's norm/activation/dropout arguments, None) for the teacher's layers between the convs, or ({}, why
    not). Strings stand for operations the caller could not express as a module (an unknown function)."""
    args: dict = dict(norm=False, activation="identity", dropout=0.0)
    seen_norm = seen_act = False
    for layer in between:
        if isinstance(layer, str):
            return {}, f"W cannot rebuild {layer} between the pair's convs; make it a module (nn.ReLU, ...)"
        if isinstance(layer, (nn.Identity, nn.Dropout, nn.Dropout2d)) or (
                next(iter(layer.parameters()), None) is None and not list(layer.children())
                and type(layer).__name__.lower().startswith(("drop", "identity"))):
            if isinstance(layer, (nn.Dropout, nn.Dropout2d)) and layer.p > 0:
                args["dropout"] = float(layer.p)
            continue
        if type(layer) is nn.BatchNorm2d and not seen_norm and not seen_act:
            if not layer.affine or not layer.track_running_stats:
                return {}, "W rebuilds a BatchNorm2d with affine parameters and running statistics only"
            args.update(norm=True, eps=float(layer.eps), momentum=layer.momentum)
            seen_norm = True
            continue
        act = _activation_name(layer)
        if act is not None and not seen_act:
            args["activation"], seen_act = act, True
            if act == "leaky_relu":
                args["slope"] = float(layer.negative_slope)
            continue
        return {}, (f"W cannot rebuild the {type(layer).__name__} between the pair's convs in that order (it "
                    "rebuilds BatchNorm2d → activation → dropout)")
    return args, None


def _activation_name(layer: nn.Module) -> str | None:
    if type(layer) is nn.GELU:
        return "gelu_tanh" if layer.approximate == "tanh" else "gelu"
    for name, cls in ACTIVATIONS.items():
        if type(layer) is cls and cls not in (nn.Identity, nn.GELU):
            return name
    return None


#: what :meth:`ThinSpec.build_pair` assumes without the between layers: the usual BatchNorm → ReLU
_USUAL = (nn.BatchNorm2d(1), nn.ReLU())


@register_block
@dataclass(frozen=True)
class ThinSpec(BlockSpec):
    """``W(f)``: the residual pair at a fraction f of its inner width (see the module docstring)."""

    fraction: float = 0.5

    family = "W"
    level = "block"
    signature = "W(f)"
    structure = ("the pair conv_a → BN → act → conv_b kept, its inner width C_mid thinned to m = f·C_mid "
                 "(rounded half up, at least 1)")
    params = "f·N²k² · 2 per block (exact: m·(C_in + C_out)·k²)"
    reads_between = True

    def __str__(self) -> str:
        text = f"{self.fraction:g}"
        return f"W({text if float(text) == self.fraction else repr(self.fraction)})"

    @classmethod
    def from_args(cls, args, parser):
        parser.arity("W", args, 1, "W(f) with 0 < f <= 1, e.g. W(0.5)")
        return cls(parser.fraction(args[0], "the kept fraction f"))

    rounds_widths = True

    def mid_channels(self, conv_a: nn.Conv2d) -> int:
        """m, the inner width the thin pair keeps of conv_a's outputs."""
        return self.round_width(kept_channels(self.fraction, conv_a.out_channels), conv_a.out_channels)

    def pair_reason(self, conv_a, conv_b):
        return self.pair_reason_with(conv_a, conv_b, _USUAL)

    def build_pair(self, conv_a, conv_b):
        return self.build_pair_with(conv_a, conv_b, _USUAL)

    def pair_reason_with(self, conv_a, conv_b, between):
        for which, conv in (("first", conv_a), ("second", conv_b)):
            if type(conv) is not nn.Conv2d:
                return (f"the {which} conv is a {type(conv).__name__}, whose forward W would not reproduce; W "
                        "rebuilds plain nn.Conv2d pairs")
            if conv.groups != 1:
                return f"the {which} conv is grouped (groups={conv.groups}); its channels are not free"
            if conv.padding_mode != "zeros":
                return f"padding_mode={conv.padding_mode!r} is not supported (zeros only)"
        if conv_b.in_channels != conv_a.out_channels:
            return "the second conv does not read the first conv's channels"
        return _between_args(between)[1]

    def build_pair_with(self, conv_a, conv_b, between):
        a, b = ConvGeometry.of(conv_a), ConvGeometry.of(conv_b)
        extra, reason = _between_args(between)
        if reason is not None:
            raise ValueError(reason)
        block = Thin(a.in_channels, self.mid_channels(conv_a), b.out_channels, a.kernel_size, a.stride, a.padding,
                     a.dilation, b.kernel_size, b.stride, b.padding, b.dilation, bias=conv_a.bias is not None,
                     bias_b=conv_b.bias is not None, **extra)
        return finish(block, a)
