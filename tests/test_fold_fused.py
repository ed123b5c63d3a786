"""BatchNorm folding keeps what it must (issue 24): timm's ``BatchNormAct2d`` folds its BatchNorm part and keeps
its activation and dropout as ops of their own; BatchNorm and conv subclasses whose forward cheapconv does not
know are kept, with a note; timm teachers and cheapened students of the fused-BN families (EfficientNet,
MobileNetV3, RegNet) export folded to ONNX and pt2, match eager and keep every activation; every command that
exports internally takes ``--no-fold``, and a failing runtime check names folding."""

from __future__ import annotations

import collections
import importlib

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.exporter import export
from cheapconv.measure.exports import ExportCheckError
from cheapconv.surgery.fold import deployable
from cheapconv_cli.main import main

fold_module = importlib.import_module("cheapconv.surgery.fold")

#: activation module -> (its ONNX op, its ATen op in a torch.export graph)
_ACTIVATIONS = {nn.ReLU: ("Relu", "relu"), nn.ReLU6: ("Clip", "hardtanh"), nn.Hardswish: ("HardSwish", "hardswish"),
                nn.Hardsigmoid: ("HardSigmoid", "hardsigmoid"), nn.SiLU: ("Sigmoid", "silu")}


def _randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm (timm's fused ones included), so
    that a lost activation changes the output by far more than the check's tolerance."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def _activations(model: nn.Module) -> collections.Counter:
    return collections.Counter(type(m) for m in model.modules() if type(m) in _ACTIVATIONS)


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _conv_bn_act(norm: nn.Module) -> nn.Sequential:
    return _randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), norm, nn.Conv2d(8, 4, 1))).eval()


# --- what folds and what stays ------------------------------------------------------------------------------
def test_timm_batchnormact_folds_its_bn_and_keeps_its_activation_and_dropout():
    norm_act = pytest.importorskip("timm.layers.norm_act")
    model = _conv_bn_act(norm_act.BatchNormAct2d(8, act_layer=nn.SiLU, drop_layer=nn.Dropout))
    deployed, report = deployable(model)
    assert report.folded == [("0", "1")] and report.ops_kept == ["1"] and report.kept == [] and report.notes == []
    assert _bns(deployed) == 0
    kept = deployed.get_submodule("1")
    assert [type(m) for m in kept.children()] == [nn.Dropout, nn.SiLU] and not kept.training
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-6)
    assert "1 with their fused activation kept" in report.summary()
    # without its activation the output is far off: the comparison above would have caught the old folding
    plain = _conv_bn_act(nn.BatchNorm2d(8))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max() > 0.1


def test_a_batchnormact_without_activation_folds_away():
    norm_act = pytest.importorskip("timm.layers.norm_act")
    model = _conv_bn_act(norm_act.BatchNormAct2d(8, apply_act=False))
    deployed, report = deployable(model)
    assert len(report.folded) == 1 and report.ops_kept == [] and _bns(deployed) == 0
    assert [name for name, _ in deployed.named_modules()] == ["", "0", "2"]   # no op left where the BN was
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-6)


class _ShiftedBN(nn.BatchNorm2d):
    """A BatchNorm subclass that computes more than a BatchNorm: folding it as one would lose the shift."""

    def forward(self, x):
        return super().forward(x) + 1.0


def test_an_unknown_batchnorm_subclass_is_kept_and_named():
    model = _conv_bn_act(_ShiftedBN(8))
    deployed, report = deployable(model)
    assert report.folded == [] and report.kept == ["1"] and isinstance(deployed.get_submodule("1"), _ShiftedBN)
    assert len(report.notes) == 1 and "_ShiftedBN not folded (1)" in report.notes[0]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))


def test_a_look_alike_of_timms_batchnormact_is_not_trusted():
    class BatchNormAct2d(nn.BatchNorm2d):
        def __init__(self, n):
            super().__init__(n)
            self.drop, self.act = nn.Identity(), nn.ReLU()

        def forward(self, x):
            return self.act(super().forward(x)) * 2.0   # not what timm's class computes

    BatchNormAct2d.__module__ = "timm.layers.norm_act"  # timm's name, but not timm's class
    model = _conv_bn_act(BatchNormAct2d(8))
    deployed, report = deployable(model)
    assert report.folded == [] and report.kept == ["1"] and "BatchNormAct2d not folded" in report.notes[0]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))


class _ScaledConv(nn.Conv2d):
    """A conv whose forward rescales its weight (like weight standardisation): a BN after it does not fold."""

    def forward(self, x):
        return self._conv_forward(x, self.weight * 2.0, self.bias)


def test_a_bn_after_an_unknown_conv_subclass_is_kept_and_timms_same_conv_folds():
    model = _randomise_bn(nn.Sequential(_ScaledConv(3, 8, 3, padding=1), nn.BatchNorm2d(8))).eval()
    deployed, report = deployable(model)
    assert report.folded == [] and report.kept == ["1"] and "after a _ScaledConv not folded" in report.notes[0]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))
    conv2d_same = pytest.importorskip("timm.layers.conv2d_same")
    model = _randomise_bn(nn.Sequential(conv2d_same.Conv2dSame(3, 8, 3, stride=2), nn.BatchNorm2d(8))).eval()
    deployed, report = deployable(model)
    assert len(report.folded) == 1 and report.notes == [] and _bns(deployed) == 0
    x = torch.randn(2, 3, 9, 9)   # odd size: 'SAME' pads asymmetrically
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)


def test_no_fold_reports_every_batchnorm_kept(tmp_path, capsys):
    model = cheapconv.create_model("wrn_10_1")
    deployed, report = deployable(model, fold=False)
    assert not report.enabled and report.folded == [] and len(report.kept) == _bns(model) == 7
    assert report.summary().startswith("BatchNorm not folded (folding off): 7 kept")
    src = tmp_path / "s.pt"
    cheapconv.save(model, src)
    code = main(["export", str(src), "--format", "pt2", "-o", str(tmp_path / "s.pt2"), "--no-fold"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "BatchNorm: not folded (--no-fold), 7 kept" in captured.out and "check passed" in captured.out


# --- timm teachers and students, exported folded ------------------------------------------------------------
def _student(family: str, role: str) -> nn.Module:
    """A random-weight timm ``family`` model with randomised BatchNorms: the teacher, or a student cheapened
    with LRp(0.5) from random weights or from the teacher's (``role``)."""
    teacher = _randomise_bn(cheapconv.create_model(f"timm:{family}")).eval()
    if role == "teacher":
        return teacher
    init = "teacher" if role == "student-from-teacher" else "random"
    student = cheapconv.cheapen(teacher, "LRp(0.5)", input_size=(3, 64, 64), init=init)
    assert student.cheapconv_plan.replaced, "nothing was cheapened"
    return _randomise_bn(student, seed=2).eval() if init == "random" else student.eval()


def _exported_activations(fmt: str, path) -> collections.Counter:
    if fmt == "onnx":
        import onnx

        return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    program = torch.export.load(str(path))
    return collections.Counter(str(n.target).split(".")[1].rstrip("_") for n in program.graph.nodes
                               if n.op == "call_function" and str(n.target).startswith("aten."))


#: one family's teacher in the default suite (pt2: the quicker export); the others are slow tests
_FAST = ("mobilenetv3_small_100", "teacher", "pt2")
_CASES = [pytest.param(family, role, fmt, id=f"{family}-{role}-{fmt}",
                       marks=() if (family, role, fmt) == _FAST else pytest.mark.slow)
          for family in ("mobilenetv3_small_100", "regnetx_002", "tf_efficientnet_lite0", "efficientnet_b0")
          for role in (("teacher",) if family == "efficientnet_b0" else ("teacher", "student", "student-from-teacher"))
          for fmt in ("pt2", "onnx")]


@pytest.mark.parametrize("family,role,fmt", _CASES)
def test_timm_fused_bn_families_export_folded_and_match_eager(tmp_path, family, role, fmt):
    pytest.importorskip("timm")
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    model = _student(family, role)
    path = tmp_path / f"m.{fmt}"
    report = export(model, path, fmt, input_shape=(3, 64, 64))
    # the export check: exported vs eager on a random 3x3x64x64 input, within 1e-4 + 1e-4 * max|eager|
    assert report.passed and report.max_abs_diff <= report.tolerance and report.notes == []
    assert report.max_abs_ref > 1e-2   # outputs large enough that a lost activation could not hide
    assert report.folded > 0 and report.bn_ops_kept > 0 and report.kept_bn == 0
    # every activation of the eager model is an op of the exported graph, the fused ones included
    ops = _exported_activations(fmt, path)
    acts = _activations(model)
    assert acts, "the model has no activation modules to check"
    for act, n in acts.items():
        onnx_op, aten_op = _ACTIVATIONS[act]
        if act is nn.SiLU:   # exported as x * sigmoid(x); squeeze-excitation gates add more sigmoids
            assert ops[onnx_op if fmt == "onnx" else aten_op] >= n, (act, ops)
        else:
            assert ops[onnx_op if fmt == "onnx" else aten_op] == n, (act, ops)


# --- --no-fold on the commands that export internally -------------------------------------------------------
def _break_folding(monkeypatch):
    """Folding that gets the numbers wrong (a shifted bias), as the old folding of timm's fused BNs did."""
    real = fold_module.fold_batchnorm

    def broken(gm):
        report = real(gm)
        for conv, _ in report.folded:
            gm.get_submodule(conv).bias.data += 1.0
        return report

    monkeypatch.setattr(fold_module, "fold_batchnorm", broken)


@pytest.mark.parametrize("command", ["profile", "compare", "sweep", "search", "export"])
def test_every_exporting_command_takes_no_fold(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--no-fold" in capsys.readouterr().out


def test_a_failing_runtime_check_names_folding_and_no_fold_avoids_it(monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _break_folding(monkeypatch)
    args = ["profile", "wrn_10_1", "--runtime", "onnxruntime", "--repeats", "1", "--warmup", "0", "--batch", "1",
            "--threads", "1", "--no-layers"]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    message = " ".join(captured.err.split())
    assert "does not compute what it computes in eager torch" in message
    assert "BatchNorms were folded" in message and "--no-fold" in message
    code = main([*args, "--no-fold"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "onnxruntime vs eager, batch 1: check passed" in " ".join(captured.out.split())


def test_the_python_api_takes_fold_too(monkeypatch):
    _break_folding(monkeypatch)
    model = cheapconv.create_model("wrn_10_1")
    with pytest.raises(ExportCheckError, match="fold=False in Python"):
        cheapconv.profile(model, runtime="pt2", repeats=1, warmup=0, batch=1, memory=False, per_layer=False)
    p = cheapconv.profile(model, runtime="pt2", repeats=1, warmup=0, batch=1, memory=False, per_layer=False,
                          fold=False)
    assert p.checks[1].startswith("check passed")


def test_no_fold_reaches_every_export_the_runtimes_make(monkeypatch):
    """profile_many (compare) and the sweep's reference timer pass fold on to every export."""
    from cheapconv.measure import profile_many
    from cheapconv.measure.runtimes import ReferenceTimer

    seen = []
    runtimes = importlib.import_module("cheapconv.measure.backends._exported")   # the exporting runtimes call it
    real = runtimes.deployable
    monkeypatch.setattr(runtimes, "deployable", lambda model, **kw: seen.append(kw["fold"]) or real(model, **kw))
    models = [nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval() for _ in range(2)]
    profile_many(models, (3, 8, 8), runtime="pt2", repeats=1, warmup=0, batch=1, memory=False, fold=False)
    timer = ReferenceTimer(models[0], (3, 8, 8), "pt2", repeats=1, warmup=0, fold=False)
    try:
        timer.time(models[1])
    finally:
        timer.close()
    assert seen == [False] * 4


def test_no_fold_in_a_runtime_that_exports_nothing_is_said(capsys):
    code = main(["profile", "wrn_10_1", "--repeats", "1", "--warmup", "0", "--batch", "1", "--threads", "1",
                 "--no-layers", "--no-fold"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--no-fold has no effect with --runtime torch" in " ".join(captured.err.split())
