"""cheapen/plan contracts: the spec's fixtures, the exact null rewrite, an untouched input, what the plan
says and why, strictness, fallbacks for models fx cannot trace."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import cheapconv
from cheapconv import cheapen, count_macs, count_params, plan
from cheapconv.errors import PolicyMatchError
from cheapconv.models import WideResNet


# --- the spec's fixtures (moonshine.md section 4) -----------------------------------------------------------
def test_wrn_40_2_teacher_counts():
    m = WideResNet(40, 2)
    assert count_params(m, "paper") == 2_248_954
    assert count_params(m, "trainable") == 2_243_546
    assert round(count_macs(m, (1, 3, 32, 32)) / 1e6, 1) == 327.6


def test_wrn_16_2_counts():
    assert count_params(WideResNet(16, 2), "paper") == 693_498


@pytest.mark.parametrize("policy,paper", [("G(4)", 825_210), ("B(2)", 437_242), ("BG(2,M)", 152_986)])
def test_wrn_40_2_students(policy, paper):
    student = cheapen(WideResNet(40, 2), policy)
    assert count_params(student, "paper") == paper
    # the plan's predicted totals are the measured ones
    totals = student.cheapconv_plan.totals
    assert totals["paper_after"] == paper
    assert totals["params_after"] == count_params(student)
    assert totals["macs_after"] == count_macs(student, (1, 3, 32, 32))


def test_resnet34_g4_fixture():
    tv = pytest.importorskip("torchvision")
    student = cheapen(tv.models.resnet34(), "G(4)")
    assert round(count_params(student) / 1e6, 2) == 8.15
    # both 3×3 convs of every basic block (16 blocks), not the stem or the 1×1 downsamples
    assert len(student.cheapconv_plan.replaced) == 32


# --- contracts ------------------------------------------------------------------------------------------------
def test_null_rewrite_is_bit_identical(wrn16):
    wrn16.eval()
    student = cheapen(wrn16, "S")
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(student(x), wrn16(x))
    assert not student.cheapconv_plan.replaced


def test_null_rewrite_of_a_post_activation_resnet_is_bit_identical():
    tv = pytest.importorskip("torchvision")
    m = tv.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(cheapen(m, "keep")(x), m(x))


def test_input_model_is_untouched(wrn16):
    before = copy.deepcopy(wrn16.state_dict())
    modules_before = [(n, type(m)) for n, m in wrn16.named_modules()]
    cheapen(wrn16, "conv1=G(N); block3.*=BG(2,M); G(4)")
    assert [(n, type(m)) for n, m in wrn16.named_modules()] == modules_before
    assert all(torch.equal(before[k], v) for k, v in wrn16.state_dict().items())
    assert not hasattr(wrn16, "cheapconv_taps")


@pytest.mark.parametrize("policy", ["G(4)", "B(2)", "BG(2,M/4)", "S-2x2", "G(N)"])
def test_student_trains(wrn16, policy):
    student = cheapen(wrn16, policy).train()
    x = torch.randn(2, 3, 32, 32)
    out = student(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert count_params(student) < count_params(wrn16)


def test_training_flag_and_dtype_are_inherited(wrn16):
    m = wrn16.double().eval()
    student = cheapen(m, "G(4)")
    assert not any(mod.training for mod in student.modules())
    assert all(p.dtype == torch.float64 for p in student.parameters())
    m.train()
    assert all(mod.training for mod in cheapen(m, "G(4)").modules())


def test_mixed_policy_on_wrn(wrn16):
    student = cheapen(wrn16, "conv1=keep; block3.*=BG(2,M/4); G(4)")
    blocks = {e.layer: e.block for e in student.cheapconv_plan.replaced}
    assert blocks["block3.0.conv1+conv2"] == "BG(2,M/4)"
    assert blocks["block1.0.conv1"] == "G(4)"
    assert "conv1" not in blocks


def test_stem_can_be_targeted_by_name(wrn16):
    entries = {e.layer: e for e in plan(wrn16, "conv1=G(N); G(4)").entries}
    assert entries["conv1"].action == "replace" and entries["conv1"].block == "G(N)"
    assert plan(wrn16, "G(4)").entries[0].action == "skip"


def test_block_level_on_post_activation_resnet():
    tv = pytest.importorskip("torchvision")
    m = tv.models.resnet18()
    student = cheapen(m, "B(2)")
    replaced = [e.layer for e in student.cheapconv_plan.replaced]
    assert replaced[0] == "layer1.0.conv1+conv2" and len(replaced) == 8
    # the norm and activation between the pair went with it; the shared ReLU after the add stays
    names = dict(student.named_modules())
    assert "layer1.0.bn1" not in names and "layer1.0.conv2" not in names and "layer1.0.relu" in names
    assert "layer1.0.bn2" in names
    out = student(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000)


# --- the plan explains itself ---------------------------------------------------------------------------------
def test_plan_is_pure_and_explains_kept_layers(wrn16):
    before = copy.deepcopy(wrn16.state_dict())
    p = plan(wrn16, "G(3)")
    assert all(torch.equal(before[k], v) for k, v in wrn16.state_dict().items())
    reasons = {e.layer: (e.action, e.reason) for e in p.entries}
    assert reasons["conv1"][0] == "skip" and "stem" in reasons["conv1"][1]
    assert reasons["block1.0.shortcut"][0] == "skip" and "1×1" in reasons["block1.0.shortcut"][1]
    assert reasons["block1.0.conv2"] == ("cannot", "3 groups do not divide C_in=32")
    assert "block1.0.conv2" in str(p) and "do not divide" in str(p)


def test_wildcards_skip_ineligible_convs_but_exact_names_conflict(wrn16):
    by_layer = {e.layer: e for e in plan(wrn16, "block3.*=BG(2,M/4); G(4)").entries}
    assert by_layer["block3.0.shortcut"].action == "skip"
    cheapen(wrn16, "block3.*=BG(2,M/4); G(4)", strict=True)
    by_layer = {e.layer: e for e in plan(wrn16, "block3.0.shortcut=G(4); G(4)").entries}
    assert by_layer["block3.0.shortcut"].action == "cannot" and "1×1" in by_layer["block3.0.shortcut"].reason


class DepthwiseNet(nn.Module):
    """stem, then depthwise 3×3 and pointwise 1×1 (a MobileNet block), then a dense 3×3."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.dense = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        return self.dense(self.pw(self.dw(self.stem(x)))).mean((2, 3))


def test_default_rules_skip_depthwise_convs_but_a_rule_naming_one_conflicts():
    net = DepthwiseNet()
    by_layer = {e.layer: e for e in plan(net, "G(4)", input_size=(3, 16, 16)).entries}
    assert by_layer["dw"].action == "skip" and "already grouped" in by_layer["dw"].reason
    assert by_layer["dense"].action == "replace"
    assert not plan(net, "LRp(0.5)", input_size=(3, 16, 16)).impossible  # structured blocks skip it too
    cheapen(net, "G(4)", input_size=(3, 16, 16), strict=True)  # nothing impossible: strict passes
    by_layer = {e.layer: e for e in plan(net, "dw=G(4)", input_size=(3, 16, 16)).entries}
    assert by_layer["dw"].action == "cannot" and "already grouped" in by_layer["dw"].reason


def test_a_list_of_images_is_an_example_input():
    """torchvision's detectors take ``model([image])``; cheapen and plan accept that input as it is."""
    net = DepthwiseNet()
    p = plan(net, "G(4)", example_input=[torch.rand(3, 20, 24)])
    assert p.input_shape == (3, 20, 24)
    assert p.totals["macs_before"] == count_macs(net, (1, 3, 20, 24))
    student = cheapen(net, "G(4)", example_input=[torch.rand(3, 20, 24), torch.rand(3, 20, 24)])
    assert student.cheapconv_plan.input_shape == (3, 20, 24)
    assert plan(net, "G(4)", example_input=torch.rand(3, 20, 24)).input_shape == (3, 20, 24)
    with pytest.raises(cheapconv.UsageError, match="list of C×H×W"):
        plan(net, "G(4)", example_input=[torch.rand(20, 24)])


def test_strict_turns_impossible_layers_into_errors(wrn16):
    with pytest.raises(PolicyMatchError, match="do not divide"):
        cheapen(wrn16, "G(3)", strict=True)
    cheapen(wrn16, "G(4)", strict=True)  # shortcuts and stem are not eligible by default: no error


def test_policy_that_matches_nothing(wrn16):
    with pytest.raises(PolicyMatchError, match="selects nothing") as info:
        cheapen(wrn16, "layer9.*=G(4)")
    assert "block1.0.conv1" in str(info.value)


def test_rule_matching_nothing_warns_and_strict_fails(wrn16):
    with pytest.warns(UserWarning, match="matches no conv"):
        cheapen(wrn16, "nope.*=G(2); G(4)")
    with pytest.raises(PolicyMatchError, match="every rule must match"):
        cheapen(wrn16, "nope.*=G(2); G(4)", strict=True)


def test_block_rule_on_a_lone_conv_is_explained(wrn16):
    p = plan(wrn16, "block1.0.conv1=B(2); G(4)")
    entry = next(e for e in p.entries if e.layer == "block1.0.conv1")
    assert entry.action == "cannot" and "needs the whole pair" in entry.reason


# --- models fx cannot trace, shared and functional convs -------------------------------------------------------
class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        if x.abs().sum() >= 0:  # data-dependent control flow (always true here): fx cannot trace it
            x = self.body(x)
        return self.head(x.mean((2, 3)))


def test_untraceable_model_falls_back_to_module_replacement():
    m = DataDependent()
    with pytest.warns(UserWarning, match="Falling back to module replacement"):
        student = cheapen(m, "G(4)")
    assert not isinstance(student, fx.GraphModule)
    assert student.cheapconv_plan.mode == "module"
    assert type(student.body).__name__ == "GroupedPointwise"
    assert isinstance(m.body, nn.Conv2d)
    assert student(torch.ones(1, 3, 8, 8)).shape == (1, 4)


def test_untraceable_model_rejects_block_level_with_a_reason():
    with pytest.warns(UserWarning):
        p = plan(DataDependent(), "body=B(2)")
    entry = next(e for e in p.entries if e.layer == "body")
    assert entry.action == "cannot" and "fx graph" in entry.reason


class SharedAndFunctional(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.shared = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3))
        self.last = nn.Conv2d(8, 8, 3, padding=1, bias=False)

    def forward(self, x):
        x = self.shared(self.shared(self.stem(x)))
        x = F.conv2d(x, self.weight, padding=1)
        return self.last(x)


def test_shared_and_functional_convs_are_kept_with_reasons():
    p = plan(SharedAndFunctional(), "G(4)", input_size=(3, 8, 8))
    by_layer = {e.layer: e for e in p.entries}
    assert by_layer["shared"].action == "cannot" and "called 2 times" in by_layer["shared"].reason
    functional = [e for e in p.entries if "functional conv" in e.reason]
    assert len(functional) == 1
    assert by_layer["last"].action == "replace"


def test_leaf_modules_make_untraceable_parts_opaque():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = DataDependent()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)

        def forward(self, x):
            y = self.inner(x)
            return self.conv(y[:, :, None, None].expand(-1, -1, 4, 4))

    student = cheapen(Wrapper(), "conv=G(2)", leaf_modules=[DataDependent], input_size=(3, 8, 8))
    assert isinstance(student, fx.GraphModule)
    assert [e.layer for e in student.cheapconv_plan.replaced] == ["conv"]


def test_taps_are_stage_outputs(wrn16):
    student = cheapen(wrn16, "G(4)")
    assert student.cheapconv_plan.stages == ["block1", "block2", "block3"]
    with cheapconv.record(student) as acts:
        student(torch.randn(2, 3, 32, 32))
    assert [tuple(a.shape) for a in acts] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8)]
    with cheapconv.record(wrn16) as teacher_acts:  # a plain teacher is recorded through scoped hooks
        wrn16(torch.randn(2, 3, 32, 32))
    assert [a.shape[1:] for a in teacher_acts] == [a.shape[1:] for a in acts]
    assert not wrn16.block1._forward_hooks


def test_resnet_taps():
    tv = pytest.importorskip("torchvision")
    student = cheapen(tv.models.resnet18(), "G(4)")
    assert student.cheapconv_plan.stages == ["layer1", "layer2", "layer3", "layer4"]


def test_a_stem_that_pads_same_at_run_time_takes_a_block():
    """timm's Conv2dSame pads in forward; its replacement pads the same way (and is saved as data)."""
    pytest.importorskip("timm")
    teacher = cheapconv.create_model("timm:tf_efficientnet_lite0").eval()
    student = cheapconv.cheapen(teacher, "conv_stem=G(N)", input_size=(3, 65, 65)).eval()
    assert type(student.get_submodule("conv_stem")).__name__ == "SamePadded"
    x = torch.randn(1, 3, 65, 65)  # odd size: "same" padding is asymmetric here
    assert student(x).shape == teacher(x).shape
    assert cheapconv.count_params(student) < cheapconv.count_params(teacher)


def test_saved_same_padded_student_reloads_equal(tmp_path):
    pytest.importorskip("timm")
    student = cheapconv.cheapen(cheapconv.create_model("timm:tf_efficientnet_lite0"), "conv_stem=G(N)",
                                input_size=(3, 64, 64)).eval()
    assert cheapconv.save(student, tmp_path / "s.pt") == "graph"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(cheapconv.load(tmp_path / "s.pt")(x), student(x))


def test_a_policy_that_selects_nothing_says_what_applies():
    pytest.importorskip("torchvision")
    with pytest.raises(PolicyMatchError, match="only dense k×k conv is the stem conv_proj.*'conv_proj=G\\(N\\)'"):
        cheapconv.cheapen(cheapconv.create_model("vit_b_16"), "G(4)")


def test_a_depthwise_network_gets_advice_that_fits_it():
    pytest.importorskip("torchvision")
    with pytest.warns(UserWarning, match="depthwise.*1×1 convs hold"):
        p = cheapconv.plan(cheapconv.create_model("mobilenet_v2"), "G(4)", input_size=(3, 64, 64))
    assert not p.replaced


def test_plan_totals_account_for_modules_tracing_drops():
    """GoogLeNet's auxiliary classifiers run only in training: the traced student has none of their weights,
    and the plan's totals must say what the student really holds."""
    pytest.importorskip("torchvision")
    with pytest.warns(UserWarning, match="aux1, aux2"):
        student = cheapconv.cheapen(cheapconv.create_model("googlenet"), "G(4)", input_size=(3, 64, 64))
    totals = student.cheapconv_plan.totals
    assert totals["params_after"] == count_params(student)
    assert totals["paper_after"] == count_params(student, "paper")
