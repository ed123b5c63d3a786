"""Coupled widths (issue 31 item 2): channel groups found on the graph, thinned as one, refitted, counted exactly.

WRN-16-2 / WRN-10-1 are pre-activation (a stage's residual stream is shared by its adds and the next block's
BatchNorm and convs); torchvision's ResNet-18 is post-activation (the stream's BatchNorms sit before the adds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cheapconv
from cheapconv.compression.groups import find_group_sites, group_fraction
from cheapconv.counting import count_params
from cheapconv.errors import UsageError
from cheapconv.fx import channel_groups, trace
from cheapconv.reconstruction import refit_readers
from cheapconv.surgery import group_importance, thin_group, thin_groups, thinned_counts, top_channels
from cheapconv.surgery.block_init import channel_importance


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as a trained teacher has."""
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


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return _randomise_norms(torchvision.models.resnet18(num_classes=10))


def _free(model):
    return [g for g in channel_groups(trace(model)) if g.fixed is None]


def _by_writer(groups, name):
    return next(g for g in groups if name in g.writers)


def _macs(model, shape):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------------------------------ the analysis

def test_wrn_10_1_groups():
    groups = channel_groups(trace(cheapconv.create_model("wrn_10_1", num_classes=10)))
    stream1 = _by_writer(groups, "conv1")
    assert stream1.fixed is None and stream1.channels == 16
    assert stream1.writers == ("conv1", "block1.0.conv2")
    assert stream1.norms == ("block1.0.bn1", "block2.0.bn1")
    assert set(stream1.readers) == {"block1.0.conv1", "block2.0.conv1", "block2.0.shortcut"}
    last = _by_writer(groups, "block3.0.conv2")
    assert last.writers == ("block3.0.conv2", "block3.0.shortcut") and last.norms == ("bn",)
    assert last.readers == ("fc",) and last.fixed is None
    inner = _by_writer(groups, "block2.0.conv1")
    assert (inner.writers, inner.norms, inner.readers) == (("block2.0.conv1",), ("block2.0.bn2",), ("block2.0.conv2",))
    assert not inner.coupled and stream1.coupled
    image = next(g for g in groups if g.readers == ("conv1",))
    assert image.fixed and "input" in image.fixed and image.channels == 3
    assert len([g for g in groups if g.fixed is None]) == 6   # three streams, three inner widths


def test_wrn_16_2_streams_cover_every_conv_once_each_way(wrn):
    groups = _free(wrn)
    convs = [n for n, m in wrn.named_modules() if isinstance(m, nn.Conv2d)]
    writers = [w for g in groups for w in g.writers]
    readers = [r for g in groups for r in g.readers]
    assert sorted(writers) == sorted(convs)                       # every conv's outputs can shrink
    assert sorted(readers) == sorted([c for c in convs if c != "conv1"] + ["fc"])
    stage2 = _by_writer(groups, "block2.0.conv2")
    assert set(stage2.writers) == {"block2.0.conv2", "block2.0.shortcut", "block2.1.conv2"}
    assert set(stage2.readers) == {"block2.1.conv1", "block3.0.conv1", "block3.0.shortcut"}
    assert set(stage2.norms) == {"block2.1.bn1", "block3.0.bn1"}


def test_resnet18_post_activation_streams(resnet):
    groups = _free(resnet)
    layer1 = _by_writer(groups, "conv1")
    assert set(layer1.writers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert set(layer1.norms) == {"bn1", "layer1.0.bn2", "layer1.1.bn2"}
    assert set(layer1.readers) == {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"}
    layer4 = _by_writer(groups, "layer4.1.conv2")
    assert "layer4.0.downsample.1" in layer4.norms and set(layer4.readers) == {"layer4.1.conv1", "fc"}
    assert len(groups) == 4 + 8            # four streams, eight inner widths


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.d = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 2)

    def forward(self, x):
        y = self.d(self.c(torch.cat([self.a(x), F.relu(self.b(x))], 1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 4), 1))


def test_what_we_cannot_follow_is_fixed():
    groups = {g.writers: g for g in channel_groups(trace(_Concat()))}
    assert "cat" in groups[("a",)].fixed and "cat" in groups[("b",)].fixed
    assert "grouped" in groups[("c",)].fixed
    # flattening a 4×4 map feeds the classifier 16 features per channel: not one column per channel
    assert "disagree" in groups[("d",)].fixed


# ------------------------------------------------------------------------------------------------ thinning

@pytest.mark.parametrize("which", ["wrn", "resnet"])
def test_keep_all_reproduces_the_teacher_exactly(which, request):
    model = request.getfixturevalue(which)
    groups = _free(model)
    student = thin_groups(model, [(g, torch.arange(g.channels)) for g in groups])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student(x), model(x))
    assert student is not model


@pytest.mark.parametrize("which,fraction", [("wrn", 0.5), ("wrn", 0.3), ("resnet", 0.5)])
def test_params_and_macs_are_exact(which, fraction, request):
    """Streams alone, and every group at once (convs sliced on both axes): the priced counts equal the built
    model's, MACs by torch's FlopCounterMode."""
    model = request.getfixturevalue(which)
    groups = _free(model)
    for chosen in ([g for g in groups if g.coupled], groups):
        choices = [(g, top_channels(model, g, fraction)) for g in chosen]
        student = thin_groups(model, choices)
        params, macs = thinned_counts(model, [(g, len(k)) for g, k in choices], (1, 3, 32, 32))
        assert params == count_params(student) < count_params(model)
        paper, _ = thinned_counts(model, [(g, len(k)) for g, k in choices], (1, 3, 32, 32), "paper")
        assert paper == count_params(student, "paper") > params
        assert macs == _macs(student, (1, 3, 32, 32)) < _macs(model, (1, 3, 32, 32))
        for g, keep in choices:
            assert all(student.get_submodule(n).weight.shape[0] == len(keep) for n in g.writers)


def test_thinned_stream_keeps_the_chosen_weights(wrn):
    group = _by_writer(_free(wrn), "block2.0.conv2")
    keep = torch.tensor([0, 5, 9, 40])
    student = thin_group(wrn, group, keep)
    assert torch.equal(student.block2[0].conv2.weight, wrn.block2[0].conv2.weight[keep])
    assert torch.equal(student.block3[0].shortcut.weight, wrn.block3[0].shortcut.weight[:, keep])
    assert torch.equal(student.block3[0].bn1.running_var, wrn.block3[0].bn1.running_var[keep])
    assert student.block3[0].bn1.num_features == 4 and wrn.block3[0].bn1.num_features == 64
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_importance_on_a_pair_ranks_as_w(wrn):
    """On a pair's inner width (one BatchNorm, one reader) the group score orders channels as W(f)'s does."""
    group = _by_writer(_free(wrn), "block2.1.conv1")
    block = wrn.block2[1]
    ours = group_importance(wrn, group)
    theirs = channel_importance(block.conv1, block.bn2, block.conv2)
    assert torch.equal(torch.sort(-ours, stable=True).indices, torch.sort(-theirs, stable=True).indices)


def test_importance_keeps_live_channels(wrn):
    """Channels whose every BatchNorm is zeroed carry nothing: the top half never keeps them."""
    model = thin_groups(wrn, [])
    group = _by_writer(_free(model), "block1.0.conv2")
    dead = torch.arange(0, group.channels, 2)
    with torch.no_grad():
        for name in group.norms:
            bn = model.get_submodule(name)
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    assert torch.equal(top_channels(model, group, 0.5), torch.arange(1, group.channels, 2))


def test_refit_readers_brings_the_student_back(wrn):
    groups = [g for g in _free(wrn) if g.coupled]
    choices = [(g, top_channels(wrn, g, 0.5)) for g in groups]
    student = thin_groups(wrn, choices)
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(16, 3, 32, 32, generator=gen) for _ in range(3)]
    x = torch.randn(8, 3, 32, 32, generator=gen)

    def error():
        with torch.no_grad():
            return float((student(x) - wrn(x)).norm() / wrn(x).norm())

    before = error()
    fits = refit_readers(student, wrn, choices, lambda: iter(data))
    assert [f.name for f in fits][-1] == "fc" and {f.name for f in fits} == {r for g in groups for r in g.readers}
    assert error() < 0.6 * before


def test_refit_at_keep_all_stays_the_teacher():
    torch.manual_seed(0)
    model = _randomise_norms(cheapconv.create_model("wrn_10_1", num_classes=10))
    choices = [(g, torch.arange(g.channels)) for g in _free(model)]
    student = thin_groups(model, choices)
    data = [torch.randn(64, 3, 16, 16) for _ in range(4)]
    refit_readers(student, model, choices, lambda: iter(data))
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        # least squares on the teacher's own inputs finds the teacher's map up to its tiny ridge (the weights
        # themselves may differ where a channel is never live after the ReLU)
        assert float((student(x) - model(x)).norm() / model(x).norm()) < 5e-3


def test_bad_choices_are_usage_errors(wrn):
    groups = channel_groups(trace(wrn))
    fixed = next(g for g in groups if g.fixed)
    with pytest.raises(UsageError, match="cannot be thinned"):
        thin_group(wrn, fixed, [0])
    group = _by_writer(groups, "block1.0.conv2")
    for keep in ([], [0, 0], [group.channels], [-1]):
        with pytest.raises(UsageError, match="distinct indices"):
            thin_group(wrn, group, keep)
    with pytest.raises(UsageError, match="chosen twice"):
        thin_groups(wrn, [(group, [0]), (group, [1])])
    other = thin_group(wrn, group, [0, 1])
    with pytest.raises(UsageError, match="another model"):
        thin_group(other, group, [0])
    assert wrn.block1[0].conv2.out_channels == group.channels   # the teacher is untouched


# ------------------------------------------------------------------------------------------------ compress candidates

def test_group_sites_are_the_streams_priced_exactly(wrn):
    sites = find_group_sites(wrn, (3, 32, 32))
    # the stem's outputs and the three streams; the pairs' inner widths are the thin family's, not group sites
    assert [s.group.writers[0] for s in sites] == ["conv1", "block1.0.conv2", "block2.0.conv2", "block3.0.conv2"]
    assert all(s.group.coupled for s in sites[1:])
    last = sites[-1]
    assert [o.spec for o in last.options] == ["keep", "Wg(0.75)", "Wg(0.5)"]
    assert [o.kept for o in last.options] == [128, 96, 64]
    assert "fc" in last.touches and "block3.1.conv1" in last.touches
    for option in last.options[1:]:
        student = thin_group(wrn, last.group, top_channels(wrn, last.group, group_fraction(option.spec)))
        assert option.params == count_params(student) - count_params(wrn)
        assert option.paper == count_params(student, "paper") - count_params(wrn, "paper")
        assert option.macs == _macs(student, (1, 3, 32, 32)) - _macs(wrn, (1, 3, 32, 32))


def test_group_site_strengths(wrn):
    sites = find_group_sites(wrn, (3, 32, 32), strengths=["Wg(1)", "Wg(0.5)", "Wg(0.51)"])
    stem = sites[0]
    assert [o.spec for o in stem.options] == ["keep", "Wg(0.5)"]     # Wg(1) keeps all; Wg(0.51) keeps 8 again
    for bad in ("Wg(0)", "Wg(1.5)", "W(0.5)", "Wg(x)"):
        with pytest.raises(UsageError, match="group width"):
            group_fraction(bad)


# ------------------------------------------------------------------------------------------------ depthwise and gates

class _Gated(nn.Module):
    """expand → BN → ReLU → depthwise → gate x·σ(conv(mean(x))) → project, and a 1-channel spatial gate after it."""

    def __init__(self):
        super().__init__()
        self.expand, self.bn = nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.reduce, self.gate = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.project, self.spatial = nn.Conv2d(12, 6, 1), nn.Conv2d(6, 1, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.dw(F.relu(self.bn(self.expand(x))))
        y = y * torch.sigmoid(self.gate(F.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        z = self.project(y)
        z = z * self.spatial(z).sigmoid()
        return self.fc(z.mean((2, 3)))


def test_depthwise_and_gates_join_the_group():
    model = _randomise_norms(_Gated())
    groups = {g.writers: g for g in channel_groups(trace(model))}
    inner = groups[("expand", "gate")]
    assert inner.fixed is None and inner.depthwise == ("dw",) and inner.readers == ("reduce", "project")
    assert "disagree" in groups[("project", "spatial")].fixed      # a 1-channel gate is no channel of the group
    x = torch.randn(2, 3, 8, 8)
    student = thin_group(model, inner, [1, 4, 5, 11])
    assert student.dw.groups == student.dw.out_channels == 4 and student.gate.out_channels == 4
    assert student(x).shape == (2, 2)
    with torch.no_grad():
        assert torch.equal(thin_group(model, inner, torch.arange(12))(x), model(x))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_torchvision_depthwise_networks(name):
    """Inverted residuals (depthwise convs, squeeze-excitation gates, stochastic depth): every expanded width and
    stream is a group; keep-all is exact and halving every group is counted exactly."""
    torch.manual_seed(0)
    model = _randomise_norms(getattr(torchvision.models, name)(num_classes=10))
    groups = channel_groups(trace(model))
    free = [g for g in groups if g.fixed is None]
    assert [g.fixed for g in groups if g.fixed] == ["they are the network's input"]
    assert sum(len(g.depthwise) for g in free) == sum(
        1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(thin_groups(model, [(g, torch.arange(g.channels)) for g in free])(x), model(x))
    choices = [(g, top_channels(model, g, 0.5)) for g in free]
    student = thin_groups(model, choices)
    params, macs = thinned_counts(model, [(g, len(k)) for g, k in choices], (1, 3, 32, 32))
    assert params == count_params(student) and macs == _macs(student, (1, 3, 32, 32))


def test_timm_efficientnet_lite0():
    """timm's TF-ported Lite0: Conv2dSame (padding computed at run time from the kernel) and BatchNormAct2d
    (BatchNorm then ReLU6 in one module) are followed; only the image's channels are fixed."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _randomise_norms(timm.create_model("tf_efficientnet_lite0", num_classes=10))
    groups = channel_groups(trace(model))
    free = [g for g in groups if g.fixed is None]
    assert [g.fixed for g in groups if g.fixed] == ["they are the network's input"]
    assert free[-1].readers == ("classifier",)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(thin_groups(model, [(g, torch.arange(g.channels)) for g in free])(x), model(x))
    choices = [(g, top_channels(model, g, 0.5)) for g in free]
    student = thin_groups(model, choices)
    params, macs = thinned_counts(model, [(g, len(k)) for g, k in choices], (1, 3, 32, 32))
    assert params == count_params(student) and macs == _macs(student, (1, 3, 32, 32))


def test_a_thinned_student_saves_and_loads(wrn, tmp_path):
    groups = _free(wrn)
    student = thin_groups(wrn, [(g, top_channels(wrn, g, 0.5)) for g in groups])
    cheapconv.save(student, tmp_path / "thin.pt")
    loaded = cheapconv.load(tmp_path / "thin.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    assert count_params(loaded) == count_params(student)
