"""``@m`` and ``--round``: block inner widths rounded to multiples where int8 and tensor-core kernels want them
(issue 29). Exact counts, the notation's round trip, teacher initialisation and every entry point."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cheapconv
from cheapconv.blocks import parse_block, rounded
from cheapconv.errors import PolicySyntaxError, UsageError
from cheapconv_cli.main import main

ROUNDING = ["B(2)@8", "BG(2,M)@16", "BG(2,M/4)@8", "G(4)@16", "G(N/8)@8", "LR(0.3)@8", "LRp(0.5)@16",
            "Tucker2(0.5)@8", "SVDk(0.5)@8", "W(0.5)@8"]


@pytest.mark.parametrize("text", ROUNDING)
def test_the_notation_round_trips(text):
    spec = parse_block(text)
    assert str(spec) == text and parse_block(str(spec)) == spec and spec.multiple == int(text.rsplit("@")[1])
    assert parse_block(text.split("@")[0]).multiple == 1


@pytest.mark.parametrize("text, message", [("S@8", "no inner width"), ("ACDC(2)@8", "no inner width"),
                                           ("B(2)@1", "changes nothing"), ("B(2)@x", "positive integer"),
                                           ("B(2)@", "positive integer"), ("B(2)@８", "ASCII")])
def test_bad_rounding_is_a_syntax_error(text, message):
    with pytest.raises(PolicySyntaxError, match=message):
        parse_block(text)


def _conv(cin, cout, k=3):
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)


def test_widths_round_to_the_nearest_multiple_within_the_full_width():
    pointwise = _conv(40, 40, k=1)                                      # LRp(0.5): rank 0.5·1600 / 80 = 10
    assert [parse_block(f"LRp(0.5){m}").rank(pointwise) for m in ("", "@8", "@16")] == [10, 8, 16]
    assert parse_block("LRp(0.7)@16").rank(pointwise) == 16             # 14 -> 16
    assert parse_block("LRp(0.9)@16").rank(pointwise) == 16             # 18 -> 16
    assert parse_block("LRp(1)@8").rank(pointwise) == 24                # 20 -> 24 (halves up)
    assert parse_block("LRp(0.25)@16").rank(_conv(64, 64)) == 64        # k×k: full rank 64 caps it (67 asked)
    assert parse_block("B(2)@16").mid_channels(_conv(40, 40)) == 16     # 20 -> 16 (nearest), B(2): 20
    assert parse_block("B(2)@8").mid_channels(_conv(40, 40)) == 24      # 20 -> 24 (halves up)
    assert parse_block("B(2)@16").mid_channels(_conv(8, 8)) == 8        # narrower than one multiple: full width
    assert parse_block("G(4)@16").group_count(32) == 2                  # 8 per group -> 16 per group
    assert parse_block("G(4)@16").group_count(48) == 3                  # 12 -> 16 per group, 3 groups divide 48
    assert parse_block("G(N)@16").group_count(32) == 32                 # depthwise stays depthwise
    assert parse_block("G(2)@16").group_count(40) == 1                  # no multiple of 16 divides 40 below it
    assert parse_block("Tucker2(0.5)@8").ranks(_conv(40, 40)) == tuple(
        min(40, max(8, (r + 4) // 8 * 8)) for r in parse_block("Tucker2(0.5)").ranks(_conv(40, 40)))


@pytest.mark.parametrize("spec", ["LRp(0.5)@8", "B(2)@16", "G(4)@16", "Tucker2(0.5)@8", "BG(2,M)@16", "W(0.5)@8"])
def test_counts_are_exact_against_flop_counter(spec):
    torch.manual_seed(0)
    model = cheapconv.create_model("wrn_16_2").eval()
    student = cheapconv.cheapen(model, spec)
    with FlopCounterMode(display=False) as flops:
        student(torch.randn(1, 3, 32, 32))
    assert cheapconv.count_macs(student, (1, 3, 32, 32)) == flops.get_total_flops() // 2
    assert cheapconv.count_params(student, "trainable") == sum(p.numel() for p in student.parameters())
    assert all(e.block == spec for e in student.cheapconv_plan.replaced)


def test_round_to_is_the_suffix_and_survives_save_and_load(tmp_path):
    model = cheapconv.create_model("wrn_10_1").eval()
    a = cheapconv.cheapen(model, "block3.*=B(2); LRp(0.5)", round_to=16)
    b = cheapconv.cheapen(model, "block3.*=B(2)@16; LRp(0.5)@16")
    assert [e.block for e in a.cheapconv_plan.replaced] == [e.block for e in b.cheapconv_plan.replaced]
    assert cheapconv.count_params(a, "paper") == cheapconv.count_params(b, "paper")
    assert cheapconv.count_params(a, "paper") != cheapconv.count_params(cheapconv.cheapen(model, "LRp(0.5)"),
                                                                         "paper")
    # an explicit @m is kept; blocks without an inner width are left alone
    c = cheapconv.cheapen(model, "block1.*=LRp(0.5)@8; S", round_to=16)
    assert {e.block for e in c.cheapconv_plan.replaced} == {"LRp(0.5)@8"}
    cheapconv.save(a, tmp_path / "s.pt")
    again = cheapconv.load(tmp_path / "s.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(again(x), a(x))
    with pytest.raises(UsageError, match="from 2 to 1024"):
        cheapconv.cheapen(model, "B(2)", round_to=1)
    assert rounded(parse_block("S"), 8) == parse_block("S")


def test_teacher_init_is_exact_where_rounding_reaches_full_rank():
    torch.manual_seed(0)
    model = cheapconv.create_model("wrn_10_1").eval()
    x = torch.randn(2, 3, 32, 32)
    # the 16→32 1×1 shortcut: LRp(1) keeps rank 512 / 48 = 10 (not exact); @16 rounds it to full rank 16 (exact)
    plain = cheapconv.cheapen(model, "block2.0.shortcut=LRp(1); S", init="teacher").eval()
    full = cheapconv.cheapen(model, "block2.0.shortcut=LRp(1)@16; S", init="teacher").eval()
    assert not torch.allclose(plain(x), model(x), atol=1e-4, rtol=1e-4)
    assert torch.allclose(full(x), model(x), atol=1e-4, rtol=1e-4)


def test_the_cli_rounds_cheapen_and_compress_dry_run(tmp_path, capsys):
    code = main(["cheapen", "wrn_10_1", "--block", "B(2)", "--round", "16", "-o", str(tmp_path / "s.pt")])
    out = capsys.readouterr()
    assert code == 0, out.err
    student = cheapconv.load(tmp_path / "s.pt")
    assert {e.block for e in student.cheapconv_plan.replaced} == {"B(2)@16"}
    assert main(["cheapen", "wrn_10_1", "--block", "B(2)", "--round", "1", "--dry-run"]) == 2
    assert "from 2 to 1024" in " ".join(capsys.readouterr().err.split())
    pytest.importorskip("scipy")
    assert main(["compress", "wrn_10_1", "--data", "synthetic:3x32x32:10:64", "--budget", "50%", "--dry-run",
                 "--families", "bottleneck", "--round", "8"]) == 0
    assert "B(2)@8" in capsys.readouterr().out


def test_search_and_the_compress_library_take_round_to(tmp_path):
    pytest.importorskip("scipy")
    found = cheapconv.search("wrn_10_1", "60%", candidates="S, B(2), B(4)", samples=4, spread_runs=1, top=2,
                             tolerance=0.5,
                             round_to=16)
    assert all(rule.endswith("@16") or rule.endswith("=S") for rule in found.winner.rules)
    data = cheapconv.get_dataset("synthetic:3x32x32:10:96", "train", augment=False)
    library = cheapconv.build_library(cheapconv.create_model("wrn_10_1").eval(), data, families="bottleneck",
                                      samples=32, held_out=16, progress=False, directory=tmp_path, round_to=8)
    assert library.key["families"]["bottleneck"] == ["B(2)@8", "B(4)@8"]
    assert {o.spec for s in library.sites for o in s.options} == {"keep", "B(2)@8", "B(4)@8"}
