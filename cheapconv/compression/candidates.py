"""A teacher's library sites and the options each can take, priced by the plan's own rules, before anything is
fitted.

The teacher is analysed once (:func:`cheapconv.surgery.planner.prepare`, as ``plan``, ``cheapen`` and the block
search do). Then, in the order the model runs:

* every residual pair (:class:`~cheapconv.fx.analysis.PairSite`) is a ``pair`` site for the pair-level families;
* every conv that is not the stem and is called once is a ``conv`` site for the conv-level families, the convs of a
  pair included (a pair takes either one pair-level option or conv-level options on its convs;
  :attr:`LibrarySite.convs` names them).

Each option is the one-rule policy that builds it (:attr:`SiteOption.rule`), and its cost change is what the plan
prices for exactly that rule (:meth:`Family.price`). A spec that does not apply at a site, or builds the same block
as an earlier spec there, is no option there; the reason is kept in the ``keep`` option's notes. A site with no
option but ``keep`` is left out: nothing to choose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from ..blockswap.space import single_thread
from ..fx.analysis import Analysis, ConvSite, PairSite
from ..surgery.planner import prepare
from ..surgery.plans import PlanEntry
from ..surgery.policy import Rule, Selector
from .family import FamilyChoice
from .library_model import KEEP, LibrarySite, SiteOption

__all__ = ["find_sites", "selector_for"]


def selector_for(name: str) -> str:
    """A policy selector that matches exactly the layer ``name`` (a regular expression where the name holds glob
    characters)."""
    return f"re:{re.escape(name)}" if any(c in name for c in "*?[]") else name


def _pair_selector(pair: PairSite, analysis: Analysis) -> str:
    """The selector of a pair rule: the module holding the pair where no other pair lives in it (readable:
    ``block1.0=B(2)``), else its two convs by name."""
    paths = [p.block for p in analysis.pairs]
    if paths.count(pair.block) == 1 and not any(c in pair.block for c in "*?[]"):
        return pair.block
    return f"re:(?:{re.escape(pair.a.name)}|{re.escape(pair.b.name)})"


def _delta(entry: PlanEntry) -> dict[str, int]:
    return {"params": entry.params_after - entry.params_before, "paper": entry.paper_after - entry.paper_before,
            "macs": entry.macs_after - entry.macs_before}


def _site(name: str, kind: str, convs: tuple[str, ...], shape: str, where: ConvSite | PairSite, selector: str,
          families: Sequence[FamilyChoice], analysis: Analysis) -> LibrarySite:
    site = LibrarySite(name, kind, convs, shape, options=[SiteOption(KEEP, None)])
    keep = site.options[0]
    built: dict[str, str] = {}   # the replacement's structure -> the first spec that built it
    for family, specs in families:
        for spec in specs:
            if any(o.spec == str(spec) for o in site.options):
                continue
            rule = Rule(spec, Selector(selector))
            entry, module = family.price(spec, where, rule, analysis)
            if entry.action != "replace" or module is None:
                keep.notes.append(f"{spec}: {entry.reason}")
                continue
            structure = " ".join(repr(module).split())
            if structure in built:   # LRp(0.25) where the rank saturates as LRp(0.5) does: fitting it twice is waste
                keep.notes.append(f"{spec}: builds the same block as {built[structure]} here")
                continue
            built[structure] = str(spec)
            site.options.append(SiteOption(str(spec), str(rule), **_delta(entry), family=family.name))
    return site


def find_sites(teacher: nn.Module, families: Sequence[FamilyChoice], input_shape: tuple[int, ...]
               ) -> tuple[list[LibrarySite], list[str], dict[str, int]]:
    """(the library's sites with their priced options, not yet fitted; notes on the analysis; the teacher's
    totals ``params``, ``paper``, ``macs``) for ``teacher`` at ``input_shape`` (C, H, W)."""
    with single_thread():
        analysis, _, notes, totals = prepare(teacher, input_size=tuple(input_shape), stages=[])
        pair_families = [(f, s) for f, s in families if f.level == "pair"]
        conv_families = [(f, s) for f, s in families if f.level == "conv"]
        if pair_families and not analysis.graph_mode:
            notes.append("the teacher did not trace, so its residual pairs are unknown: the pair-level families "
                         f"({', '.join(f.name for f, _ in pair_families)}) apply nowhere")
        sites: list[LibrarySite] = []
        for conv in analysis.convs:
            pair = analysis.pair_starting_at(conv.name)
            if pair is not None and pair_families:
                sites.append(_site(pair.label, "pair", (pair.a.name, pair.b.name),
                                   f"{pair.a.describe()} + {pair.b.describe()}", pair,
                                   _pair_selector(pair, analysis), pair_families, analysis))
            if conv_families and not conv.is_stem and conv.calls == 1 and conv.input_shape is not None:
                sites.append(_site(conv.name, "conv", (conv.name,), conv.describe(), conv, selector_for(conv.name),
                                   conv_families, analysis))
    sites = [s for s in sites if len(s.options) > 1]
    totals = {"params": totals["params_before"], "paper": totals["paper_before"], "macs": totals["macs_before"]}
    return sites, notes, totals

