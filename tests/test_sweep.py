"""Sweeps: block lists, Pareto fronts, the CSV/Markdown/PNG report, resuming, and the distillation hook
(exercised with cheapen-only points, a fake accuracy function and a fake distiller)."""

from __future__ import annotations

import csv

import pytest
import torch

import cheapconv
from cheapconv.errors import PolicySyntaxError, UsageError
from cheapconv.plots import pareto_front
from cheapconv.sweeper import parse_blocks, sweep
from cheapconv_cli.main import main

FAST = dict(batch=2, warmup=0, repeats=1, threads=1)


@pytest.fixture(scope="module")
def teacher():
    return cheapconv.create_model("wrn_10_1")


def test_parse_blocks_splits_outside_parentheses():
    assert parse_blocks("G(2),G(4),G(N/8),B(2),BG(2,M)") == ["G(2)", "G(4)", "G(N/8)", "B(2)", "BG(2,M)"]
    assert parse_blocks(" S-2x2 , BG(2, M/2) ") == ["S-2x2", "BG(2, M/2)"]
    with pytest.raises(PolicySyntaxError):
        parse_blocks("G(2),G(4")
    with pytest.raises(UsageError, match="twice"):
        parse_blocks("G(2),G(2)")
    with pytest.raises(UsageError, match="No block"):
        parse_blocks(" , ")


def test_pareto_front():
    assert pareto_front([1, 2, 3, 2], [3, 1, 2, 3]) == [True, True, False, False]
    assert pareto_front([1, 1], [2, 2]) == [True, True]  # equal points do not dominate each other
    assert pareto_front([5], [5]) == [True]


class FakeAccuracy:
    """Deterministic 'accuracy' that prefers more parameters; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return min(0.99, 0.5 + cheapconv.count_params(model, "paper") / 200_000)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_the_report_and_resumes(tmp_path, teacher):
    fake = FakeAccuracy()
    out = tmp_path / "sweep"
    result = sweep(teacher, ["G(2)", "B(2)", "BG(2,M)"], out, evaluate_fn=fake, **FAST)
    assert [p.label for p in result.points] == ["teacher", "G(2)", "B(2)", "BG(2,M)"]
    assert result.computed == ["S", "G(2)", "B(2)", "BG(2,M)"] and fake.calls == 4
    assert set(result.files) == {"csv", "md", "png"}
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = _csv(out / "sweep.csv")
    assert [r["block"] for r in rows] == ["teacher", "G(2)", "B(2)", "BG(2,M)"]
    for r, spec in zip(rows[1:], ["G(2)", "B(2)", "BG(2,M)"], strict=True):
        student = cheapconv.cheapen(teacher, spec)
        assert int(r["params_paper"]) == cheapconv.count_params(student, "paper")
        assert int(r["macs"]) == cheapconv.count_macs(student, (1, 3, 32, 32))
        assert float(r["latency_b1_ms"]) > 0 and float(r["speedup_b2"]) > 0
        assert float(r["error_pct"]) == pytest.approx(100 * (1 - fake(student)), abs=1e-3)
    params = [int(r["params_paper"]) for r in rows]
    errors = [float(r["error_pct"]) for r in rows]
    assert [r["pareto_params_error"] == "True" for r in rows] == pareto_front(params, errors)
    latency = [float(r["latency_b1_ms"]) for r in rows]
    assert [r["pareto_latency_error"] == "True" for r in rows] == pareto_front(latency, errors)
    md = (out / "sweep.md").read_text()
    assert "| BG(2,M) |" in md and "error %" in md and "side by side" in md

    # resume: finished points are reused as stored, only the new block is computed
    fake2 = FakeAccuracy()
    again = sweep(teacher, ["G(2)", "B(2)", "BG(2,M)", "G(N)"], out, evaluate_fn=fake2, **FAST)
    assert again.computed == ["G(N)"] and fake2.calls == 1
    assert [p.latency_b1_ms for p in again.points[:4]] == [p.latency_b1_ms for p in result.points]
    assert len(_csv(out / "sweep.csv")) == 5


def test_a_folder_of_another_configuration_is_refused(tmp_path, teacher):
    sweep(teacher, ["G(2)"], tmp_path, include_teacher=False, **FAST)
    with pytest.raises(UsageError, match="another configuration.*batch"):
        sweep(teacher, ["G(2)"], tmp_path, include_teacher=False, **{**FAST, "batch": 4})


def test_a_sweep_in_a_runtime_is_timed_there_and_not_mixed_with_another(tmp_path, teacher):
    import json

    result = sweep(teacher, ["B(2)"], tmp_path, runtime="pt2", **FAST)
    assert result.config["runtime"] == "pt2" and [p.label for p in result.points] == ["teacher", "B(2)"]
    assert all(p.latency_b1_ms > 0 and p.latency_bn_ms > 0 and p.teacher_bn_ms > 0 for p in result.points)
    assert "in torch.export .pt2" in (tmp_path / "sweep.md").read_text()
    with pytest.raises(UsageError, match="another configuration.*runtime: 'pt2' there, 'torch' now"):
        sweep(teacher, ["B(2)"], tmp_path, **FAST)
    # a folder from before runtimes existed was timed in eager torch, and resumes as such
    state = json.loads((tmp_path / "sweep.json").read_text())
    del state["config"]["runtime"]
    (tmp_path / "sweep.json").write_text(json.dumps(state))
    assert sweep(teacher, ["B(2)"], tmp_path, **FAST).computed == []


def test_the_distill_hook_is_used_and_students_are_saved(tmp_path, teacher):
    calls = []

    def fake_distill(student, the_teacher, block):
        calls.append(block)
        assert the_teacher is teacher and student is not teacher
        with torch.no_grad():
            student.fc.bias.fill_(0.5)  # "training" that leaves a mark
        return student

    result = sweep(teacher, ["G(2)"], tmp_path, distill_fn=fake_distill, evaluate_fn=FakeAccuracy(),
                   data="synthetic", epochs=1, **FAST)
    assert calls == ["G(2)"]  # the teacher is never distilled
    assert [p.distilled for p in result.points] == [False, True]
    saved = next((tmp_path / "points").glob("G_2-*.pt"))
    assert torch.all(cheapconv.load(saved).fc.bias == 0.5)
    assert "distilled on synthetic for 1 epochs" in (tmp_path / "sweep.md").read_text()


def test_default_hooks_distil_with_cheapconv_distill(tmp_path, teacher):
    """--data without hooks: the real training loop (one epoch of synthetic data), top-1 on its test split."""
    result = sweep(teacher, ["G(2)"], tmp_path, data="synthetic:3x32x32:10:128", epochs=1, **FAST)
    student_point = result.points[1]
    assert student_point.distilled and 0.0 <= student_point.accuracy <= 1.0
    assert result.points[0].accuracy is not None and not result.points[0].distilled
    assert next((tmp_path / "points").glob("G_2-*.pt")).is_file()


def test_without_accuracy_the_report_is_params_macs_latency(tmp_path, teacher):
    result = sweep(teacher, ["G(2)", "B(2)"], tmp_path, **FAST)
    assert all(p.accuracy is None for p in result.points)
    rows = _csv(tmp_path / "sweep.csv")
    assert all(r["error_pct"] == "" for r in rows) and "pareto_macs_latency" in rows[0]
    assert "not trained" in (tmp_path / "sweep.md").read_text()


def test_a_block_that_does_not_apply_is_skipped_with_a_note(tmp_path, teacher):
    result = sweep(teacher, ["G(3)", "G(2)"], tmp_path, include_teacher=False, **FAST)
    assert [p.block for p in result.points] == ["G(2)"]
    assert "G(3): skipped" in result.notes[0] and "3 groups do not divide" in result.notes[0]


def test_sweep_command(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["sweep", "wrn_10_1", "--blocks", "G(2),BG(2,M)", "-o", str(out), "--batch", "2",
                 "--repeats", "1", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| BG(2,M) |" in captured.out and "sweep.png" in captured.err
    code = main(["sweep", "wrn_10_1", "--blocks", "G(2),Q(1)", "-o", str(out)])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    code = main(["sweep", "wrn_10_1", "--blocks", "G(2)", "-o", str(tmp_path / "no" / "such")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_each_speed_up_is_the_ratio_of_the_two_times_its_row_shows(tmp_path):
    """A speed-up divides the teacher's time measured alongside the student (not the teacher row's time, taken
    at another moment): the row shows both, and a sweep whose teacher times drift says so."""
    from cheapconv.sweep_report import write_report
    from cheapconv.sweeper import SweepPoint

    points = [SweepPoint("S", 1000, 900, 10_000, 0, 2.0, 8.0, 2.0, 8.0),
              SweepPoint("G(4)", 500, 450, 5000, 4, 1.5, 5.0, 3.0, 10.0)]   # the machine got busier
    config = dict(model="m", input_size=[3, 8, 8], batch=4, repeats=3, dtype="float32", channels_last=False,
                  threads=1)
    write_report(tmp_path, points, config)
    md = (tmp_path / "sweep.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| G(4) |"))
    assert "| 1.5 (3) | 2.00× | 5 (10) | 2.00× |" in row          # 3 ÷ 1.5 and 10 ÷ 5, as shown
    assert "batch 1 ms (teacher)" in md and "alongside" in md
    assert "batch 1: the teacher took 2–3 ms" in md and "compare rows by speed-up" in md
    steady = [points[0], SweepPoint("G(4)", 500, 450, 5000, 4, 1.0, 4.0, 2.1, 8.2)]
    write_report(tmp_path, steady, config)
    assert "load changed" not in (tmp_path / "sweep.md").read_text()


def test_a_segmentation_sweep_reports_miou_error(tmp_path):
    """On segmentation data the accuracy is mIoU, so the error column and the plots say 1 − mIoU."""
    seg_teacher = cheapconv.create_model("segwrn_10_1")
    result = sweep(seg_teacher, ["G(2)"], tmp_path, data="fashion-mnist-seg:32:2", evaluate_fn=lambda m: 0.25,
                   input_size=(3, 32, 32), **FAST)
    assert [p.error for p in result.points] == [75.0, 75.0]
    report = (tmp_path / "sweep.md").read_text()
    assert "1 − mIoU %" in report and "top-1" not in report
