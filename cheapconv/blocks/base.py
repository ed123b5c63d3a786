"""The block-spec base class, group-count arguments and the registry keyed by the paper's notation.

A *block spec* is a small frozen value (``G(4)``, ``BG(2,M/4)``) that knows three things:
how to print itself in the notation (``str(spec)`` parses back to an equal spec), whether it can replace a
given conv (or residual-branch conv pair) and, if not, why, and how to build the replacement module.

Two levels exist (``moonshine.md`` section 2):

* conv-level specs (``S-2x2``, ``G(...)``) replace one k×k conv on its own, output shape unchanged;
* block-level specs (``B(b)``, ``BG(b,g)``) collapse a residual branch's ``conv_a -> norm -> act -> conv_b``
  into one bottleneck.

``S`` (spelled ``keep`` as well) is the null spec: it matches and keeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..errors import UsageError

Level = Literal["keep", "conv", "block"]

#: family name (as spelled in policies) -> spec class. Filled by :func:`register_block`.
BLOCK_REGISTRY: dict[str, type[BlockSpec]] = {}
#: alias -> canonical text, e.g. ``DW`` -> ``G(N)``.
BLOCK_ALIASES: dict[str, str] = {}
#: the nn.Module classes blocks build. fx treats them as leaves, and saved students describe them by their
#: ``init_args`` (see cheapconv.store.graph_codec), so a new block module must be registered here.
BLOCK_MODULES: list[type[nn.Module]] = []


def register_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator for block modules (they must set ``self.init_args`` to their constructor arguments)."""
    BLOCK_MODULES.append(cls)
    return cls


def register_block(cls: type[BlockSpec]) -> type[BlockSpec]:
    """Class decorator: make a spec family known to the policy grammar and to ``cheapconv blocks``.

    The family's own ``__str__`` writes its notation; this adds the rounding suffix (``B(2)@8``) to it, so every
    family prints (and round-trips) a rounded spec without knowing about rounding."""
    if cls.family in BLOCK_REGISTRY:
        raise ValueError(f"block family {cls.family!r} registered twice")
    own = cls.__str__   # its own, or one inherited from an unregistered base (FractionSpec)
    if not getattr(own, "adds_rounding", False):
        def __str__(self, _own=own) -> str:
            text = _own(self)
            return f"{text}@{self.multiple}" if self.multiple > 1 else text

        __str__.adds_rounding = True   # type: ignore[attr-defined]
        cls.__str__ = __str__          # type: ignore[method-assign]
    BLOCK_REGISTRY[cls.family] = cls
    return cls


def register_alias(alias: str, canonical: str) -> None:
    """Make ``alias`` parse exactly like ``canonical`` (e.g. ``DW`` for ``G(N)``)."""
    BLOCK_ALIASES[alias] = canonical


@dataclass(frozen=True)
class GroupCount:
    """A group count as the notation writes it: absolute (``4``), the full width (``N``/``M``) or a fraction
    of it (``N/4``). ``symbol`` is the width letter the paper uses in that position (N for conv-level, M for
    the bottleneck's inner width)."""

    value: int | None = None
    divisor: int | None = None
    symbol: str = "N"

    def resolve(self, width: int) -> int:
        """Groups for a conv whose grouped input has ``width`` channels (relative counts: at least 1)."""
        if self.value is not None:
            return self.value
        assert self.divisor is not None
        return max(1, width // self.divisor)

    @property
    def is_relative(self) -> bool:
        return self.value is None

    def __str__(self) -> str:
        if self.value is not None:
            return str(self.value)
        return self.symbol if self.divisor == 1 else f"{self.symbol}/{self.divisor}"


@dataclass(frozen=True)
class ConvGeometry:
    """What a replacement must reproduce of the conv it replaces (and where it must live)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    device: torch.device
    dtype: torch.dtype
    training: bool

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        return cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                   padding, tuple(conv.dilation), conv.groups, conv.weight.device, conv.weight.dtype,
                   conv.training)

    @property
    def is_square_kxk(self) -> bool:
        kh, kw = self.kernel_size
        return kh == kw and kh > 1


def finish(module: nn.Module, like: ConvGeometry) -> nn.Module:
    """Give a freshly built replacement the replaced conv's device, dtype and training flag."""
    module = module.to(device=like.device, dtype=like.dtype)
    module.train(like.training)
    return module


@dataclass(frozen=True)
class BlockSpec:
    """Base class of every block spec. Subclasses are frozen dataclasses registered with :func:`register_block`.

    Class attributes document the family for ``cheapconv blocks``: ``family`` (the name in the grammar),
    ``level``, ``structure`` (what replaces a k×k conv C_in→C_out) and ``params`` (conv parameters when
    C_in = C_out = N, as in the spec's table).
    """

    family: ClassVar[str] = ""
    level: ClassVar[Level] = "conv"
    structure: ClassVar[str] = ""
    params: ClassVar[str] = ""
    signature: ClassVar[str] = ""
    #: whether the family has inner widths (ranks, bottleneck widths, channels per group) that ``@m`` rounds
    rounds_widths: ClassVar[bool] = False

    #: ``@m`` in the notation (``B(2)@8``): the inner widths rounded to multiples of m, where int8 and
    #: tensor-core kernels want them (1: as the family's formula gives them)
    multiple: int = dataclasses.field(default=1, kw_only=True)

    # --- rounding -----------------------------------------------------------------------------------------
    def round_width(self, width: int, maximum: int) -> int:
        """``width`` rounded to the nearest multiple of :attr:`multiple` (halves up), at least one multiple and
        never above ``maximum`` (the full width: a layer narrower than one multiple keeps its full width)."""
        m = self.multiple
        if m <= 1:
            return width
        return min(max(m, (width + m // 2) // m * m), maximum)

    def round_groups(self, width: int, groups: int) -> int:
        """The group count of a grouped conv of ``width`` channels with its channels per group rounded (the
        next multiple of :attr:`multiple` from the rounded width that divides ``width``). Dense (1 group) and
        depthwise (``width`` groups) convs are left as they are: rounding would make them another block."""
        if self.multiple <= 1 or groups <= 1 or groups >= width:
            return groups
        per = self.round_width(width // groups, width)
        while width % per:
            per += self.multiple
            if per >= width:
                return 1
        return width // per

    # --- notation -----------------------------------------------------------------------------------------
    def __str__(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def from_args(cls, args: list[tuple[str, int]], parser) -> BlockSpec:
        """Build the spec from parsed ``(text, column)`` arguments; ``parser.fail(msg, col)`` reports errors."""
        raise NotImplementedError

    # --- conv-level interface ------------------------------------------------------------------------------
    def conv_reason(self, conv: nn.Conv2d) -> str | None:
        """Why this spec cannot replace ``conv`` on its own, or None when it can."""
        return f"{self} is a block-level spec; it replaces residual-branch conv pairs, not single convs"

    def build_conv(self, conv: nn.Conv2d) -> nn.Module:
        """The replacement for ``conv`` (same input and output shapes, fresh random weights)."""
        raise NotImplementedError

    # --- block-level interface -----------------------------------------------------------------------------
    def pair_reason(self, conv_a: nn.Conv2d, conv_b: nn.Conv2d) -> str | None:
        """Why this spec cannot collapse the pair ``conv_a -> norm -> act -> conv_b``, or None when it can."""
        return f"{self} is a conv-level spec; it replaces single convs"

    def build_pair(self, conv_a: nn.Conv2d, conv_b: nn.Conv2d) -> nn.Module:
        raise NotImplementedError

    #: whether the block rebuilds the layers between the pair's convs (``W(f)`` keeps the teacher's norm and
    #: activation); a block that brings its own (``B(b)``) ignores them
    reads_between: ClassVar[bool] = False

    def pair_reason_with(self, conv_a: nn.Conv2d, conv_b: nn.Conv2d, between: Sequence[nn.Module | str]
                         ) -> str | None:
        """:meth:`pair_reason` given the layers between the convs (modules in order; a string names an operation
        that has no module). Planning and the search call this one; by default the layers do not matter."""
        return self.pair_reason(conv_a, conv_b)

    def build_pair_with(self, conv_a: nn.Conv2d, conv_b: nn.Conv2d, between: Sequence[nn.Module | str]
                        ) -> nn.Module:
        """:meth:`build_pair` given the layers between the convs (see :meth:`pair_reason_with`)."""
        return self.build_pair(conv_a, conv_b)

    def replace(self, **changes) -> BlockSpec:
        return dataclasses.replace(self, **changes)


def rounded(spec: BlockSpec, multiple: int | None) -> BlockSpec:
    """``spec`` with its inner widths rounded to multiples of ``multiple`` (``--round``, ``round_to=``): families
    without inner widths, and specs that already say their own ``@m``, are returned as they are."""
    if multiple is None:
        return spec
    check_multiple(multiple)
    if not type(spec).rounds_widths or spec.multiple != 1:
        return spec
    return spec.replace(multiple=multiple)


def check_multiple(multiple: int) -> int:
    """A rounding multiple is a whole number of at least 2 (8 or 16 where int8 and tensor-core kernels want)."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or not 2 <= multiple <= 1024:
        raise UsageError(f"Widths round to multiples of a whole number from 2 to 1024 (8 or 16 for int8 and "
                         f"tensor-core kernels), not {multiple!r}. Pass --round 8 (round_to=8), or leave it out.")
    return multiple


def dense_kxk_reason(conv: nn.Conv2d, what: str) -> str | None:
    """Common eligibility test of k×k blocks: a square k×k (k > 1), ungrouped 2-D conv."""
    g = ConvGeometry.of(conv)
    if not g.is_square_kxk:
        kh, kw = g.kernel_size
        return f"{what} replaces square k×k convs with k > 1; this conv is {kh}×{kw}"
    if g.groups != 1:
        return f"already grouped (groups={g.groups}); {what} replaces dense convs only"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported (zeros only)"
    return None
