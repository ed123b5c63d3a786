"""The robustness layer: automatic leaves where fx fails, convs inside leaves, training-mode behaviour of
graphs traced in eval mode, convs whose forward changes their geometry, and the codec's extra allow-list."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import cheapconv
from cheapconv.fx.tracer import trace
from cheapconv.store import graph_codec


class Branchy(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        if x.abs().sum() >= 0:
            x = self.conv(x)
        return x


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self, c: int = 8, drop: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.block = Residual(c)
        self.branchy = Branchy(c)
        self.head = nn.Linear(c, 4)
        self.drop = drop

    def forward(self, x):
        x = self.branchy(self.block(self.stem(x)))
        x = x.mean((2, 3))
        if self.drop:
            x = F.dropout(x, self.drop, training=self.training)
        return self.head(x)


def test_untraceable_submodule_becomes_a_leaf_and_keeps_the_graph():
    with pytest.warns(UserWarning, match="Branchy"):
        student = cheapconv.cheapen(Net(), "block=B(2); G(4)", input_size=(3, 8, 8))
    assert isinstance(student, fx.GraphModule) and student.cheapconv_plan.mode == "graph"
    replaced = {e.layer: e.block for e in student.cheapconv_plan.replaced}
    # the pair outside the leaf still collapses; the conv inside the leaf is still replaced as a module
    assert replaced == {"block.conv1+conv2": "B(2)", "branchy.conv": "G(4)"}
    assert student(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_convs_inside_declared_leaves_are_found():
    with pytest.warns(UserWarning, match="Branchy"):
        student = cheapconv.cheapen(Net(), "G(4)", leaf_modules=[Residual], input_size=(3, 8, 8))
    assert {"block.conv1", "block.conv2"} <= {e.layer for e in student.cheapconv_plan.replaced}
    assert type(student.block.conv1).__name__ == "GroupedPointwise"


def test_functional_dropout_still_follows_the_training_flag():
    teacher = Net(drop=0.5)
    gm = trace(teacher, leaf_modules=[Branchy])
    x = torch.randn(4, 3, 8, 8)
    gm.eval()
    teacher.eval()
    assert torch.equal(gm(x), teacher(x))  # off in eval mode, like the original
    gm.train()
    assert not torch.equal(gm(x), gm(x))  # and active in train mode
    assert not gm.cheapconv_trace_notes


def test_explicit_training_false_stays_off():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.dropout(self.conv(x), 0.5, training=False)

    gm = trace(Fixed().train())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(gm(x), gm(x))


def test_train_mode_paths_that_tracing_cannot_keep_are_reported():
    class WithAux(Net):
        def __init__(self):
            super().__init__()
            self.aux = nn.Linear(8, 4)

        def forward(self, x):
            x = self.block(self.stem(x)).mean((2, 3))
            if self.training:
                return self.head(x), self.aux(x)
            return self.head(x)

    with pytest.warns(UserWarning, match="another path than in eval mode"):
        cheapconv.cheapen(WithAux(), "G(4)", input_size=(3, 8, 8))


class DynamicPad(nn.Conv2d):
    """Like timm's Conv2dSame: pads in forward, so its attributes (padding 0) do not tell its geometry."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1)))


def test_conv_with_run_time_geometry_is_kept_with_a_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DynamicPad(8, 8, 3), nn.Conv2d(8, 8, 3, padding=1))
    student = cheapconv.cheapen(model, "G(4)", input_size=(3, 8, 8))
    entry = next(e for e in student.cheapconv_plan.entries if e.layer == "1")
    assert entry.action == "cannot" and "computes its geometry in forward" in entry.reason
    assert [e.layer for e in student.cheapconv_plan.replaced] == ["2"]
    assert student(torch.randn(1, 3, 8, 8)).shape == (1, 8, 8, 8)


def test_extra_codec_types_round_trip():
    tv = pytest.importorskip("torchvision")
    for module in (tv.ops.StochasticDepth(0.1, "row"), nn.MultiheadAttention(8, 2, batch_first=True)):
        spec = graph_codec.describe_module(module)
        assert repr(graph_codec.build_module(spec)) == repr(module)


def test_timm_layers_rebuild_exactly_from_data():
    """Attributes that timm computes at construction (the scaled conv's ``scale``, the run-time padding
    flag of 'SAME' convs) travel with the description, so the rebuilt layer computes the same thing."""
    timm_layers = pytest.importorskip("timm.layers")
    from timm.layers.norm_act import BatchNormAct2d

    x = torch.randn(1, 8, 9, 9)
    for module in (timm_layers.ScaledStdConv2dSame(8, 16, 3, stride=2, gamma=1.7),
                   timm_layers.StdConv2d(8, 16, 3), timm_layers.LayerNorm2d(8),
                   BatchNormAct2d(8, act_layer=nn.SiLU).eval()):
        rebuilt = graph_codec.build_module(graph_codec.describe_module(module)).eval()
        rebuilt.load_state_dict(module.state_dict())
        assert torch.equal(rebuilt(x), module(x)), type(module).__name__


def test_codec_refuses_look_alike_classes():
    class BatchNormAct2d(nn.BatchNorm2d):
        pass

    BatchNormAct2d.__module__ = "timm.layers.norm_act"  # same name as timm's, but not timm's class
    with pytest.raises(graph_codec.NotDescribable):
        graph_codec.describe_module(BatchNormAct2d(4))
    with pytest.raises(graph_codec.NotDescribable):
        graph_codec.build_module({"type": "os.system", "args": {}})


def test_import_cheapconv_imports_neither_torchvision_nor_timm():
    code = ("import sys, cheapconv, cheapconv.store.graph_codec as g; g._module_types(); "
            "assert 'torchvision' not in sys.modules and 'timm' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_warning_for_a_plain_resnet():
    tv = pytest.importorskip("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cheapconv.cheapen(tv.models.resnet18(), "G(4)", input_size=(3, 32, 32))


def test_stem_behind_an_input_transform_is_found():
    """Like torchvision's Inception with ``transform_input``: channels re-scaled and concatenated first."""

    class Transformed(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            x = torch.cat([x[:, :1] * 0.5 + 0.1, x[:, 1:2] * 0.4, x[:, 2:] - 0.2], 1)
            return self.body(self.stem(x))

    p = cheapconv.plan(Transformed(), "G(4)", input_size=(3, 8, 8))
    assert [(e.layer, e.action) for e in p.entries] == [("stem", "skip"), ("body", "replace")]


def test_optional_forward_arguments_are_fixed_at_their_defaults():
    """Traced as inputs, ``mask`` would be a proxy, ``mask is not None`` true, and the graph would multiply
    by a mask that plain ``model(x)`` calls never pass (timm's Hiera)."""

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x, mask=None, return_dict: bool = False):
            x = self.body(self.stem(x))
            if mask is not None:
                x = x * mask
            return {"out": x} if return_dict else x

    student = cheapconv.cheapen(Masked(), "G(4)", input_size=(3, 8, 8))
    assert list(inspect.signature(student.forward).parameters) == ["x"]
    assert student(torch.randn(2, 3, 8, 8)).shape == (2, 8, 8, 8)


class SharedConv(nn.Module):
    """One conv registered under two names (CoaT shares its conv position encodings this way)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(self.conv), nn.Sequential(self.conv)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_shape_passes_leave_no_meta_tensors_behind():
    from cheapconv.counting import shape_forward

    model = SharedConv()
    shape_forward(model, (1, 3, 8, 8))
    assert not any(t.is_meta for t in model.state_dict().values())
    cheapconv.find_stages(model, torch.zeros(1, 3, 8, 8))
    assert not any(t.is_meta for t in model.state_dict().values())


def test_forward_replaced_on_the_instance_is_the_one_traced():
    """Cadene's pretrainedmodels bind ``forward`` to each model; fx alone would trace the class's."""
    import types

    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=10)
    model.last_linear, model.fc = model.fc, None

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))))
        return self.last_linear(self.avgpool(x).flatten(1))

    model.forward = types.MethodType(forward, model)
    student = cheapconv.cheapen(model, "G(4)", input_size=(3, 32, 32))
    assert student.cheapconv_plan.mode == "graph"
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)
