"""Pricing coupled widths (issue 31 item 2): a library's group sites and its options at every width combination,
in parameters (both conventions) and MACs, exactly. The design is :mod:`.groups`'s; this is its pricing step.

For each combination of widths a site's groups can take (the other groups kept), the teacher is thinned to those
widths (:func:`cheapconv.surgery.thin_groups`; only shapes matter here) and every option is priced there by the plan
(:func:`.candidates.find_sites`), against the thinned teacher's own layers. The costs are then attributed so that
every layer is counted once:

- a conv site's price at a combination is its option there plus its conv's change from the teacher's width;
- a pair site's is its option there (against its two convs at those widths) plus the change of those of its convs
  that are no conv site of the library (the conv sites' ``keep`` carries the others);
- a group width's own price is the whole teacher's change with only that group thinned
  (:func:`cheapconv.surgery.thinned_counts`) less the ``keep`` prices at that width of every site touching it: the
  layers of no site (BatchNorms, the stem conv, the classifier).

That is exact while no layer outside the sites touches two groups (a conv bridging two streams that no family
replaces): then the later of the two groups is left out, with a note. Latency (``latency_saved_ms``) is left
None here and the loss of a group width (``kl``) 0: measuring and scoring are the builder's, so a latency budget
cannot choose a thinner group before it has been timed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from ..counting import shape_forward
from ..surgery import thin_groups
from .candidates import find_sites
from .family import FamilyChoice
from .groups import GroupSite
from .library_model import KEEP, GroupWidth, LibraryGroup, LibrarySite, WidthPrice

__all__ = ["price_groups"]


def _output_positions(model: nn.Module, names: Sequence[str], input_shape: tuple[int, ...]) -> dict[str, int]:
    """Module name -> its output positions for one input (H×W of a conv's output; 1 for a Linear)."""
    positions: dict[str, int] = {}

    def hook(name: str):
        def record(module, args, out) -> None:   # returns None: a forward hook's return value replaces the output
            positions.setdefault(name, out[0, 0].numel())
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        shape_forward(model, (1, *input_shape), on_retry=positions.clear)
    finally:
        for h in handles:
            h.remove()
    return positions


def _conv_cost(conv: nn.Module, positions: int) -> tuple[int, int]:
    """(parameters, MACs) of a conv: its weights (and bias) once each, one MAC per weight per output position.
    A conv has no BatchNorm statistics, so both parameter conventions agree."""
    weights = conv.weight.numel()
    bias = conv.bias.numel() if getattr(conv, "bias", None) is not None else 0
    return weights + bias, weights * positions


def _widths_changes(teacher: nn.Module, thinned: nn.Module, convs: Sequence[str],
                    positions: dict[str, int]) -> tuple[int, int]:
    """(parameters, MACs) that ``convs`` change by from ``teacher`` to ``thinned``."""
    params = macs = 0
    for name in convs:
        new = _conv_cost(thinned.get_submodule(name), positions[name])
        old = _conv_cost(teacher.get_submodule(name), positions[name])
        params, macs = params + new[0] - old[0], macs + new[1] - old[1]
    return params, macs


def _bridged(groups: list[GroupSite], site_convs: set[str]) -> tuple[list[GroupSite], list[str]]:
    """The groups that can be priced additively, and notes on those left out: where a layer outside the sites
    reads one group and writes another, the later group goes."""
    kept: list[GroupSite] = []
    notes = []
    for g in groups:
        layers = set(g.group.writers + g.group.readers)
        bridge = next((name for other in kept for name in set(other.group.writers + other.group.readers) & layers
                       if name not in site_convs), None)
        if bridge is None:
            kept.append(g)
        else:
            notes.append(f"group {g.name} is left out: {bridge} reads or writes it and another group and is no site, "
                         "so the two widths cannot be priced apart")
    return kept, notes


def price_groups(teacher: nn.Module, sites: list[LibrarySite], groups: list[GroupSite],
                 families: Sequence[FamilyChoice], input_shape: tuple[int, ...]
                 ) -> tuple[list[LibraryGroup], list[str]]:
    """The library groups of ``groups`` (:func:`.groups.find_group_sites`) with their own prices, and notes.

    ``sites`` (:func:`.candidates.find_sites` of ``teacher`` with ``families``) are changed in place: each gets
    :attr:`LibrarySite.touches` and, for every width combination of those groups but all-keep, its options' prices
    there (:attr:`SiteOption.at_widths`; an option that does not apply at a combination has none). The module
    docstring says how costs are attributed. ``teacher`` is not changed."""
    site_convs = {c for s in sites for c in s.convs}
    conv_sites = {s.name for s in sites if s.kind == "conv"}
    groups, notes = _bridged(list(groups), site_convs)
    layers = {g.name: set(g.group.writers + g.group.readers + g.group.depthwise) for g in groups}
    by_name = {g.name: g for g in groups}
    positions = _output_positions(teacher, sorted(site_convs), tuple(input_shape))
    # the convs each site's keep carries: a conv site its conv; a pair the convs of it that are no conv site
    carried = {s.name: s.convs if s.kind == "conv" else tuple(c for c in s.convs if c not in conv_sites)
               for s in sites}
    thinned: dict[tuple[tuple[str, str], ...], tuple[nn.Module, dict[str, LibrarySite]]] = {}

    def at(combo: tuple[tuple[str, str], ...]) -> tuple[nn.Module, dict[str, LibrarySite]]:
        """The teacher thinned to ``combo`` (non-keep widths only), and its sites priced there."""
        if combo not in thinned:
            model = thin_groups(teacher, [(by_name[g].group, torch.arange(by_name[g].option(w).kept))
                                          for g, w in combo])
            found, _, _ = find_sites(model, families, tuple(input_shape))
            thinned[combo] = (model, {s.name: s for s in found})
        return thinned[combo]

    keep_prices: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, int]] = {}
    for site in sites:
        site.touches = tuple(g.name for g in groups if layers[g.name] & set(site.convs))
        for opt in site.options:
            opt.at_widths = []
        for widths in itertools.product(*[[o.spec for o in by_name[g].options] for g in site.touches]):
            combo = tuple((g, w) for g, w in zip(site.touches, widths, strict=True) if w != KEEP)
            if not combo:
                continue
            model, priced = at(combo)
            keep_params, keep_macs = _widths_changes(teacher, model, carried[site.name], positions)
            keep_prices[(site.name, combo)] = (keep_params, keep_macs)
            full = dict(zip(site.touches, widths, strict=True))
            for opt in site.options:
                if opt.is_keep:
                    change = (0, 0, 0)
                else:
                    there = priced.get(site.name)
                    match = next((o for o in there.options if o.spec == opt.spec), None) if there else None
                    if match is None:
                        continue
                    change = (match.params, match.paper, match.macs)
                opt.at_widths.append(WidthPrice(dict(full), params=change[0] + keep_params,
                                                paper=change[1] + keep_params, macs=change[2] + keep_macs,
                                                latency_saved_ms=None))
    library_groups = []
    for g in groups:
        widths = [GroupWidth(KEEP, g.group.channels)]
        for option in g.options[1:]:
            touching = [keep_prices[(s.name, ((g.name, option.spec),))] for s in sites if g.name in s.touches]
            widths.append(GroupWidth(option.spec, option.kept, params=option.params - sum(p for p, _ in touching),
                                     paper=option.paper - sum(p for p, _ in touching),
                                     macs=option.macs - sum(m for _, m in touching), latency_saved_ms=None))
        library_groups.append(LibraryGroup(g.name, g.group.channels, g.group.modules(), widths))
    return library_groups, notes
