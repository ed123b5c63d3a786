"""A candidate family of the compress library: which cheap blocks, at which strengths, a site may take.

A family is one file in :mod:`cheapconv.compression.families` that registers a :class:`Family` in
:data:`cheapconv.extensions.FAMILIES` (the file's name is the family's name). It says

* ``level``: ``"conv"`` (each option replaces one conv: ``G(4)``, ``LRp(0.5)``) or ``"pair"`` (each option
  replaces a residual pair ``conv_a → norm → act → conv_b`` as a whole, or changes its inner width: ``B(2)``);
* ``strengths``: the specs it offers by default (``G(2)``, ``G(4)``, ``G(N)``);
* ``default``: whether :func:`cheapconv.compression.build_library` uses it when no families are named;
* :meth:`Family.price`: whether a spec applies at a site, and what it costs. The default is the plan's own rule
  (:func:`cheapconv.surgery.planner.price_conv` and :func:`~cheapconv.surgery.planner.price_pair`, the same
  pricing the block search uses), so the library, ``cheapen`` and ``search`` cannot disagree on where a block
  applies or what it costs. A family whose blocks need another rule overrides it.

Adding a family (issue 31's thinner blocks, say) is one more file: the library iterates the registry and
asks each family's ``level`` and ``price``; nothing lists the families by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from ..blocks import BlockSpec, parse_block, rounded
from ..blocks.grammar import split_top_level
from ..errors import UsageError
from ..extensions import FAMILIES
from ..fx.analysis import Analysis, ConvSite, PairSite
from ..surgery.planner import price_conv, price_pair
from ..surgery.plans import PlanEntry
from ..surgery.policy import Rule

__all__ = ["FAMILIES", "LEVELS", "Family", "FamilyChoice", "register", "resolve_families"]

#: where a family's options go: one conv, or a residual pair
LEVELS = ("conv", "pair")
#: the spec level (:attr:`cheapconv.blocks.BlockSpec.level`) that each family level takes
_SPEC_LEVEL = {"conv": "conv", "pair": "block"}


@dataclass(frozen=True)
class Family:
    """One family of candidate blocks (see the module docstring).

    >>> Family("grouped", "conv", ("G(2)", "G(4)")).specs()
    [G(2), G(4)]
    """

    name: str
    level: str                       # "conv" or "pair"
    strengths: tuple[str, ...]       # the specs offered by default, in the block notation
    help: str = ""
    default: bool = True             # among the families build_library uses when none are named

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"family {self.name!r}: level must be one of {', '.join(LEVELS)}, got {self.level!r}")

    def specs(self, strengths: str | Sequence[str | BlockSpec] | None = None) -> list[BlockSpec]:
        """The family's specs: ``strengths`` if given (a spec, a comma-separated string or a list), else its
        defaults; parsed, without repeats. A spec of the wrong level for the family is a
        :class:`~cheapconv.errors.UsageError`."""
        if strengths is None:
            strengths = self.strengths
        if isinstance(strengths, (str, BlockSpec)):
            strengths = [strengths] if isinstance(strengths, BlockSpec) else split_top_level(strengths, ",;")
        out: list[BlockSpec] = []
        for s in strengths:
            spec = s if isinstance(s, BlockSpec) else parse_block(str(s))
            if spec.level != _SPEC_LEVEL[self.level]:
                what, want = (("one conv", "conv-level blocks (G(4), LRp(0.5), ...)") if self.level == "conv"
                              else ("a residual pair", "block-level blocks (B(2), BG(2,4), ...)"))
                raise UsageError(f"The {self.name} family replaces {what} per option, so its strengths must be "
                                 f"{want}; {spec} is {spec.level}-level. Give {spec} to a family of that level.")
            if spec not in out:
                out.append(spec)
        if not out:
            raise UsageError(f"The {self.name} family was given no strengths; give specs such as "
                             f"{', '.join(self.strengths)}.")
        return out

    def price(self, spec: BlockSpec, site: ConvSite | PairSite, rule: Rule, analysis: Analysis
              ) -> tuple[PlanEntry, nn.Module | None]:
        """How the one-rule policy ``rule`` (``spec`` at ``site``) is planned: the priced entry (``replace``,
        else the reason in ``entry.reason``) and the replacement module. ``analysis`` is left as it was."""
        if self.level == "conv":
            return price_conv(site, spec, analysis)
        return price_pair(site, rule, analysis)


def register(family: Family) -> Family:
    """Register ``family`` in :data:`~cheapconv.extensions.FAMILIES` under its name (a family file calls this
    once; the file's name must be the family's)."""
    FAMILIES.add(family.name, family, help=family.help)
    return family


#: a family and the specs it offers in one library
FamilyChoice = tuple[Family, tuple[BlockSpec, ...]]

Families = str | Sequence[str | Family] | Mapping[str, str | Sequence[str | BlockSpec] | None] | None


def resolve_families(families: Families = None, *, round_to: int | None = None) -> list[FamilyChoice]:
    """The families a library uses and the specs of each (``round_to``: every spec's inner widths rounded to
    multiples of it, ``B(2)@8``; see :func:`cheapconv.blocks.rounded`).

    ``None``: every registered family marked ``default``; a name or a comma-separated string of names
    (``"grouped, low_rank"``); a list of names or :class:`Family` objects; or a mapping name -> strengths
    (``{"grouped": ["G(8)"], "bottleneck": None}``: ``None`` keeps the family's defaults). Unknown names are a
    :class:`~cheapconv.errors.UsageError` listing the registered ones."""
    if families is None:
        chosen: list[tuple[Family, object]] = [(e.obj, None) for e in FAMILIES.entries() if e.obj.default]
    elif isinstance(families, Mapping):
        chosen = [(_family(name), strengths) for name, strengths in families.items()]
    else:
        items = split_top_level(families, ",;") if isinstance(families, str) else list(families)
        chosen = [(_family(item), None) for item in items]
    if not chosen:
        raise UsageError(f"No candidate family was chosen; name some of {FAMILIES.describe(last='and')}.")
    out: list[FamilyChoice] = []
    for family, strengths in chosen:
        if any(f.name == family.name for f, _ in out):
            continue
        out.append((family, tuple(rounded(spec, round_to) for spec in family.specs(strengths))))
    return out


def _family(item: str | Family) -> Family:
    if isinstance(item, Family):
        return item
    return FAMILIES.get(str(item).strip())
