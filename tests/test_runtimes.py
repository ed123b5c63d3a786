"""Latency in the runtime a student will run in (issue 14): each runtime's timer gives positive figures that
order models by the work they do; a runtime that is not installed fails with the extra to install; the
runtime's output is checked against eager mode before anything is timed, and a wrong export is refused."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import cheapconv
import cheapconv.measure.latency as latency_module
from cheapconv.errors import CheapconvError, UsageError
from cheapconv.measure import exports
from cheapconv.measure.exports import ExportCheckError
from cheapconv.measure.latency import time_side_by_side
from cheapconv.measure.runtimes import RUNTIMES, check_runtime, make_runner, measure_in_runtime
from cheapconv_cli.main import main

FAST_RUNTIMES = ["torch", "pt2", "onnxruntime"]   # compile takes ~5-20 s to compile two models: slow suite


def _light() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()


def _heavy() -> nn.Module:
    """About 200× the MACs of :func:`_light` at the same input (three dense 3×3 convs of 48 channels)."""
    return nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                         nn.Conv2d(48, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 48, 3, padding=1)).eval()


def _assert_ordered(light, heavy, runtime):
    for lat in (light, heavy):
        assert lat.runtime == runtime and lat.repeats == 7 and lat.threads == 1
        assert 0 < lat.min_ms <= lat.q1_ms <= lat.median_ms <= lat.q3_ms
    # ~200× the work; timed side by side, so machine load hits both alike: a 3× margin cannot be noise
    assert heavy.median_ms > 3 * light.median_ms, (light, heavy)


@pytest.mark.parametrize("runtime", FAST_RUNTIMES)
def test_each_runtime_times_more_work_as_slower(runtime):
    light, heavy = measure_in_runtime([_light(), _heavy()], (1, 3, 32, 32), runtime, warmup=1, repeats=7,
                                      threads=1)
    _assert_ordered(light, heavy, runtime)


@pytest.mark.slow
def test_compile_times_more_work_as_slower():
    light, heavy = measure_in_runtime([_light(), _heavy()], (1, 3, 32, 32), "compile", warmup=1, repeats=7,
                                      threads=1)
    _assert_ordered(light, heavy, "compile")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("runtime", ["torch", "compile", "pt2"])
def test_cuda_timing_in_each_runtime(runtime):
    light, heavy = measure_in_runtime([_light(), _heavy()], (8, 3, 64, 64), runtime, device="cuda", warmup=2,
                                      repeats=7, threads=1)
    assert light.device.startswith("cuda") and heavy.median_ms > light.median_ms > 0


def test_the_registry_and_unknown_names():
    # one file each, in measure/backends (onnxruntime_int8.py is onnxruntime-int8)
    assert list(RUNTIMES) == ["compile", "onnxruntime", "onnxruntime-int8", "pt2", "torch"]
    with pytest.raises(UsageError, match=r"Unknown runtime 'tensorrt'\. Valid: compile, onnxruntime, "
                                         r"onnxruntime-int8, pt2, torch\."):
        check_runtime("tensorrt")
    with pytest.raises(UsageError, match="float32 graph"):
        check_runtime("onnxruntime", dtype="bf16")
    with pytest.raises(UsageError, match="channels-last"):
        check_runtime("pt2", channels_last=True)
    assert check_runtime("compile", dtype="bf16", channels_last=True).name == "compile"


def test_an_unavailable_runtime_fails_cleanly_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'cheapconv\[export\]'"):
        measure_in_runtime([_light()], (1, 3, 8, 8), "onnxruntime")
    with pytest.raises(UsageError, match="'onnxruntime', which is not installed"):
        cheapconv.profile(_light(), (3, 8, 8), runtime="onnxruntime", repeats=1, memory=False)
    code = main(["profile", "wrn_10_1", "--runtime", "onnxruntime", "--repeats", "1", "--batch", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "cheapconv[export]" in err and "Traceback" not in err
    code = main(["compare", "wrn_10_1", "wrn_10_1", "--runtime", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 2 and "--runtime" in err and "onnxruntime" in err


def test_the_check_runs_before_any_timing(monkeypatch):
    events = []
    real_time = latency_module.timed_forward
    monkeypatch.setattr(latency_module, "timed_forward", lambda m, x, d: events.append("time") or real_time(m, x, d))
    runner = make_runner(_heavy(), "pt2", (3, 16, 16), threads=1)
    real_check = runner.check
    runner.check = lambda x: events.append("check") or real_check(x)
    time_side_by_side([runner], (2, 3, 16, 16), warmup=1, repeats=3, threads=1)
    assert events == ["check", "time", "time", "time"]
    (check,) = runner.checks.values()
    assert check.passed and check.input_shape == (2, 3, 16, 16) and check.max_abs_diff < 1e-4
    # a new batch size is checked again before it is timed
    time_side_by_side([runner], (5, 3, 16, 16), warmup=0, repeats=1, threads=1)
    assert events[-2:] == ["check", "time"] and set(runner.checks) == {(2, 3, 16, 16), (5, 3, 16, 16)}


class _Off(nn.Module):
    """A model that computes slightly more than the one it wraps: what a broken exporter might write."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 1.01


@pytest.mark.parametrize("runtime,fmt", [("pt2", "pt2"), ("onnxruntime", "onnx")])
def test_a_wrong_export_is_refused_and_never_timed(monkeypatch, runtime, fmt):
    real_write = exports.WRITERS[fmt]
    monkeypatch.setitem(exports.WRITERS, fmt,
                        lambda model, example, path: real_write(_Off(model).eval(), example, path))
    timed = []
    monkeypatch.setattr(latency_module, "timed_forward", lambda *a: timed.append(a) or 1.0)
    with pytest.raises(ExportCheckError, match=f"in {runtime} does not compute what it computes in eager torch, "
                                               "so it was not timed: check FAILED"):
        measure_in_runtime([_light(), _heavy()], (1, 3, 8, 8), runtime, warmup=0, repeats=1)
    assert timed == []


def test_the_export_command_and_the_runtimes_share_one_writer_and_check():
    import cheapconv.exporter as exporter

    assert exporter._WRITERS is exports.WRITERS and exporter._RUNNERS is exports.RUNNERS
    assert exporter.ExportCheckError is ExportCheckError


def test_onnx_sessions_opened_for_timing_do_not_spin_wait(tmp_path):
    """Spinning pool threads of sessions timed in turn take the cores from the one being timed (on 2 cores
    WRN-40-2 ran 4.7x slower interleaved than alone), so every session is opened with spinning off."""
    pytest.importorskip("onnxruntime")
    path = str(tmp_path / "m.onnx")
    exports.write_export(_light(), "onnx", torch.randn(2, 3, 8, 8), path, label="light")
    session = exports.onnx_session(path, threads=1)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1


def test_profile_in_a_runtime_times_blocks_as_small_graphs():
    student = cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)")
    p = cheapconv.profile(student, runtime="pt2", repeats=2, warmup=0, batch=2, memory=False)
    assert p.runtime == "pt2" and "torch.export" in p.describe_setting()
    assert set(p.checks) == {1, 2} and all(line.startswith("check passed") for line in p.checks.values())
    assert len(p.blocks) == 6 and all(lat.runtime == "pt2" for b in p.blocks for lat in (*b.before.values(),
                                                                                        *b.after.values()))
    assert all(b.before[1].median_ms > 0 and b.after[2].median_ms > 0 for b in p.blocks)


def test_blocks_that_cannot_be_exported_alone_leave_whole_model_timing_said_plainly(monkeypatch):
    real_write = exports.WRITERS["pt2"]

    def whole_models_only(model, example, path):
        if example.shape[1] != 3:  # a block's input has the stage's channels, the model's has 3
            raise RuntimeError("cannot export this graph")
        real_write(model, example, path)

    monkeypatch.setitem(exports.WRITERS, "pt2", whole_models_only)
    student = cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)")
    p = cheapconv.profile(student, runtime="pt2", repeats=1, warmup=0, batch=1, memory=False)
    assert p.latency[1].runtime == "pt2" and p.blocks == []
    assert any("cannot be timed on its own in pt2" in n for n in p.notes)
    assert any("no block could be timed on its own in pt2; whole-model latency only" in n for n in p.notes)


def test_profile_and_compare_commands_state_the_runtime_and_its_check(tmp_path, capsys):
    src = tmp_path / "s.pt"
    cheapconv.save(cheapconv.cheapen(cheapconv.create_model("wrn_10_1"), "G(2)"), src)
    code = main(["profile", str(src), "--runtime", "pt2", "--repeats", "1", "--warmup", "0", "--batch", "2",
                 "--threads", "1", "--no-layers"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = " ".join(captured.out.split())  # rich wraps titles at the terminal width
    assert "torch.export .pt2" in text and "1 intra-op threads" in text
    assert "pt2 vs eager, batch 2: check passed" in text
    code = main(["compare", "wrn_10_1", str(src), "--runtime", "onnxruntime", "--repeats", "1", "--warmup", "0",
                 "--batch", "1", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = " ".join(captured.out.split())
    assert "onnxruntime" in text and "CPUExecutionProvider" in text
    assert text.count("onnxruntime vs eager, batch 1: check passed") == 2


def test_a_model_the_runtime_cannot_export_is_a_clear_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on the values: torch.export cannot guard it
                return x * 2
            return x

    with pytest.raises(CheapconvError, match="cannot be timed in pt2"):
        measure_in_runtime([DataDependent()], (1, 3, 4, 4), "pt2")
