"""ERFNet in the zoo and factorised k×1/1×k pairs as sites (issue 28): Table 4's exact parameter counts, the
paper's layer numbering for taps, one plan row per pair with its dilation and stride, the composed kernel as the
teacher start, and both models at 512×1024 (on meta tensors) and at a small size."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv import cheapen, count_params, create_model
from cheapconv.blocks import GroupedPointwise, SideHead, side_outputs
from cheapconv.blocks.factorize import compose_factorised
from cheapconv.counting import throwaway_copy
from cheapconv.surgery import plan
from cheapconv.surgery.taps import record


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return create_model("erfnet", num_classes=20).eval()


@pytest.fixture(scope="module")
def student(teacher) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapen(teacher, "G(N)").eval()


def test_table4_teacher_count(teacher):
    assert count_params(teacher, convention="paper") == 2073428
    assert count_params(teacher) == 2066836   # without BN running statistics
    assert teacher.cheapconv_source == "erfnet"


def test_table4_student_count_and_plan(student):
    assert count_params(student, convention="paper") == 503956
    the_plan = student.cheapconv_plan
    assert the_plan.totals["paper_after"] == 503956
    replaced = the_plan.replaced
    assert len(replaced) == 34                        # two pairs in each of the 17 non-bottleneck-1D blocks
    assert all(len(e.convs) == 2 and e.block == "G(N)" for e in replaced)
    row = next(e for e in replaced if e.layer == "layers.12.conv3x1_2+conv1x3_2")
    assert row.shape == "128→128 3×1+1×3 d16 @8×8"
    # the downsamplers' convs stay, as in the paper; the first reads the image
    kept = {e.layer: e.action for e in the_plan.entries if len(e.convs) == 1 and e.layer.endswith(".conv")}
    assert kept == {"layers.1.conv": "skip", "layers.2.conv": "skip", "layers.8.conv": "skip"}


def test_pairs_become_depthwise_blocks_with_the_pairs_dilation(student):
    block = student.get_submodule("layers.12.conv3x1_2")
    assert isinstance(block, GroupedPointwise)
    assert block.grouped.groups == 128 and block.grouped.dilation == (16, 16) and block.grouped.padding == (16, 16)
    assert block.pointwise.bias is None and block.grouped.bias is None
    names = dict(student.named_modules())
    assert "layers.12.conv1x3_2" not in names and "layers.12.bn2" in names   # the pair's 1×3 gone, the BNs kept


def test_small_size_and_taps(teacher, student):
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        assert teacher(x).shape == student(x).shape == (2, 20, 32, 64)
        with record(student) as feats:
            student(x)
    assert student.cheapconv_stages == ["layers.7", "layers.12", "layers.16", "layers.19", "layers.22"]
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 8, 16), (128, 4, 8), (128, 4, 8), (64, 8, 16),
                                                             (16, 16, 32)]


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_cityscapes_size_on_meta(which, teacher, student):
    model = throwaway_copy(teacher if which == "teacher" else student, "meta")
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 512, 1024, device="meta"))
    assert out.shape == (1, 20, 512, 1024)


def test_encoder_head_is_kept_and_computed_only_when_asked(teacher, student):
    x = torch.randn(1, 3, 32, 64)
    for model in (teacher, student):
        heads = [m for m in model.modules() if isinstance(m, SideHead)]
        assert len(heads) == 1 and heads[0].weight.shape == (20, 128, 1, 1)
        with torch.no_grad(), side_outputs(model) as side:
            out = model(x)
        assert side["encoder"].shape == (1, 20, 4, 8) and out.shape == (1, 20, 32, 64)
        assert heads[0]._sink is None


def test_null_rewrite_is_exact(teacher):
    x = torch.randn(1, 3, 16, 32)
    s = cheapen(teacher, "S").eval()
    with torch.no_grad():
        assert torch.equal(s(x), teacher(x))


def test_student_file_round_trip(student, tmp_path):
    path = tmp_path / "erfnet-gn.pt"
    cheapconv.save(student, path)
    loaded = cheapconv.load(path).eval()
    x = torch.randn(1, 3, 16, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), student(x))
    assert count_params(loaded, "paper") == 503956


@pytest.mark.parametrize("first", ["v", "h"])
def test_compose_factorised_is_the_pairs_linear_map(first):
    torch.manual_seed(1)
    ka, kb = ((3, 1), (1, 3)) if first == "v" else ((1, 3), (3, 1))
    pa, pb = ((2, 0), (0, 2)) if first == "v" else ((0, 2), (2, 0))
    da, db = ((2, 1), (1, 2)) if first == "v" else ((1, 2), (2, 1))
    a = nn.Conv2d(4, 5, ka, padding=pa, dilation=da, bias=True)
    b = nn.Conv2d(5, 6, kb, padding=pb, dilation=db, bias=True)
    w, bias = compose_factorised(a.weight, b.weight, a.bias, b.bias)
    x = torch.randn(1, 4, 12, 12)
    with torch.no_grad():
        y = b(a(x))
        z = nn.functional.conv2d(x, w, bias, padding=2, dilation=2)
    # the linear part is exact everywhere; the composed bias away from the border the second conv pads
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert torch.allclose(z[inner], y[inner], atol=1e-5)
    with torch.no_grad():
        w0, _ = compose_factorised(a.weight, b.weight)
        y0 = nn.functional.conv2d(a._conv_forward(x, a.weight, None), b.weight, None, padding=b.padding,
                                  dilation=b.dilation)
        assert torch.allclose(nn.functional.conv2d(x, w0, None, padding=2, dilation=2), y0, atol=1e-5)


def test_teacher_init_composes_the_pair(teacher):
    # G(1) holds a dense k×k conv: the composed kernel is carried over exactly (its linear path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = cheapen(teacher, "layers.9.conv3x1_2=G(1)", init="teacher")
    (record_,) = s.cheapconv_init
    assert record_.name == "layers.9.conv3x1_2+conv1x3_2" and record_.weight_error < 1e-6
    assert "composed" in record_.note
    t = teacher.layers["9"]
    w, _ = compose_factorised(t.conv3x1_2.weight, t.conv1x3_2.weight)
    block = s.get_submodule("layers.9.conv3x1_2")
    assert block.grouped.dilation == (2, 2)
    eff = torch.einsum("oc,cikl->oikl", block.pointwise.weight[:, :, 0, 0], block.grouped.weight)
    assert torch.allclose(eff, w, atol=1e-5)


class _Factored(nn.Module):
    """1×k then k×1 (the other order), stride 2 on the vertical conv, a GELU between; then a pair with a
    BatchNorm between, which is no factorised pair."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.h = nn.Conv2d(8, 8, (1, 5), padding=(0, 2), bias=False)
        self.act = nn.GELU()
        self.v = nn.Conv2d(8, 16, (5, 1), stride=(2, 1), padding=(2, 0), bias=False)
        self.h2 = nn.Conv2d(16, 16, (1, 3), padding=(0, 1), bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.v2 = nn.Conv2d(16, 16, (3, 1), padding=(1, 0), bias=False)

    def forward(self, x):
        return self.v2(self.bn(self.h2(self.v(self.act(self.h(self.stem(x)))))))


def test_generic_pairs_other_order_and_stride():
    model = _Factored().eval()
    p = plan(model, "G(4)", input_size=(3, 16, 16))
    rows = {e.layer: e for e in p.entries}
    assert rows["h+v"].action == "replace" and rows["h+v"].shape == "8→16 1×5+5×1 s2 @8×16"
    assert rows["h2"].action == "skip" and rows["v2"].action == "skip"   # a norm between: no site
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = cheapen(model, "G(4)", input_size=(3, 16, 16), init="teacher").eval()
    block = s.get_submodule("h")
    assert block.grouped.kernel_size == (5, 5) and block.grouped.stride == (2, 1)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert s(x).shape == model(x).shape == (2, 16, 8, 16)
