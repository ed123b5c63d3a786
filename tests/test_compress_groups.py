"""``compress`` with coupled widths end to end, tiny (issue 31 item 2): a library with group sites (scored,
timed), a selection that thins a stage's stream, the student built on the thinned teacher with its readers refitted,
reconstructed and counted exactly; from Python and from the command line. No timing assertions."""

from __future__ import annotations

import json

import pytest
import torch

import cheapconv
from cheapconv.compression import KEEP, Library, select
from cheapconv.compression.group_library import thin_teacher
from cheapconv.data import get_dataset
from cheapconv_cli.main import main

pytest.importorskip("scipy")

DATA = "synthetic:3x32x32:10:256"
SMALL = {"samples": 64, "held_out": 32, "families": ["grouped", "bottleneck"], "reconstruct_samples": 64,
         "progress": False}
WIDTHS = ["Wg(0.75)", "Wg(0.5)"]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return cheapconv.create_model("wrn_10_1").eval()


@pytest.fixture(scope="module")
def built(teacher, tmp_path_factory):
    """One compress run under a MACs budget low enough to need a thinner stream, with its library."""
    folder = tmp_path_factory.mktemp("groups")
    data = get_dataset(DATA, "train", augment=False)
    result = cheapconv.compress(teacher, data, "35%", metric="macs", library=folder / "lib", epochs=0,
                                groups=WIDTHS, **SMALL)
    return result, folder / "lib", data


def test_the_library_holds_scored_and_timed_group_widths(built):
    result, folder, _ = built
    lib = Library.load_json(folder / "library.json")
    assert lib.key["groups"] == WIDTHS and lib.groups
    for group in lib.groups:
        assert [w.spec for w in group.widths][0] == KEEP
        for width in group.widths[1:]:
            assert width.kl >= 0 and 0 <= width.agreement <= 1 and width.latency_saved_ms is not None
    touching = [s for s in lib.sites if s.touches]
    assert touching and all(p.latency_saved_ms is not None for s in touching for o in s.options for p in o.at_widths)


def test_a_selection_that_thins_a_group_builds_exactly_the_student_it_predicts(built, teacher):
    result, _, _ = built
    sel = result.selection
    assert sel.thinned, "35 % of the MACs should need a thinner stream"
    counts = result.counts["student"]
    assert (counts["params"], counts["paper"], counts["macs"]) == \
        (sel.predicted_params, sel.predicted_paper, sel.predicted_macs)
    assert any("thinner channel groups" in n for n in result.notes)
    # the student runs and is not the teacher thinned at random: reconstruction fitted it
    x = torch.randn(2, 3, 32, 32)
    assert result.student(x).shape == (2, 10)
    assert result.reconstruction is not None and result.reconstruction.sites


def test_the_thinned_teacher_refits_its_readers(built, teacher):
    result, folder, data = built
    lib = Library.load_json(folder / "library.json")
    widths = {lib.groups[-1].name: "Wg(0.5)"}
    images = torch.stack([data[i][0] for i in range(64)])
    plain, refitted = thin_teacher(teacher, lib, widths), thin_teacher(teacher, lib, widths, images)
    with torch.no_grad():
        target = teacher(images)
        err_plain = (plain(images) - target).pow(2).mean()
        err_refit = (refitted(images) - target).pow(2).mean()
    assert err_refit < err_plain
    assert thin_teacher(teacher, lib, {lib.groups[0].name: KEEP}) is teacher


def test_without_groups_the_library_key_is_unchanged(built, teacher, tmp_path):
    data = get_dataset(DATA, "train", augment=False)
    lib = cheapconv.compression.build_library(teacher, data, directory=tmp_path / "plain", samples=64, held_out=32,
                                              families=["grouped"], progress=False)
    assert "groups" not in lib.key and lib.groups == []
    assert select(lib, "60%", metric="macs").widths == {}


def test_cli_compress_with_groups(teacher, built, tmp_path, capsys):
    _, folder, _ = built
    cheapconv.save(teacher, tmp_path / "t.pt")
    code = main([str(a) for a in ("compress", tmp_path / "t.pt", "--data", DATA, "--budget", "35%", "--metric",
                                  "macs", "--epochs", "0", "--samples", "64", "--held-out", "32", "--families",
                                  "grouped,bottleneck", "--groups", ",".join(WIDTHS), "--library", folder,
                                  "-o", tmp_path / "s.pt", "--no-front")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = " ".join(captured.out.split())       # the table's title wraps
    assert "1 of 2 groups thinner" in out or "2 of 2 groups thinner" in out
    student = cheapconv.load(tmp_path / "s.pt")
    assert cheapconv.count_macs(student, (1, 3, 32, 32)) <= 0.35 * cheapconv.count_macs(teacher, (1, 3, 32, 32))
    code = main([str(a) for a in ("compress", tmp_path / "t.pt", "--data", DATA, "--budget", "35%", "--groups",
                                  "Wg(2)", "-o", tmp_path / "x.pt")])
    assert code == 2 and "Wg(f) with 0 < f <= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert json.loads((folder / "library.json").read_text())["groups"]


def test_a_library_with_groups_takes_its_fits_from_one_without(teacher, tmp_path):
    data = get_dataset(DATA, "train", augment=False)
    settings = {"samples": 64, "held_out": 32, "families": ["grouped"], "progress": False}
    plain = cheapconv.compression.build_library(teacher, data, directory=tmp_path / "plain", **settings)
    coupled = cheapconv.compression.build_library(teacher, data, directory=tmp_path / "coupled", groups=WIDTHS,
                                                  fits_from=tmp_path / "plain", **settings)
    assert coupled.groups and not plain.groups
    for site in coupled.sites:
        for option in site.options[1:]:
            assert option.kl == plain.site(site.name).option(option.spec).kl      # the donor's fit and score
            assert any(n.startswith("fit and scores from") for n in option.notes)
