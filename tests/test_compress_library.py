"""The candidate library of ``compress`` (issue 27): families, sites and options, the build (fit, score, time,
store, resume, key) and the student assembled from it."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

import cheapconv
from cheapconv.compression import FAMILIES, Family, Library, assemble, build_library
from cheapconv.compression import library as library_module
from cheapconv.compression.calibration import calibration_split
from cheapconv.compression.candidates import find_sites
from cheapconv.compression.family import resolve_families
from cheapconv.errors import UsageError

DATA = "synthetic:3x32x32:10:512"
FAMILIES_SMALL = {"grouped": "G(4)", "bottleneck": "B(2)"}
SETTINGS = dict(families=FAMILIES_SMALL, samples=64, held_out=32, progress=False)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return cheapconv.create_model("wrn_10_1", num_classes=10).eval()


@pytest.fixture(scope="module")
def data():
    return cheapconv.get_dataset(DATA, "train", augment=False)


@pytest.fixture(scope="module")
def built(teacher, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    return build_library(teacher, data, directory=folder, **SETTINGS)


def _retrained(teacher):
    """Another teacher of the same architecture (one bias moved)."""
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    return other


def _options(library: Library):
    return [(site, o) for site in library.sites for o in site.options if not o.is_keep]


# ------------------------------------------------------------------------------------------------ families

@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_family_offers_specs_of_its_level(name):
    family = FAMILIES.get(name)
    assert family.name == name and family.level in ("conv", "pair")
    specs = family.specs()
    assert specs and all(s.level == ("conv" if family.level == "conv" else "block") for s in specs)


def test_families_are_chosen_by_name_or_with_strengths():
    defaults = [f.name for f, _ in resolve_families()]
    assert defaults == sorted(defaults) and {"grouped", "low_rank", "bottleneck"} <= set(defaults)
    assert "svd" not in defaults    # not a default: it is there to be named
    chosen = resolve_families({"grouped": "G(8), G(2)", "bottleneck": None})
    assert [(f.name, [str(s) for s in specs]) for f, specs in chosen] == [("grouped", ["G(8)", "G(2)"]),
                                                                          ("bottleneck", ["B(2)", "B(4)"])]
    with pytest.raises(UsageError, match="Did you mean 'grouped'"):
        resolve_families("groupd")
    with pytest.raises(UsageError, match="block-level"):
        resolve_families({"grouped": "B(2)"})


def test_a_family_is_one_more_registry_entry(teacher):
    """A family added to the registry (as a new file would) is used with no other change."""
    FAMILIES.add("toy_pair", Family("toy_pair", "pair", ("BG(2,2)",)))
    try:
        sites, _, _ = find_sites(teacher, resolve_families(["toy_pair"]), (3, 32, 32))
        assert [s.kind for s in sites] == ["pair"] * 3
        assert all([o.spec for o in s.options] == ["keep", "BG(2,2)"] for s in sites)
        assert any(f.name == "toy_pair" for f, _ in resolve_families())   # default=True joins the defaults
    finally:
        FAMILIES.remove("toy_pair")


# ------------------------------------------------------------------------------------------------ sites

def test_sites_are_pairs_and_convs_with_keep_first(teacher):
    sites, _, totals = find_sites(teacher, resolve_families(FAMILIES_SMALL), (3, 32, 32))
    names = [s.name for s in sites]
    assert names == ["block1.0.conv1+conv2", "block1.0.conv1", "block1.0.conv2",
                     "block2.0.conv1+conv2", "block2.0.conv1", "block2.0.conv2",
                     "block3.0.conv1+conv2", "block3.0.conv1", "block3.0.conv2"]   # no stem, no 1×1 shortcut
    assert all(s.options[0].is_keep and s.options[0].rule is None for s in sites)
    pair = sites[0]
    assert pair.kind == "pair" and pair.convs == ("block1.0.conv1", "block1.0.conv2")
    assert all(c in names for c in pair.convs)    # the convs a pair-level choice excludes are sites of their own
    assert [o.rule for o in pair.options[1:]] == ["block1.0=B(2)"]
    assert [o.rule for o in sites[1].options[1:]] == ["block1.0.conv1=G(4)"]
    assert totals["params"] == cheapconv.count_params(teacher)


def test_specs_building_the_same_block_are_one_option(teacher):
    sites, _, _ = find_sites(teacher, resolve_families({"low_rank": "LRp(0.5), LRp(0.25)"}), (3, 32, 32))
    kxk = next(s for s in sites if s.name == "block3.0.conv2")   # the rank saturates: both build one block
    assert [o.spec for o in kxk.options] == ["keep", "LRp(0.5)"]
    assert any("LRp(0.25): builds the same block as LRp(0.5)" in n for n in kxk.options[0].notes)
    shortcut = next(s for s in sites if s.name == "block3.0.shortcut")   # a 1×1 conv is a low-rank site
    assert shortcut.kind == "conv" and len(shortcut.options) == 3


def test_costs_equal_counting_the_single_swap_model(teacher, built):
    shape = (1, *built.input_shape)
    base = (cheapconv.count_params(teacher), cheapconv.count_params(teacher, "paper"),
            cheapconv.count_macs(teacher, shape))
    assert (built.teacher_params, built.teacher_paper, built.teacher_macs) == base
    for site, option in _options(built):
        student = cheapconv.cheapen(teacher, option.rule, input_size=built.input_shape)
        assert [(e.layer, e.block) for e in student.cheapconv_plan.replaced] == [(site.name, option.spec)]
        got = (cheapconv.count_params(student) - base[0], cheapconv.count_params(student, "paper") - base[1],
               cheapconv.count_macs(student, shape) - base[2])
        assert got == (option.params, option.paper, option.macs), (site.name, option.spec)


# ------------------------------------------------------------------------------------------------ the build

def test_build_records_every_option(built):
    assert built.teacher_latency_ms > 0
    assert built.key["families"] == {"grouped": ["G(4)"], "bottleneck": ["B(2)"]}
    assert (built.key["samples"], built.key["held_out"], built.key["steps"]) == (64, 32, 0)
    assert len(built.key["teacher"]) == 64 and len(built.key["data"]) == 64
    for site, option in _options(built):
        assert option.weights and option.family in ("grouped", "bottleneck")
        assert 0 < option.local_error < 10 and option.kl >= 0 and 0 <= option.agreement <= 1
        assert option.latency_saved_ms is not None      # eager torch times every block alone
        state = torch.load(built.directory / option.weights, weights_only=True)
        assert state and all(k.startswith(site.convs[0] + ".") for k in state)


def test_a_dataset_name_and_no_folder(teacher, capsys):
    """A dataset's name is read as reconstruct reads it; without a folder the library is built in a new temporary
    one; a dataset smaller than asked is split with a warning; progress goes to stderr as lines in a log."""
    with pytest.warns(UserWarning, match="fits on 12 and scores on 8 others"):
        library = build_library(teacher, "synthetic:3x32x32:10:20", families="bottleneck", samples=16, held_out=8)
    assert (library.key["samples"], library.key["held_out"]) == (12, 8)
    assert library.directory.is_dir() and (library.directory / library_module.LIBRARY_FILE).is_file()
    assert [s.name for s in library.sites] == ["block1.0.conv1+conv2", "block2.0.conv1+conv2", "block3.0.conv1+conv2"]
    assert [o.spec for o in library.sites[0].options] == ["keep", "B(2)", "B(4)"]
    err = capsys.readouterr().err
    assert "Building the candidate library: 0/7 options" in err and "7/7 options (100%)" in err
    try:
        assert assemble(teacher, library, {"block3.0.conv1+conv2": "B(4)"}).cheapconv_plan.replaced
    finally:
        shutil.rmtree(library.directory)


def test_library_json_round_trips(built):
    path = built.directory / library_module.LIBRARY_FILE
    again = Library.load_json(path)
    assert again == built and again.directory == built.directory
    assert Library.from_dict(json.loads(json.dumps(built.to_dict()))) == built
    assert "directory" not in json.loads(path.read_text())


def test_a_folder_built_for_other_settings_is_refused(teacher, data, built):
    with pytest.raises(UsageError, match=r"samples: 64 there, 48 now.*another folder"):
        build_library(teacher, data, directory=built.directory, **{**SETTINGS, "samples": 48})
    other = _retrained(teacher)
    with pytest.raises(UsageError, match="the teacher's weights"):
        build_library(other, data, directory=built.directory, **SETTINGS)


def test_a_killed_build_resumes_without_refitting(teacher, data, built, tmp_path, monkeypatch):
    real = library_module.fit_and_score
    calls = []

    def dies_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[1].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(library_module, "fit_and_score", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_library(teacher, data, directory=tmp_path, **SETTINGS)
    partial = Library.load_json(tmp_path / library_module.LIBRARY_FILE)
    assert sum(o.weights is not None for _, o in _options(partial)) == 3

    resumed_calls = []
    monkeypatch.setattr(library_module, "fit_and_score",
                        lambda *a, **k: resumed_calls.append(a[1].name) or real(*a, **k))
    resumed = build_library(teacher, data, directory=tmp_path, **SETTINGS)
    assert len(resumed_calls) == len(_options(built)) - 3 and not set(resumed_calls) & set(calls)
    for (site, a), (_, b) in zip(_options(resumed), _options(built), strict=True):
        if site.name in calls:     # finished before the kill: kept as written, not refitted
            assert a == next(o for s, o in _options(partial) if s.name == site.name)
        assert (a.spec, a.rule, a.params, a.paper, a.macs, a.weights) == (b.spec, b.rule, b.params, b.paper, b.macs,
                                                                         b.weights)
        assert (a.local_error, a.kl, a.agreement) == (b.local_error, b.kl, b.agreement)
        sa = torch.load(tmp_path / a.weights, weights_only=True)
        sb = torch.load(built.directory / b.weights, weights_only=True)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_library_for_another_runtime_takes_the_fits_and_only_times(teacher, data, built, tmp_path, monkeypatch):
    def no_fitting(*args, **kwargs):
        raise AssertionError("refitted an option the donor library had fitted")

    monkeypatch.setattr(library_module, "reconstruct", no_fitting)
    monkeypatch.setattr(library_module, "score_option", no_fitting)
    other = build_library(teacher, data, directory=tmp_path, fits_from=built.directory, **{**SETTINGS, "batch": 2})
    assert other.key["batch"] == 2 and other.directory == tmp_path
    for (_, a), (_, b) in zip(_options(other), _options(built), strict=True):
        assert (a.spec, a.local_error, a.kl, a.agreement) == (b.spec, b.local_error, b.kl, b.agreement)
        assert a.latency_saved_ms is not None and any("fit and scores from" in n for n in a.notes)
        sa = torch.load(tmp_path / a.weights, weights_only=True)       # the library is whole without its donor
        sb = torch.load(built.directory / b.weights, weights_only=True)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_donor_with_fewer_families_gives_its_options_and_the_rest_are_fitted(teacher, data, built, tmp_path,
                                                                              monkeypatch):
    fitted: list[str] = []
    real = library_module.reconstruct
    monkeypatch.setattr(library_module, "reconstruct",
                        lambda student, *a, **k: fitted.append(type(student).__name__) or real(student, *a, **k))
    more = {**FAMILIES_SMALL, "grouped": "G(4), G(2)"}
    wider = build_library(teacher, data, directory=tmp_path, fits_from=built.directory, **{**SETTINGS,
                                                                                           "families": more})
    donated = {(s.name, o.spec): o for s, o in _options(built)}
    new = [(s.name, o) for s, o in _options(wider) if (s.name, o.spec) not in donated]
    assert new and all(o.spec == "G(2)" for _, o in new) and len(fitted) == len(new)
    for site, option in _options(wider):
        given = donated.get((site.name, option.spec))
        if given is not None:
            assert (option.local_error, option.kl) == (given.local_error, given.kl)
            assert any("fit and scores from" in n for n in option.notes)
        else:
            assert option.kl is not None and not any("fit and scores from" in n for n in option.notes)


def test_a_donor_fitted_under_other_settings_is_refused(teacher, data, built, tmp_path):
    with pytest.raises(UsageError, match=r"fitted under other settings.*samples: 64 there, 48 now"):
        build_library(teacher, data, directory=tmp_path, fits_from=built.directory, **{**SETTINGS, "samples": 48})
    with pytest.raises(UsageError, match="no candidate library"):
        build_library(teacher, data, directory=tmp_path / "b", fits_from=tmp_path / "nowhere", **SETTINGS)


# ------------------------------------------------------------------------------------------------ assemble

def test_a_keep_only_choice_is_the_teacher(teacher, built):
    x = torch.randn(4, 3, 32, 32)
    for choice in ({}, {"block1.0.conv1+conv2": "keep", "block2.0.conv1": "S"}):
        student = assemble(teacher, built, choice).eval()
        assert not student.cheapconv_plan.replaced
        with torch.no_grad():
            assert torch.equal(student(x), teacher(x))


@pytest.mark.parametrize("site,spec", [("block2.0.conv1+conv2", "B(2)"), ("block3.0.conv2", "G(4)")])
def test_a_one_site_choice_is_that_options_single_swap_model(teacher, data, built, site, spec):
    """The single-swap model rebuilt as the library built it (same split, same fit) gives the same outputs, bit for
    bit, as the student assembled from the library's saved weights."""
    option = built.site(site).option(spec)
    calibration, _ = calibration_split(data, teacher, samples=64, held_out=32, seed=0)
    single = cheapconv.cheapen(teacher, option.rule, init="teacher", input_size=built.input_shape)
    cheapconv.reconstruct(single, teacher, calibration, samples=64, steps=0, progress=False, seed=0)
    student = assemble(teacher, built, {site: spec})
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), single.eval()(x))
        assert not torch.equal(student(x), teacher(x))


def test_several_sites_assemble_into_one_student(teacher, built):
    choice = {"block1.0.conv1+conv2": "B(2)", "block2.0.conv2": "G(4)", "block3.0.conv1": "G(4)"}
    student = assemble(teacher, built, choice)
    assert {e.layer: e.block for e in student.cheapconv_plan.replaced} == choice
    expected = built.teacher_params + sum(built.site(s).option(spec).params for s, spec in choice.items())
    assert cheapconv.count_params(student) == expected


def test_conflicting_or_unknown_choices_are_refused(teacher, built):
    with pytest.raises(UsageError, match="replaces the whole pair"):
        assemble(teacher, built, {"block2.0.conv1+conv2": "B(2)", "block2.0.conv2": "G(4)"})
    with pytest.raises(UsageError, match="has no site"):
        assemble(teacher, built, {"block9.conv1": "G(4)"})
    with pytest.raises(UsageError, match="has no option B\\(4\\)"):
        assemble(teacher, built, {"block2.0.conv1+conv2": "B(4)"})
    other = _retrained(teacher)
    with pytest.raises(UsageError, match="not the one the library was built for"):
        assemble(other, built, {})


# ------------------------------------------------------------------------------------------------ another family

@pytest.mark.slow
def test_efficientnet_lite0_low_rank_library(tmp_path):
    """A real timm family (fused BatchNorm+activation, depthwise convs): low_rank's sites are its 1×1 convs."""
    torch.manual_seed(0)
    teacher = cheapconv.create_model("timm:tf_efficientnet_lite0", num_classes=10).eval()
    images = torch.randn(48, 3, 64, 64)
    library = build_library(teacher, images, families={"low_rank": "LRp(0.25)"}, samples=32, held_out=16,
                            directory=tmp_path, progress=False)
    assert library.sites and {s.kind for s in library.sites} == {"conv"}
    assert all(teacher.get_submodule(s.convs[0]).kernel_size == (1, 1) for s in library.sites)
    assert all(o.weights and o.local_error < 1.5 for _, o in _options(library))
    choice = {s.name: "LRp(0.25)" for s in library.sites[-2:]}
    student = assemble(teacher, library, choice)
    assert {e.layer for e in student.cheapconv_plan.replaced} == set(choice)
    with torch.no_grad():
        assert student.eval()(images[:2]).shape == (2, 10)


def test_the_build_estimate_is_measured_and_keeps_nothing(teacher, data, built, tmp_path, monkeypatch):
    from cheapconv.compression import estimate_build

    fresh = estimate_build(teacher, data, **{k: v for k, v in SETTINGS.items() if k != "progress"})
    assert fresh.options == fresh.left == len(_options(built)) and fresh.seconds_per_option > 0
    assert "measured now on" in fresh.basis and "nothing kept" in fresh.basis
    # a folder holding finished options: their recorded seconds, and nothing built now
    monkeypatch.setattr(library_module, "fit_and_score", lambda *a, **k: pytest.fail("built an option"))
    from cheapconv.compression import estimate as estimate_module

    monkeypatch.setattr(estimate_module, "fit_and_score", lambda *a, **k: pytest.fail("built an option"))
    resumed = estimate_build(teacher, data, directory=built.directory,
                             **{k: v for k, v in SETTINGS.items() if k != "progress"})
    seconds = [o.seconds for _, o in _options(built)]
    assert resumed.left == 0 and resumed.seconds_per_option == pytest.approx(sum(seconds) / len(seconds))
    assert sorted(p.name for p in built.directory.iterdir()) == ["library.json", "weights"]
