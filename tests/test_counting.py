"""MACs agree with an independent counter, and counting never changes the model it is given."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cheapconv
from cheapconv.counting import count_macs

#: one spelling per registered block family
BLOCKS = ["S", "S-2x2", "G(4)", "G(N)", "B(2)", "BG(2,M)", "Sep", "LR(0.5)", "LRp(0.25)", "Shuffle(2)",
          "ACDC(2)", "Tucker2(0.25)", "SVDk(0.5)", "TT(0.25)", "Tucker(0.25)", "W(0.5)"]


def _flop_counter_macs(model, shape):
    work = copy.deepcopy(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        work(torch.zeros(shape))
    return counter.get_total_flops() // 2


def test_every_registered_block_family_is_covered():
    assert {b.split("(")[0] for b in BLOCKS} == set(cheapconv.BLOCK_REGISTRY)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("model_name, size", [("wrn_10_2", 32), ("resnet18", 64), ("mobilenet_v2", 64)])
def test_count_macs_equals_flop_counter(block, model_name, size):
    if model_name != "wrn_10_2":
        pytest.importorskip("torchvision")
    teacher = cheapconv.create_model(model_name)
    structured = ("S", "Sep", "LR(0.5)", "LRp(0.25)", "Shuffle(2)", "ACDC(2)", "TT(0.25)", "Tucker(0.25)")
    # mobilenet has no dense k×k conv for the grouped/bottleneck families
    policy = block if model_name != "mobilenet_v2" or block in structured else "S"
    try:
        student = cheapconv.cheapen(teacher, policy, input_size=(3, size, size))
    except cheapconv.PolicyMatchError:
        pytest.skip(f"{block} selects nothing in {model_name}")
    shape = (1, 3, size, size)
    assert count_macs(student, shape) == _flop_counter_macs(student, shape)


def test_paper_fixture_is_unchanged():
    assert round(count_macs(cheapconv.create_model("wrn_40_2"), (1, 3, 32, 32)) / 1e6, 1) == 327.6


def test_acdc_is_charged_for_its_transforms():
    """ACDC's DCTs run as dense N×N products; wave 1 counted them as zero (a false 51× reduction)."""
    teacher = cheapconv.create_model("wrn_16_2")
    student = cheapconv.cheapen(teacher, "ACDC(2)")
    total, per_layer = count_macs(student, (1, 3, 32, 32), per_layer=True)
    assert total == sum(per_layer.values())
    acdc = student.get_submodule("block3.1.conv2")
    depthwise = per_layer.get("block3.1.conv2.depthwise", 0)
    assert per_layer["block3.1.conv2"] > depthwise  # its own einsums, not only the depthwise child
    assert total > count_macs(teacher, (1, 3, 32, 32)) / 10
    assert type(acdc).__name__ == "ACDCPointwise"


def _snapshot(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {}
    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, torch.Tensor):
                attrs[(name, k)] = (v.device, v.clone())
            elif isinstance(v, list) and v and all(isinstance(t, torch.Tensor) for t in v):
                attrs[(name, k)] = [(t.device, t.clone()) for t in v]
    return state, attrs


def _same(a, b):
    (sa, aa), (sb, ab) = a, b
    if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
        return False
    if aa.keys() != ab.keys():
        return False
    for k in aa:
        x, y = aa[k], ab[k]
        pairs = zip(x, y, strict=True) if isinstance(x, list) else [(x, y)]
        for (dx, tx), (dy, ty) in pairs:
            if dx != dy or tx.shape != ty.shape or (not tx.is_meta and not torch.equal(tx, ty)):
                return False
    return True


def test_counting_leaves_a_detector_untouched():
    """RetinaNet caches its anchors during forward; a meta pass used to leave them on the meta device."""
    detection = pytest.importorskip("torchvision.models.detection")
    model = detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=128, max_size=128).eval()
    before = _snapshot(model)
    assert count_macs(model, (1, 3, 128, 128)) > 0  # a batch tensor iterates as the list of images it takes
    assert _same(before, _snapshot(model))
    with torch.no_grad():
        out = model([torch.randn(3, 128, 128)])
    assert isinstance(out, list) and "boxes" in out[0]


@pytest.mark.parametrize("name", ["wrn_10_1", "resnet18", "mobilenet_v3_small"])
def test_count_macs_and_plan_leave_the_model_untouched(name):
    if name != "wrn_10_1":
        pytest.importorskip("torchvision")
    model = cheapconv.create_model(name).train()
    before = _snapshot(model)
    flags = [m.training for m in model.modules()]
    count_macs(model, (1, 3, 64, 64), per_layer=True)
    cheapconv.plan(model, "G(4)" if name != "mobilenet_v3_small" else "LR(0.5)", input_size=(3, 64, 64))
    assert _same(before, _snapshot(model))
    assert flags == [m.training for m in model.modules()]


def _segmentation(name):
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    kwargs = {"weights": None, "weights_backbone": None}
    return getattr(segmentation, name)(**kwargs, **({"aux_loss": False} if "deeplab" in name else {}))


@pytest.mark.parametrize("name, policy", [
    ("mobilenet_v2", "LR(0.5)"), ("efficientnet_b0", "LR(0.5)"), ("mobilenet_v2", "G(4)"),
    ("deeplabv3_resnet50", "G(4)"), ("lraspp_mobilenet_v3_large", "LR(0.25)"), ("densenet121", "G(4)")])
def test_default_rules_never_make_a_layer_bigger(name, policy):
    pytest.importorskip("torchvision")
    model = _segmentation(name) if "_resnet50" in name or "lraspp" in name else cheapconv.create_model(name)
    plan = cheapconv.plan(model, policy, input_size=(3, 64, 64))
    assert all(e.params_after <= e.params_before for e in plan.entries)
    assert plan.totals["params_after"] <= plan.totals["params_before"]
    grown = [e for e in plan.entries if e.action == "skip" and "name the layer to force it" in e.reason]
    if (name, policy) in {("mobilenet_v2", "LR(0.5)"), ("efficientnet_b0", "LR(0.5)"), ("densenet121", "G(4)"),
                          ("deeplabv3_resnet50", "G(4)")}:  # the cases where wave 1 grew the model
        assert grown, "the layers that would grow are kept, each with its reason"


def test_a_rule_that_names_a_layer_still_applies_and_warns():
    pytest.importorskip("torchvision")
    model = cheapconv.create_model("mobilenet_v2")
    layer = "features.18.0"  # 320→1280 1×1: LR(0.5) has rank 640, more parameters than the conv
    with pytest.warns(UserWarning, match="more parameters than they had.*features.18.0"):
        plan = cheapconv.plan(model, f"{layer}=LR(0.5)", input_size=(3, 64, 64))
    entry = next(e for e in plan.entries if e.layer == layer)
    assert entry.action == "replace" and entry.params_after > entry.params_before


@pytest.mark.parametrize("name", ["wrn_10_1", "resnet18"])
def test_public_entry_points_leave_the_model_untouched(name, tmp_path):
    """Nothing we call changes the model it is given, unless that is its job (distill trains its student)."""
    if name != "wrn_10_1":
        pytest.importorskip("torchvision")
    model = cheapconv.create_model(name).train()
    before = _snapshot(model)
    flags = [m.training for m in model.modules()]
    size = (3, 32, 32)
    x = torch.randn(2, *size)
    cheapconv.cheapen(model, "G(4)", input_size=size)
    cheapconv.plan(model, "S", input_size=size)
    cheapconv.count_params(model, "paper")
    count_macs(model, (1, *size), per_layer=True)
    cheapconv.find_stages(model, x[:1])
    with cheapconv.record(model):
        model.eval()(x)
    model.train()
    cheapconv.profile(model, size, batch=2, warmup=1, repeats=2, per_layer=False)
    cheapconv.search(model, "80%", samples=2, batch_size=4, candidates="S, G(2)", spread_runs=1, tolerance=0.5)
    cheapconv.export(model, tmp_path / "m.pt2", input_shape=size)
    assert _same(before, _snapshot(model))
    assert flags == [m.training for m in model.modules()]
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_lrp_keeps_a_fraction_of_every_layer(name):
    """LRp(f) takes its rank from the layer's own shape, so it shrinks narrowing and widening layers alike."""
    pytest.importorskip("torchvision")
    plan = cheapconv.plan(cheapconv.create_model(name), "LRp(0.25)", input_size=(3, 64, 64))
    replaced = plan.replaced
    assert replaced and all(e.params_after <= 0.25 * e.params_before + 1 or e.params_after < e.params_before
                            for e in replaced)
    assert plan.totals["params_after"] < 0.75 * plan.totals["params_before"]


class _DataDependent(nn.Module):
    """A conv whose output decides how many rows the next conv sees (like a detector's post-processing)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        keep = torch.nonzero(y.flatten(1).sum(1) >= 0).flatten()   # no meta kernel: data-dependent shape
        return self.b(y[keep])


def test_a_meta_model_that_needs_data_records_shapes_only_where_allowed():
    from cheapconv.counting import materialising_meta_models, shape_forward, throwaway_copy

    meta = throwaway_copy(_DataDependent(), "meta")
    seen = []
    meta.b.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[1:])))
    with pytest.raises(Exception, match="nonzero|data-dependent|meta"):
        shape_forward(meta, (2, 3, 8, 8))                      # by default a meta model is never given storage
    size = sum(t.numel() * t.element_size() for t in [*meta.parameters(), *meta.buffers()])
    with materialising_meta_models(size - 1), pytest.raises(Exception, match="nonzero|data-dependent|meta"):
        shape_forward(meta, (2, 3, 8, 8))                      # over the allowed size: the same failure
    seen.clear()
    with materialising_meta_models(size):
        shape_forward(meta, (2, 3, 8, 8))
    assert seen == [(4, 8, 8)] and all(p.is_meta for p in meta.parameters())   # the model itself stays meta
