"""``W(f)``, the thinner residual pair (issue 31 item 1): notation, exact costs, the teacher's pair at f = 1,
channels kept by importance, conv_b refitted by least squares, and the places that take block specs (plan,
search, the compress family, save/load, ``cheapconv blocks``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cheapconv
from cheapconv.blocks import Thin, ThinSpec, kept_channels, parse_block
from cheapconv.blockswap import SearchSpace
from cheapconv.compression.candidates import find_sites
from cheapconv.compression.family import resolve_families
from cheapconv.errors import PolicySyntaxError
from cheapconv.surgery.block_init import channel_importance
from cheapconv_cli.main import main


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as a trained teacher has."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def wrn():
    torch.manual_seed(0)
    return _randomise_norms(cheapconv.create_model("wrn_16_2", num_classes=10))


# ------------------------------------------------------------------------------------------------ notation

@pytest.mark.parametrize("f,channels,kept", [(0.5, 33, 17), (0.5, 32, 16), (0.1, 30, 3), (0.75, 10, 8),
                                             (0.25, 10, 3), (0.001, 16, 1), (1.0, 7, 7), (0.35, 10, 4)])
def test_kept_channels_round_half_up_at_least_one(f, channels, kept):
    assert kept_channels(f, channels) == kept


@pytest.mark.parametrize("text", ["W(0.5)", "W(1)", "W(0.25)", "W(0.333333333)"])
def test_notation_round_trip(text):
    spec = parse_block(text)
    assert isinstance(spec, ThinSpec) and spec.level == "block"
    assert parse_block(str(spec)) == spec


@pytest.mark.parametrize("text,fragment", [("W(0)", "in (0, 1]"), ("W(1.5)", "in (0, 1]"), ("W", "W takes 1"),
                                           ("W(x)", "must be a number")])
def test_bad_fractions_are_syntax_errors(text, fragment):
    with pytest.raises(PolicySyntaxError, match=fragment.replace("(", r"\(").replace("]", r"\]")):
        parse_block(text)


# ------------------------------------------------------------------------------------------------ costs

def _flop_counter_macs(model, shape):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        copy.deepcopy(model).eval()(torch.zeros(shape))
    return counter.get_total_flops() // 2


def test_params_and_macs_are_exact(wrn):
    """Each pair's priced cost is the hand count m·(C_in + C_out)·k² + BN(m), and the student's totals agree with
    the plan and with torch's FlopCounterMode."""
    plan = cheapconv.plan(wrn, "W(0.5)")
    pairs = plan.replaced
    assert len(pairs) == 6 and all(e.block == "W(0.5)" for e in pairs)
    for entry in pairs:
        a, b = (wrn.get_submodule(n) for n in entry.convs)
        m = kept_channels(0.5, a.out_channels)
        assert entry.params_after == m * a.in_channels * 9 + 2 * m + b.out_channels * m * 9
        assert entry.paper_after == entry.params_after + 2 * m          # the BN's running statistics
    stride = {"block1": 1, "block2": 2, "block3": 4}
    for entry in pairs:
        a, b = (wrn.get_submodule(n) for n in entry.convs)
        side = 32 // stride[entry.layer.split(".")[0]]
        m = kept_channels(0.5, a.out_channels)
        assert entry.macs_after == (m * a.in_channels * 9 + b.out_channels * m * 9) * side * side
    student = cheapconv.cheapen(wrn, "W(0.5)")
    shape = (1, 3, 32, 32)
    assert cheapconv.count_params(student) == plan.totals["params_after"]
    assert cheapconv.count_params(student, "paper") == plan.totals["paper_after"]
    assert cheapconv.count_macs(student, shape) == plan.totals["macs_after"] == _flop_counter_macs(student, shape)


def test_search_prices_w_as_the_plan_does(wrn):
    space = SearchSpace.of(wrn, "S, W(0.5), B(2)", input_size=(3, 32, 32))
    plan = {e.layer: e for e in cheapconv.plan(wrn, "W(0.5)").replaced}
    for block in space.blocks:
        thin = next(c for c in block.candidates if c.text == "W(0.5)")
        entry = plan[block.label]
        assert (thin.params, thin.paper, thin.macs) == (entry.params_after - entry.params_before,
                                                        entry.paper_after - entry.paper_before,
                                                        entry.macs_after - entry.macs_before)


# ------------------------------------------------------------------------------------------------ teacher init

def test_f1_reproduces_the_teacher_exactly(wrn):
    x = torch.randn(4, 3, 32, 32)
    student = cheapconv.cheapen(wrn, "W(1)", init="teacher").eval()
    assert all(r.kind == "exact" and r.weight_error == 0 for r in student.cheapconv_init)
    torch.testing.assert_close(student(x), wrn(x), atol=1e-5, rtol=1e-5)


def test_f1_reproduces_a_post_activation_resnet_exactly():
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    teacher = _randomise_norms(cheapconv.create_model("resnet18", num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    student = cheapconv.cheapen(teacher, "W(1)", init="teacher", input_size=(3, 64, 64)).eval()
    assert len(student.cheapconv_plan.replaced) == 8
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)


def test_kept_channels_are_the_most_important_with_their_weights(wrn):
    teacher = copy.deepcopy(wrn)
    a, bn, b = (teacher.get_submodule(f"block1.1.{name}") for name in ("conv1", "bn2", "conv2"))
    with torch.no_grad():   # channels 0..15 carry nothing (γ = β = 0): W(0.5) must drop exactly those
        bn.weight[:16] = 0
        bn.bias[:16] = 0
    score = channel_importance(a, bn, b)
    assert (score[:16] == 0).all() and (score[16:] > 0).all()
    student = cheapconv.cheapen(teacher, "block1.1=W(0.5)", init="teacher").eval()
    block = student.get_submodule("block1.1.conv1")
    assert isinstance(block, Thin) and block.conv1.out_channels == 16
    keep = torch.arange(16, 32)
    torch.testing.assert_close(block.conv1.weight, a.weight[keep])
    torch.testing.assert_close(block.conv2.weight, b.weight[:, keep])
    for name in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(block.bn, name), getattr(bn, name)[keep])
    # the dropped channels contributed a constant relu(0) = 0: the thin pair computes the teacher's exactly
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)


def test_reconstruction_refits_the_consumer_by_least_squares(wrn):
    torch.manual_seed(1)
    x = torch.randn(48, 3, 32, 32)
    student = cheapconv.cheapen(wrn, "W(0.5)", init="teacher").eval()
    error = lambda: float((student(x) - wrn(x)).norm() / wrn(x).norm())  # noqa: E731
    with torch.no_grad():
        before = error()
    report = cheapconv.reconstruct(student, wrn, x, steps=0, progress=False)
    with torch.no_grad():
        after = error()
    assert after < 0.5 * before
    assert all("least-squares last 3×3" in s.method for s in report.sites)
    assert all(s.fitted < s.start for s in report.sites)


# ------------------------------------------------------------------------------------------------ between layers

class _Pair(nn.Module):
    """A residual block whose between layers vary: BN → act given as a module or a function."""

    def __init__(self, act=None, norm: nn.Module | None = None):
        super().__init__()
        self.stem = nn.Conv2d(8, 8, 1)   # so that conv1 is not the stem, which default rules leave alone
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.norm = norm if norm is not None else nn.BatchNorm2d(8)
        self.act = act
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.conv1(x))
        y = self.act(y) if self.act is not None else F.relu(y)
        return x + self.conv2(y)


@pytest.mark.parametrize("act", [None, nn.SiLU(), nn.LeakyReLU(0.2), nn.GELU(approximate="tanh")])
def test_the_teachers_activation_and_biases_are_rebuilt(act):
    torch.manual_seed(0)
    teacher = _randomise_norms(_Pair(act))
    student = cheapconv.cheapen(teacher, "W(1)", init="teacher", input_size=(8, 6, 6)).eval()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)
    assert student.get_submodule("conv1").conv1.bias is not None


def test_a_norm_it_cannot_thin_is_a_reason():
    teacher = _Pair(nn.ReLU(), norm=nn.GroupNorm(2, 8)).eval()
    with pytest.warns(UserWarning, match="nothing was replaced"):
        plan = cheapconv.plan(teacher, "W(0.5)", input_size=(8, 6, 6))
    entry = next(e for e in plan.entries if "+" in e.layer)
    assert entry.action == "cannot" and "GroupNorm" in entry.reason


# ------------------------------------------------------------------------------------------------ elsewhere

def test_a_thin_student_saves_and_loads(wrn, tmp_path):
    student = cheapconv.cheapen(wrn, "W(0.25)", init="teacher").eval()
    path = tmp_path / "thin.pt"
    cheapconv.save(student, path)
    loaded = cheapconv.load(path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), student(x))


def test_thin_is_a_compress_family_priced_by_the_plan(wrn):
    chosen = resolve_families(["thin"])
    assert [str(s) for s in chosen[0][1]] == ["W(0.75)", "W(0.5)", "W(0.25)"]
    assert all(f.name != "thin" for f, _ in resolve_families())   # to be named, for now
    sites, _, _ = find_sites(wrn, chosen, (3, 32, 32))
    assert [s.kind for s in sites] == ["pair"] * 6
    site = sites[0]
    assert [o.spec for o in site.options] == ["keep", "W(0.75)", "W(0.5)", "W(0.25)"]
    option = site.options[2]
    student = cheapconv.cheapen(wrn, option.rule)
    assert cheapconv.count_params(student) - cheapconv.count_params(wrn) == option.params


def test_blocks_command_lists_w(capsys):
    assert main(["blocks"]) == 0
    out = capsys.readouterr().out
    assert "W(f)" in out
