"""Pricing coupled widths (issue 31 item 2): the group sites of a real WRN and its options at every width
combination, checked against students actually built (the teacher thinned to the chosen widths, then cheapened with
the chosen options) and counted by ``count_params`` (both conventions) and ``count_macs``."""

from __future__ import annotations

import random

import pytest
import torch

import cheapconv
from cheapconv import count_macs, count_params
from cheapconv.compression import KEEP, Library, select
from cheapconv.compression.candidates import find_sites
from cheapconv.compression.family import resolve_families
from cheapconv.compression.group_pricing import price_groups
from cheapconv.compression.groups import find_group_sites
from cheapconv.models.zoo import create_model
from cheapconv.surgery import thin_groups

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def priced():
    teacher = create_model("wrn_16_1", num_classes=10).eval()
    families = resolve_families(None)
    sites, _, totals = find_sites(teacher, families, SHAPE)
    group_sites = find_group_sites(teacher, SHAPE)
    groups, notes = price_groups(teacher, sites, group_sites, families, SHAPE)
    library = Library(key={}, sites=sites, teacher_params=totals["params"], teacher_paper=totals["paper"],
                      teacher_macs=totals["macs"], groups=groups, input_shape=SHAPE)
    return teacher, library, {g.name: g for g in group_sites}, notes


def build(teacher, group_sites, widths: dict[str, str], policy: str):
    """The student a selection describes: the teacher thinned to ``widths``, then cheapened with ``policy``."""
    thinned = {g: w for g, w in widths.items() if w != KEEP}
    model = thin_groups(teacher, [(group_sites[g].group, torch.arange(group_sites[g].option(w).kept))
                                  for g, w in thinned.items()]) if thinned else teacher
    return cheapconv.cheapen(model, policy) if policy != KEEP else model


def counts(model) -> tuple[int, int, int]:
    return count_params(model), count_params(model, "paper"), count_macs(model, (1, *SHAPE))


def test_every_stream_of_a_wrn_is_a_group_site_and_every_site_touches_its_streams(priced):
    _, library, _, notes = priced
    assert notes == []
    # WRN-16-1's first stage keeps the stem's 16 channels (no shortcut conv), so the stem and that stream are one
    stream1, stream2, stream3 = "conv1 (+2 writers)", "block2.0.conv2 (+2 writers)", "block3.0.conv2 (+2 writers)"
    assert [g.name for g in library.groups] == [stream1, stream2, stream3]
    touches = {s.name: s.touches for s in library.sites}
    # a stage's first pair reads the previous stream and writes its own; its shortcut too; later pairs one stream
    assert touches["block2.0.conv1+conv2"] == (stream1, stream2) == touches["block2.0.shortcut"]
    assert touches["block2.0.conv1"] == (stream1,) and touches["block2.0.conv2"] == (stream2,)
    assert touches["block3.1.conv1+conv2"] == (stream3,)
    assert touches["block1.0.conv1"] == (stream1,)
    # keep is priced at every combination: 2 thinner widths per group, so 2 or 8 combinations besides all-keep
    assert all(len(s.options[0].at_widths) == 3 ** len(s.touches) - 1 for s in library.sites)


@pytest.mark.parametrize("seed", range(6))
def test_any_student_of_the_library_costs_exactly_what_its_prices_add_up_to(priced, seed):
    """Random widths per group, then a random option per site among those priced at its widths (a pair built as
    one block or conv by conv): the built student's counts equal the teacher's plus the prices, in every figure."""
    teacher, library, group_sites, _ = priced
    rng = random.Random(seed)
    widths = {g.name: rng.choice(g.widths).spec for g in library.groups}
    forced = rng.choice(library.groups)                  # at least one group thinner
    widths[forced.name] = rng.choice(forced.widths[1:]).spec
    chosen, prices, kept_convs = {}, [library.group(g).width(w) for g, w in widths.items()], set()
    for site in library.sites:                           # a pair comes before its convs
        at = {t: widths[t] for t in site.touches}
        options = [site.options[0]] if site.name in kept_convs else [o for o in site.options if o.priced(at)]
        option = rng.choice(options)
        if site.kind == "pair" and not option.is_keep:
            kept_convs.update(site.convs)
        chosen[site.name] = option
        prices.append(option.priced(at))
    policy = "\n".join(o.rule for o in chosen.values() if not o.is_keep) or KEEP
    student = build(teacher, group_sites, widths, policy)
    expected = (library.teacher_params + sum(p.params for p in prices),
                library.teacher_paper + sum(p.paper for p in prices),
                library.teacher_macs + sum(p.macs for p in prices))
    assert counts(student) == expected


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_a_selection_with_thinner_groups_predicts_its_student_exactly(priced, metric):
    teacher, library, group_sites, _ = priced
    rng = random.Random(1)
    for site in library.sites:                      # losses as a scored library would have them
        for option in site.options[1:]:
            option.kl = rng.uniform(0.01, 0.2)
    for group in library.groups:
        for width in group.widths[1:]:
            width.kl = rng.uniform(0.0, 0.01)
    thinned = 0
    for budget in ("70%", "45%", "30%"):
        sel = select(library, budget, metric=metric)
        thinned += bool(sel.thinned)
        student = build(teacher, group_sites, sel.widths, sel.policy())
        assert counts(student) == (sel.predicted_params, sel.predicted_paper, sel.predicted_macs)
    assert thinned


def test_a_latency_budget_cannot_thin_a_group_before_it_is_timed(priced):
    _, library, _, _ = priced
    timed = Library(key={}, sites=library.sites, teacher_latency_ms=3.0, groups=library.groups)
    for site in timed.sites:
        for option in site.options[1:]:
            option.latency_saved_ms = 0.1
    sel = select(timed, "90%")
    assert sel.thinned == {}
    assert any("no price" in n for n in sel.notes)
