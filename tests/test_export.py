"""Deployment: BatchNorm folding is exact in eval mode, taps are stripped, each export format round-trips
within the stated tolerance (also in a fresh process without cheapconv), a failing check writes nothing."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.exporter import ExportCheckError, export
from cheapconv.fx.tap import Tap
from cheapconv.models import WideResNet
from cheapconv.surgery.fold import deployable
from cheapconv_cli.main import main


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_bn_folding_is_exact_in_eval_mode():
    model = _randomise_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4)))
    folded, report = deployable(model)
    assert len(report.folded) == 2 and report.kept == [] and _bns(folded) == 0
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec,folded", [
    ("S", 3),          # WRN-10-1: conv1 -> bn2 in each of the 3 blocks (the stem's output also feeds an
                       # identity shortcut, and bn1s read residual sums: those stay)
    ("G(2)", 9),       # + the BN inside each of the 6 grouped blocks
    ("B(2)", 6),       # two BNs inside each of the 3 bottlenecks; conv1 -> bn2 went with the pair
])
def test_students_fold_and_lose_their_taps(spec, folded):
    teacher = cheapconv.create_model("wrn_10_1")
    student = _randomise_bn(cheapconv.cheapen(teacher, spec).train())
    deployed, report = deployable(student)
    assert report.taps_removed == 3 and not any(isinstance(m, Tap) for m in deployed.modules())
    assert len(report.folded) == folded
    # pre-activation BNs (bn1 of blocks 2 and 3 read a residual sum) and the head BN stay
    assert _bns(deployed) == len(report.kept) >= 3
    assert not deployed.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = student.eval()(x)
        torch.testing.assert_close(deployed(x), want, rtol=1e-5, atol=1e-5)
    # the student itself is untouched: still tapped, still holding every BN
    assert any(isinstance(m, Tap) for m in student.modules())


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return _randomise_bn(cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)")).eval()


def _load_and_run(fmt: str, path, x: torch.Tensor) -> torch.Tensor:
    if fmt == "pt2":
        return torch.export.load(str(path)).module()(x)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            return torch.jit.load(str(path))(x)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_export_round_trips_within_tolerance(tmp_path, student, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    path = tmp_path / f"student.{fmt}"
    report = export(student, path, fmt)
    assert report.passed and path.is_file() and report.folded == 9 and report.taps_removed == 3
    assert report.max_abs_diff <= report.tolerance and "check passed" in report.check_line()
    # no temporary file left behind; how to feed it beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.json"]
    x = torch.randn(5, 3, 32, 32)  # a batch size the export never saw: the batch dimension is dynamic
    with torch.no_grad():
        torch.testing.assert_close(_load_and_run(fmt, path, x), student(x), rtol=1e-4, atol=1e-4)


def _fresh_python(code: str, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pt2_and_onnx_run_without_cheapconv(tmp_path, student):
    """A user with torch only (pt2) or onnxruntime only (onnx): cheapconv and the teacher's class are
    unimportable in the fresh process (and torch too, for ONNX)."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = student(x)
    export(student, tmp_path / "s.pt2", "pt2")
    torch.save({"x": x, "want": want}, tmp_path / "io.pt")
    out = _fresh_python("""
        import sys
        sys.modules["cheapconv"] = None          # any import of cheapconv now fails
        import torch
        program = torch.export.load("s.pt2")
        io = torch.load("io.pt")
        got = program.module()(io["x"])
        print((got - io["want"]).abs().max().item())
        assert "cheapconv" not in str(type(program.module()))
    """, tmp_path)
    assert float(out.strip()) < 1e-4
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    del ort
    import numpy as np

    export(student, tmp_path / "s.onnx", "onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "want.npy", want.numpy())
    out = _fresh_python("""
        import sys
        sys.modules["torch"] = None              # onnxruntime and numpy only
        sys.modules["cheapconv"] = None
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession("s.onnx", providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": np.load("x.npy")})[0]
        print(float(np.abs(got - np.load("want.npy")).max()))
    """, tmp_path)
    assert float(out.strip()) < 1e-4


def test_a_failing_check_refuses_to_write(tmp_path, student, monkeypatch):
    export_module = importlib.import_module("cheapconv.exporter")
    real = export_module._RUNNERS["pt2"]
    monkeypatch.setitem(export_module._RUNNERS, "pt2", lambda path, x: [t + 1e-2 for t in real(path, x)])
    path = tmp_path / "student.pt2"
    with pytest.raises(ExportCheckError, match="was not written: check FAILED"):
        export(student, path, "pt2")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


def test_export_command_prints_the_check_and_exit_codes(tmp_path, student, capsys, monkeypatch):
    src = tmp_path / "s.pt"
    cheapconv.save(student, src)
    out_file = tmp_path / "s.ts"
    code = main(["export", str(src), "--format", "torchscript", "-o", str(out_file)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "check passed" in captured.out and "tolerance" in captured.out and "9 folded" in captured.out
    assert out_file.is_file()

    export_module = importlib.import_module("cheapconv.exporter")
    monkeypatch.setitem(export_module._RUNNERS, "pt2", lambda path, x: [torch.zeros(3, 10)])
    code = main(["export", str(src), "--format", "pt2", "-o", str(tmp_path / "bad.pt2")])
    captured = capsys.readouterr()
    assert code == 1 and "check FAILED" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "bad.pt2").exists()

    code = main(["export", str(src), "--format", "tflite", "-o", str(tmp_path / "x")])
    assert code == 2 and "pt2, onnx, torchscript" in capsys.readouterr().err


def test_an_untraceable_model_exports_unfolded_with_a_note(tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x))
            return self.bn(self.conv(-x))

    model = Branchy().eval()
    deployed, report = deployable(model)
    assert report.folded == [] and "cannot trace" in report.notes[0]
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(deployed(x), model(x))


def test_export_keeps_the_callers_model_as_it_was(tmp_path):
    model = WideResNet(10, 1).train()
    export(model, tmp_path / "m.pt2", "pt2")
    assert model.training and _bns(model) == 7
