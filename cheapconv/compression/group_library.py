"""Group sites in a candidate library (issue 31 item 2): found, priced, scored and timed, so that the selection can
choose one width per group (:mod:`.selection`) and :func:`thin_teacher` can build the teacher it chose.

:func:`add_groups` runs after the library's options are fitted:

1. the group sites (:func:`.groups.find_group_sites`: stage streams, the stem's outputs) and every site's options at
   every width combination of the groups it touches, priced exactly in parameters and MACs
   (:func:`.group_pricing.price_groups`);
2. each group width scored as an option is: the teacher with only that group thinned to its most important channels
   (:func:`cheapconv.surgery.top_channels`) and its readers refitted on the calibration images
   (:func:`cheapconv.reconstruction.refit_readers`), KL divergence and top-1 agreement against the teacher on the
   held-out images;
3. latency, in the library's runtime settings:

   - a group width's own time saved: the whole teacher and the teacher with only that group thinned, side by side.
     It holds every touching layer's change of width, so here a site's ``keep`` at a combination saves nothing;
   - an option at a combination: its block against the layers it replaces *at those widths*, side by side
     (:func:`cheapconv.block_timings` on the thinned teacher), so what it saves beyond the widths.

   The sum is the library's additive model, as at full width, except for what a conv reading one thinned group and
   writing another (a stage's shortcut) saves beyond the two widths apart; the measured-budget loop corrects the
   sum as it corrects the rest.

An option's loss at a combination is its loss at full width (the independence the library assumes everywhere:
fitting every combination would multiply the fits by up to 9).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import UsageError
from ..measure import block_timings, measure_in_runtime
from ..reconstruction import refit_readers
from ..surgery import cheapen, thin_groups, top_channels
from .family import FamilyChoice
from .group_pricing import price_groups
from .groups import DEFAULT_STRENGTHS, GroupSite, find_group_sites, group_fraction
from .library_model import KEEP, GroupWidth, Library
from .scoring import kl_and_agreement

__all__ = ["add_groups", "thin_teacher"]


def _batches(images: torch.Tensor, size: int = 64) -> Callable[[], list[torch.Tensor]]:
    return lambda: [images[i:i + size] for i in range(0, images.shape[0], size)]


def thinned_model(teacher: nn.Module, group_sites: Mapping[str, GroupSite], widths: Mapping[str, str],
                  calibration: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``teacher`` with each group of ``widths`` (group name -> ``Wg(f)``; ``keep`` left alone) thinned to
    its most important channels, and, with ``calibration`` images, every reader of them refitted to the teacher."""
    choices = [(group_sites[name].group, top_channels(teacher, group_sites[name].group, group_fraction(spec)))
               for name, spec in widths.items() if spec != KEEP]
    if not choices:
        return teacher
    model = thin_groups(teacher, choices)
    if calibration is not None:
        refit_readers(model, teacher, choices, _batches(calibration))
    return model


def _group_sites(teacher: nn.Module, library: Library, strengths: Sequence[str] | None = None
                 ) -> dict[str, GroupSite]:
    """The teacher's group sites by name, at the strengths the library's groups hold (or ``strengths``)."""
    if strengths is None:
        strengths = sorted({w.spec for g in library.groups for w in g.widths if not w.is_keep}) or DEFAULT_STRENGTHS
    return {g.name: g for g in find_group_sites(teacher, tuple(library.input_shape), strengths)}


def thin_teacher(teacher: nn.Module, library: Library, widths: Mapping[str, str],
                 calibration: torch.Tensor | None = None) -> nn.Module:
    """The teacher a selection with thinner groups is built on (:attr:`Selection.widths`): ``teacher`` with those
    groups thinned to their most important channels and, given ``calibration`` images, their readers refitted.
    ``teacher`` itself is returned where every group keeps its width, and is never changed."""
    thinned = {g: w for g, w in widths.items() if w != KEEP}
    if not thinned:
        return teacher
    sites = _group_sites(teacher, library)
    unknown = [g for g in thinned if g not in sites]
    if unknown:
        raise UsageError(f"The teacher has no channel group {', '.join(map(repr, unknown))} at the width chosen; the "
                         "library was built for another teacher or strengths. Rebuild the library for this teacher.")
    return thinned_model(teacher, sites, thinned, calibration)


def add_groups(teacher: nn.Module, library: Library, families: Sequence[FamilyChoice], *,
               calibration: torch.Tensor, held_out: torch.Tensor, teacher_scores: torch.Tensor,
               strengths: Sequence[str] = DEFAULT_STRENGTHS, runtime: str, batch: int, threads: int, fold: bool,
               device: torch.device, tick: Callable[[int, int, str], None] | None = None) -> list[str]:
    """Give ``library`` (its options fitted and timed) its group sites, each site its touched groups and every
    option its prices at their width combinations, all scored and timed as the module docstring says; returns
    notes. ``teacher`` is not changed. ``tick(done, total, what)`` is called after each group width and each
    width combination."""
    shape = tuple(library.input_shape)
    group_sites = find_group_sites(teacher, shape, strengths)
    groups, notes = price_groups(teacher, library.sites, group_sites, families, shape)
    by_name = {g.name: g for g in group_sites}
    combos = _by_combination(library)
    total = sum(len(g.widths) - 1 for g in groups) + len(combos)
    done = 0
    for group in groups:
        for width in group.widths[1:]:
            _score_and_time(teacher, group.name, width, by_name, calibration, held_out, teacher_scores, shape,
                            runtime, batch, threads, fold, device)
            done += 1
            if tick is not None:
                tick(done, total, f"group {group.name} at {width.spec}")
    for combo, priced in combos.items():
        thinned = thinned_model(teacher, by_name, dict(combo))
        for site, option, price in priced:
            price.latency_saved_ms = 0.0 if option.is_keep else _saved_beyond_widths(
                thinned, option.rule, site.name, option.spec, shape, runtime, batch, threads, fold, device, notes)
        done += 1
        if tick is not None:
            tick(done, total, ", ".join(f"{g}={w}" for g, w in combo))
    library.groups = groups
    return notes


def _by_combination(library: Library) -> dict[tuple[tuple[str, str], ...], list]:
    """Every width combination some option is priced at (its non-keep widths), and the (site, option, price) there:
    one thinned teacher serves every site and option of a combination."""
    combos: dict[tuple[tuple[str, str], ...], list] = {}
    for site in library.sites:
        for option in site.options:
            for price in option.at_widths:
                key = tuple(sorted((g, w) for g, w in price.widths.items() if w != KEEP))
                combos.setdefault(key, []).append((site, option, price))
    return combos


def _score_and_time(teacher, name: str, width: GroupWidth, by_name, calibration, held_out, teacher_scores, shape,
                    runtime, batch, threads, fold, device) -> None:
    """A thinner width of group ``name``: its loss (readers refitted) and its whole-model time saved."""
    model = thinned_model(teacher, by_name, {name: width.spec}, calibration)
    width.kl, width.agreement = kl_and_agreement(model, held_out, teacher_scores)
    if not math.isfinite(width.kl):
        raise RuntimeError(f"cheapconv bug: group {name} at {width.spec} scored a KL of {width.kl}")
    t, s = measure_in_runtime([teacher, model], (batch, *shape), runtime, device=device, threads=threads, fold=fold)
    width.latency_saved_ms = t.median_ms - s.median_ms


def _saved_beyond_widths(thinned: nn.Module, rule: str, site: str, spec: str, shape, runtime, batch, threads, fold,
                         device, notes: list[str]) -> float | None:
    """What the option saves against the layers it replaces in the thinned teacher (None: it could not be timed)."""
    with warnings.catch_warnings():     # a block at thinned widths may outgrow the thinned layer: priced as it is
        warnings.simplefilter("ignore")
        student = cheapen(thinned, rule, init="teacher", input_size=shape)
    if [(e.layer, e.block) for e in student.cheapconv_plan.replaced] != [(site, spec)]:
        return None
    timed = block_timings(student, thinned, input_shape=shape, batches=(batch,), device=device, threads=threads,
                          runtime=runtime, fold=fold, notes=notes)
    if not timed:
        return None
    return timed[0].before[batch].median_ms - timed[0].after[batch].median_ms
