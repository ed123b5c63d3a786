"""Coupled widths in the exact selection (issue 31 item 2): one width per group site, each touching site priced at
the width combination its groups chose. The integer program against brute force on random libraries, exactness
of the predicted figures, the JSON round trip of a library with groups, and libraries the program refuses."""

from __future__ import annotations

import itertools
import random

import pytest

from cheapconv.compression import KEEP, Library, LibrarySite, SiteOption, select
from cheapconv.compression.library_model import GroupWidth, LibraryGroup, WidthPrice
from cheapconv.errors import UsageError

METRICS = {"latency": lambda p: -p.latency_saved_ms, "params": lambda p: p.paper, "macs": lambda p: p.macs}
TEACHER = {"latency": 3.0, "params": 20500, "macs": 500000}


def price(rng: random.Random, widths: dict[str, str]) -> WidthPrice:
    paper = rng.randint(-3000, 200)
    return WidthPrice(dict(widths), params=paper, paper=paper, macs=rng.randint(-90000, 1000),
                      latency_saved_ms=rng.uniform(-0.05, 0.5))


def random_library(seed: int) -> Library:
    """Two groups (``s1``: keep, Wg(0.75), Wg(0.5); ``s2``: keep, Wg(0.5)); a pair ``b`` reading s1 and writing s2
    whose convs are sites too (conv1 touches s1, conv2 s2); a conv ``c`` touching both; a conv ``d`` touching
    none. Options are priced at a random subset of their width combinations (keep at all of them)."""
    rng = random.Random(seed)
    groups = [LibraryGroup("s1", 32, widths=[GroupWidth(KEEP, 32)] + [
                  GroupWidth(spec, kept, params=-rng.randint(0, 800), paper=-rng.randint(0, 900),
                             macs=-rng.randint(0, 20000), latency_saved_ms=rng.uniform(0.0, 0.3),
                             kl=rng.uniform(0.0, 0.1)) for spec, kept in (("Wg(0.75)", 24), ("Wg(0.5)", 16))]),
              LibraryGroup("s2", 64, widths=[GroupWidth(KEEP, 64),
                                             GroupWidth("Wg(0.5)", 32, params=-500, paper=-520, macs=-10000,
                                                        latency_saved_ms=rng.uniform(0.0, 0.3),
                                                        kl=rng.uniform(0.0, 0.1))])]
    by_name = {g.name: g for g in groups}

    def options(name: str, rule_name: str, specs: list[str], touches: tuple[str, ...]) -> list[SiteOption]:
        combos = [dict(zip(touches, ws, strict=True))
                  for ws in itertools.product(*[[w.spec for w in by_name[t].widths] for t in touches])]
        out = []
        for spec in [KEEP, *rng.sample(specs, rng.randint(1, len(specs)))]:
            own = price(rng, {t: KEEP for t in touches}) if spec != KEEP else WidthPrice({})
            opt = SiteOption(spec, None if spec == KEEP else f"{rule_name}={spec}", params=own.params,
                             paper=own.paper, macs=own.macs, latency_saved_ms=own.latency_saved_ms,
                             kl=0.0 if spec == KEEP else rng.uniform(0.001, 0.2), family=spec.split("(")[0])
            for combo in combos:
                if all(w == KEEP for w in combo.values()):
                    continue
                if spec == KEEP or rng.random() < 0.7:       # keep is priced everywhere, the others mostly
                    opt.at_widths.append(price(rng, combo))
            out.append(opt)
        return out

    conv = ["G(2)", "G(4)", "LRp(0.5)"]
    sites = [LibrarySite("b.conv1", "conv", ("b.conv1",), options=options("b.conv1", "b.conv1", conv, ("s1",)),
                         touches=("s1",)),
             LibrarySite("b.conv1+conv2", "pair", ("b.conv1", "b.conv2"),
                         options=options("b", "b", ["B(2)", "B(4)"], ("s1", "s2")), touches=("s1", "s2")),
             LibrarySite("b.conv2", "conv", ("b.conv2",), options=options("b.conv2", "b.conv2", conv, ("s2",)),
                         touches=("s2",)),
             LibrarySite("c", "conv", ("c",), options=options("c", "c", conv, ("s1", "s2")), touches=("s1", "s2")),
             LibrarySite("d", "conv", ("d",), options=options("d", "d", conv, ()))]
    return Library(key={"seed": seed}, sites=sites, teacher_latency_ms=TEACHER["latency"], teacher_params=20000,
                   teacher_paper=TEACHER["params"], teacher_macs=TEACHER["macs"], groups=groups)


def students(lib: Library):
    """Every buildable student: (group widths, site -> option, the prices paid: the groups' widths and each
    site's option at those widths)."""
    for widths in itertools.product(*lib.groups and [g.widths for g in lib.groups]):
        chosen_widths = {g.name: w.spec for g, w in zip(lib.groups, widths, strict=True)}
        for opts in itertools.product(*[s.options for s in lib.sites]):
            chosen = {s.name: o for s, o in zip(lib.sites, opts, strict=True)}
            if not chosen["b.conv1+conv2"].is_keep and not (chosen["b.conv1"].is_keep and chosen["b.conv2"].is_keep):
                continue
            prices = [o.priced({t: chosen_widths[t] for t in s.touches}) for s, o in zip(lib.sites, opts,
                                                                                        strict=True)]
            if None in prices:
                continue
            yield chosen_widths, chosen, list(widths) + prices


def brute_force(lib: Library, metric: str, budget: float):
    """(the lowest loss of a student within ``budget``, the smallest figure any student reaches)."""
    best, lowest = None, None
    for widths, chosen, prices in students(lib):
        value = TEACHER[metric] + sum(METRICS[metric](p) for p in prices)
        lowest = value if lowest is None else min(lowest, value)
        if value <= budget:
            loss = sum(o.kl for o in chosen.values()) + sum(lib.group(g).width(w).kl for g, w in widths.items())
            best = loss if best is None else min(best, loss)
    return best, lowest


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["latency", "params", "macs"])
def test_the_program_with_groups_matches_brute_force(seed, metric):
    lib = random_library(seed)
    _, lowest = brute_force(lib, metric, float("inf"))
    for share in (0.0, 0.3, 0.6, 1.0):
        budget = lowest + share * (TEACHER[metric] - lowest) + (1e-6 if metric == "latency" else 1)
        expected, _ = brute_force(lib, metric, budget)
        sel = select(lib, budget, metric=metric)
        assert sel.optimal and sel.predicted_loss == pytest.approx(expected, abs=1e-9)
        # the predicted figures are the chosen options' prices at the chosen widths, plus the widths' own
        widths, prices = sel.widths, [lib.group(g).width(w) for g, w in sel.widths.items()]
        for s in lib.sites:
            p = sel.options[s.name].priced({t: widths[t] for t in s.touches})
            assert p is not None, f"{s.name}={sel.choices[s.name]} has no price at {widths}"
            prices.append(p)
        assert sel.predicted(metric) == pytest.approx(TEACHER[metric] + sum(METRICS[metric](p) for p in prices))
        assert sel.predicted(metric) <= budget + 1e-9
        assert sel.predicted_paper == TEACHER["params"] + sum(p.paper for p in prices)
        assert sel.predicted_macs == TEACHER["macs"] + sum(p.macs for p in prices)


def test_a_group_is_thinned_only_where_every_touching_site_has_a_price_at_that_width():
    """One group whose thinner width saves most; the only option of the one site touching it has no price there,
    so thinning the group forces that site to keep."""
    group = LibraryGroup("s", 16, widths=[GroupWidth(KEEP, 16), GroupWidth("Wg(0.5)", 8, latency_saved_ms=1.0,
                                                                            kl=0.05)])
    keep = SiteOption(KEEP, None, at_widths=[WidthPrice({"s": "Wg(0.5)"}, latency_saved_ms=0.2)])
    g4 = SiteOption("G(4)", "a=G(4)", latency_saved_ms=0.5, kl=0.01)        # priced at the group's keep only
    lib = Library(key={}, sites=[LibrarySite("a", "conv", ("a",), options=[keep, g4], touches=("s",))],
                  teacher_latency_ms=3.0, groups=[group])
    sel = select(lib, 2.5)            # 0.5 ms: G(4) alone (loss 0.01) beats the group (1.2 ms, loss 0.05)
    assert sel.choices == {"a": "G(4)"} and sel.widths == {"s": KEEP} and sel.thinned == {}
    sel = select(lib, 2.0)            # 1 ms: only the thinner group reaches it, and the site keeps at that width
    assert sel.choices == {"a": KEEP} and sel.thinned == {"s": "Wg(0.5)"}
    assert sel.predicted_latency_ms == pytest.approx(3.0 - 1.0 - 0.2)
    assert sel.predicted_loss == pytest.approx(0.05)
    text = " ".join(str(sel).split())            # the table's title wraps
    assert "1 of 1 groups thinner" in text
    assert "│ group s │ Wg(0.5) │ +1.000 │" in text             # the width's own figures
    assert "│ a │ keep at s=Wg(0.5) │ +0.200 │" in text         # and the site kept at that width


def test_a_library_with_groups_round_trips_through_json(tmp_path):
    lib = random_library(0)
    lib.save_json(tmp_path / "library.json")
    again = Library.load_json(tmp_path / "library.json")
    again.directory = None
    assert again == lib
    assert select(again, "70%").choices == select(lib, "70%").choices


def test_a_library_without_groups_reads_as_before():
    data = random_library(1).to_dict()
    del data["groups"]
    for site in data["sites"]:
        del site["touches"]
        for opt in site["options"]:
            del opt["at_widths"]
    lib = Library.from_dict(data)
    assert lib.groups == [] and all(s.touches == () for s in lib.sites)
    assert select(lib, "80%").widths == {}


def test_a_site_touching_a_group_the_library_does_not_list_is_refused():
    lib = random_library(2)
    lib.sites[0].touches = ("nowhere",)
    with pytest.raises(UsageError, match="touches nowhere"):
        select(lib, "80%")
    lib = random_library(2)
    lib.groups[0].widths = lib.groups[0].widths[1:]
    with pytest.raises(UsageError, match="no 'keep' width first"):
        select(lib, "80%")
