"""int8 ONNX (issue 29): ``export --quantize int8`` calibrated on the given data as the model is fed, checked against
float32 on held-out images (a model that quantises badly is refused, with the figure), runnable with onnxruntime
alone; the ``onnxruntime-int8`` latency runtime; onnxruntime missing names the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import numpy as np  # noqa: E402 - after the skips: onnxruntime brings it
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from cheapconv.errors import UsageError  # noqa: E402
from cheapconv.exporter import ExportCheckError, export  # noqa: E402
from cheapconv.measure.quantization import calibration_images, quantize_onnx  # noqa: E402
from cheapconv.models import create_model  # noqa: E402
from cheapconv.models.preprocessing import Preprocessing  # noqa: E402
from cheapconv_cli.main import main  # noqa: E402

DATA = "synthetic:3x32x32:10:200"
FAST = dict(calib_samples=32, check_samples=64)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _wrn(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("wrn_10_1").eval()
    model.cheapconv_preprocessing = Preprocessing((3, 32, 32), mean, std)
    return model


def _input_scale(path) -> float:
    """The calibrated scale of the graph input's QuantizeLinear: its range / 255."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    return float(inits[node.input[1]])


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    model = _wrn()
    report = export(model, tmp / "m.onnx", "onnx", quantize="int8", calib_data=DATA, **FAST)
    return tmp, model, report


def test_int8_export_is_quantised_checked_and_recorded(int8_file):
    tmp, _, report = int8_file
    ops = {n.op_type for n in onnx.load(str(tmp / "m.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    card = json.loads((tmp / "m.onnx.json").read_text())
    q = card["quantization"]
    assert q == report.quantization and q["mode"] == "int8" and q["format"] == "QDQ" and q["calibration_images"] == 32
    assert q["check"]["images"] == 64 and q["check"]["passed"] and 0.9 <= q["check"]["agreement"] <= 1
    assert q["check"]["accuracy_fp32"] is not None   # the synthetic data has labels


def test_int8_file_runs_without_cheapconv_close_to_fp32(int8_file):
    """onnxruntime and numpy only in a fresh process; int8 within 10 % of the largest fp32 logit on fixed inputs
    (four test images, fed as the model records: int8 ranges hold for the data they were calibrated on)."""
    tmp, model, _ = int8_file
    _, x, _ = calibration_images(DATA, model, (3, 32, 32), samples=1, check=4)
    with torch.no_grad():
        want = model(x)
    np.save(tmp / "x.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        sys.modules["cheapconv"] = None
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
        np.save("got.npy", session.run(None, {"input": np.load("x.npy")})[0])
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    got = torch.from_numpy(np.load(tmp / "got.npy"))
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 0.1 * want.abs().max()


def test_calibration_uses_the_models_preprocessing(tmp_path):
    """The same data fed with another recorded mean/std gives other input ranges: the images were normalised as
    the record says (std 4× smaller: ranges about 4× wider)."""
    scales = []
    for i, std in enumerate([(0.25,) * 3, (0.0625,) * 3]):
        export(_wrn(std=std), tmp_path / f"m{i}.onnx", "onnx", quantize="int8", calib_data=DATA, **FAST)
        scales.append(_input_scale(tmp_path / f"m{i}.onnx"))
    assert 3 < scales[1] / scales[0] < 5, scales


def test_calibration_uses_the_given_images(tmp_path):
    src = tmp_path / "f.onnx"
    export(_wrn(), src, "onnx")
    images = torch.rand(16, 3, 32, 32)
    quantize_onnx(src, tmp_path / "a.onnx", images)
    quantize_onnx(src, tmp_path / "b.onnx", images * 10)
    a, b = _input_scale(tmp_path / "a.onnx"), _input_scale(tmp_path / "b.onnx")
    assert a == pytest.approx(images.max().item() / 255, rel=0.02) and b == pytest.approx(10 * a, rel=0.02)


class _Outlier(nn.Module):
    """A small CNN whose middle activation holds one channel 10⁴ times larger than the others, which the next conv
    ignores: exact in fp32, but per-tensor int8 ranges leave the other channels no resolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.conv1.weight[0] *= 1e4
            self.conv1.bias[0] = 1e4
            self.conv2.weight[:, 0] = 0
            self.head.weight.mul_(20)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def test_a_model_that_quantises_badly_is_refused_with_the_figure(tmp_path, capsys):
    with pytest.raises(ExportCheckError, match=r"top-1 agreement with fp32 \d+\.\d\d %.*accept-quantization-loss"):
        export(_Outlier(), tmp_path / "bad.onnx", "onnx", input_shape=(3, 32, 32), quantize="int8", calib_data=DATA,
               **FAST)
    assert not list(tmp_path.iterdir())     # nothing written, no card
    with pytest.warns(UserWarning, match="departs from float32"):
        report = export(_Outlier(), tmp_path / "bad.onnx", "onnx", input_shape=(3, 32, 32), quantize="int8",
                        calib_data=DATA, accept_quantization_loss=True, **FAST)
    assert not report.quantization["check"]["passed"] and (tmp_path / "bad.onnx").is_file()


def test_dynamic_quantises_the_linear_layers_only(tmp_path):
    model = _wrn()
    report = export(model, tmp_path / "d.onnx", "onnx", quantize="dynamic")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d.onnx")).graph.node}
    assert "MatMulInteger" in ops and "Conv" in ops and "QuantizeLinear" not in ops
    assert report.quantization["mode"] == "dynamic" and "check" not in report.quantization   # no data: no check


def test_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--calib-data"):
        export(_wrn(), tmp_path / "m.onnx", "onnx", quantize="int8")
    with pytest.raises(UsageError, match="--format onnx"):
        export(_wrn(), tmp_path / "m.pt2", "pt2", quantize="int8", calib_data=DATA)
    with pytest.raises(UsageError, match="linear layers"):   # dynamic where nothing is linear
        export(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "c.onnx", "onnx", input_shape=(3, 8, 8),
               quantize="dynamic")
    assert not list(tmp_path.iterdir())


def test_onnxruntime_missing_names_the_extra(tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.pt"
    assert run(capsys, "cheapen", "wrn_10_1", "--block", "G(2)", "-o", str(model))[0] == 0
    for name in ("onnxruntime", "onnxruntime.quantization"):
        monkeypatch.setitem(sys.modules, name, None)     # any import of it fails
    with pytest.raises(UsageError, match=r"pip install 'cheapconv\[export\]'"):
        quantize_onnx(tmp_path / "any.onnx", tmp_path / "q.onnx", torch.rand(2, 3, 32, 32))
    code, _, err = run(capsys, "export", str(model), "--format", "onnx", "--quantize", "int8", "--calib-data", DATA,
                       "-o", str(tmp_path / "q.onnx"))
    assert code == 2 and "cheapconv[export]" in err
    code, _, err = run(capsys, "profile", str(model), "--runtime", "onnxruntime-int8", "--batch", "1")
    assert code == 2 and "cheapconv[export]" in err


def test_export_command_and_evaluate_the_int8_file(tmp_path, capsys):
    model = tmp_path / "s.pt"
    assert run(capsys, "cheapen", "wrn_10_1", "--block", "G(2)", "-o", str(model))[0] == 0
    out_file = tmp_path / "s8.onnx"
    code, out, err = run(capsys, "export", str(model), "--format", "onnx", "--quantize", "int8", "--calib-data", DATA,
                         "--calib-samples", "32", "-o", str(out_file))
    assert code == 0, err
    assert "int8: quantised check on 200 held-out images: top-1 agreement with fp32" in out
    code, out, err = run(capsys, "evaluate", str(out_file), "--data", DATA, "--json")
    assert code == 0, err
    scored, card = json.loads(out), json.loads((tmp_path / "s8.onnx.json").read_text())
    # the check read the whole test split (200 < 500 images): evaluate scores the int8 file alike
    assert scored["n"] == 200 and scored["top1"] == pytest.approx(card["quantization"]["check"]["accuracy_int8"])
    code, _, err = run(capsys, "export", str(model), "--format", "onnx", "--calib-data", DATA, "-o",
                       str(tmp_path / "x.onnx"))
    assert code == 2 and "--quantize int8" in err
    code, _, err = run(capsys, "export", str(model), "--format", "onnx", "--keep-float", "conv1", "-o",
                       str(tmp_path / "x.onnx"))
    assert code == 2 and "--keep-float" in err and "--quantize int8" in err
    code, _, err = run(capsys, "export", str(model), "--format", "onnx", "--quantize", "int8", "--calib-data", DATA,
                       "--calib-samples", "32", "--keep-float", "stem9", "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "stem9" in err and "named_modules" in err and "Traceback" not in err
    code, out, err = run(capsys, "export", str(model), "--format", "onnx", "--quantize", "int8", "--calib-data", DATA,
                         "--calib-samples", "32", "--keep-float", "block1.0", "-o", str(tmp_path / "k.onnx"))
    assert code == 0, err
    card = json.loads((tmp_path / "k.onnx.json").read_text())
    assert card["quantization"]["float32_modules"] == ["block1.0"] and card["quantization"]["float32_nodes"] >= 2
    assert not (tmp_path / "x.onnx").exists()


def test_profile_in_onnxruntime_int8(tmp_path, capsys):
    """The runtime is one file: profile (and every command taking --runtime) accepts it, per-block timings too."""
    model = tmp_path / "s.pt"
    assert run(capsys, "cheapen", "wrn_10_1", "--block", "G(2)", "-o", str(model))[0] == 0
    code, out, err = run(capsys, "profile", str(model), "--runtime", "onnxruntime-int8", "--repeats", "1",
                         "--warmup", "0", "--batch", "1", "--threads", "1")
    assert code == 0, err
    assert "int8 static QDQ" in out and "onnxruntime-int8 vs eager, batch 1: check passed" in out
    assert "float32 input, int8 inside" in " ".join(out.split())
    assert "timed in onnxruntime-int8" in out and "calibrated on 32 random inputs" in err


def _run_onnx(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_keep_float_leaves_the_named_modules_in_float32(tmp_path):
    """The outlier channel ruins per-tensor int8 between conv1 and conv2; with both kept in float32 that tensor is
    never quantised, so the int8 file's outputs come back close to fp32 (and the head is still quantised). Keeping
    conv2 alone does not help: conv1's quantised output is quantised for it (the docstring's rule)."""
    src = tmp_path / "o.onnx"
    export(_Outlier(), src, "onnx", input_shape=(3, 32, 32))
    images = torch.rand(32, 3, 32, 32)
    assert quantize_onnx(src, tmp_path / "all.onnx", images)["activations"].startswith("uint8")
    info = quantize_onnx(src, tmp_path / "mixed.onnx", images, keep_float=["conv1", "conv2"])
    assert info["float32_modules"] == ["conv1", "conv2"] and info["float32_nodes"] >= 2
    fp32 = _run_onnx(src, images)
    err_all = np.abs(_run_onnx(tmp_path / "all.onnx", images) - fp32).max()
    err_mixed = np.abs(_run_onnx(tmp_path / "mixed.onnx", images) - fp32).max()
    assert err_mixed < err_all / 10
    mixed = onnx.load(str(tmp_path / "mixed.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in mixed.node)       # the head is still int8
    assert {n.name for n in mixed.node if n.op_type == "Conv"} and not any(
        n.op_type == "DequantizeLinear" and n.output[0] in {i for c in mixed.node if c.op_type == "Conv"
                                                            for i in c.input} for n in mixed.node)
    with pytest.raises(UsageError, match="no node of the exported graph comes from that module.*conv9|conv9.*no node"):
        quantize_onnx(src, tmp_path / "x.onnx", images, keep_float=["conv9"])
    assert not (tmp_path / "x.onnx").exists()
