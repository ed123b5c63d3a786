"""``compress`` end to end, tiny (issue 27): library, exact selection, assembly, reconstruction, distillation, from
Python and from the command line. No timing assertions: latency figures belong in benchmarks."""

from __future__ import annotations

import csv

import pytest
import torch

import cheapconv
from cheapconv.data import get_dataset
from cheapconv_cli.main import main

pytest.importorskip("scipy")

DATA = "synthetic:3x32x32:10:256"
SMALL = {"samples": 64, "held_out": 32, "families": ["grouped", "bottleneck"], "reconstruct_samples": 64,
         "progress": False}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return cheapconv.create_model("wrn_10_1").eval()


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_params_budget_is_met_exactly_and_the_library_is_reused(teacher, tmp_path):
    data = get_dataset(DATA, "train", augment=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = cheapconv.compress(teacher, data, "50%", metric="params", library=tmp_path / "lib", epochs=0, **SMALL)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())      # the teacher is only read
    limit = 0.5 * cheapconv.count_params(teacher, "paper")
    assert cheapconv.count_params(result.student, "paper") == result.counts["student"]["paper"] <= limit
    assert result.selection.chosen and result.met and result.budget is None and result.training is None
    assert result.reconstruction is not None and result.library_dir == tmp_path / "lib"
    # the predicted count is exact: the selection's figure is the assembled student's
    assert result.selection.predicted_paper == result.counts["student"]["paper"]
    # another budget from the same library: nothing refitted (the options' files are not rewritten)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "lib" / "weights").iterdir()}
    again = cheapconv.compress(teacher, data, "30%", metric="params", library=tmp_path / "lib", epochs=0, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lib" / "weights").iterdir()} == stamps
    assert again.counts["student"]["paper"] <= 0.3 * cheapconv.count_params(teacher, "paper")


@pytest.mark.slow
def test_a_latency_budget_is_measured_and_the_student_distilled(teacher, tmp_path):
    data = get_dataset(DATA, "train", augment=False)
    val = get_dataset(DATA, "test")
    result = cheapconv.compress(teacher, data, "90%", library=tmp_path / "lib", epochs=1, val_data=val, repeats=3,
                                rounds=2, **SMALL)
    assert 1 <= len(result.budget.rounds) <= 2
    assert all(r.measured > 0 and r.predicted > 0 for r in result.budget.rounds)
    assert result.measured is not None and set(result.measured.student_ms) == {1}
    assert result.training is not None and result.training.start is not None and result.training.end is not None
    table = result.table()
    assert table.row_count == 4     # params, MACs, batch-1 latency, accuracy start -> end


def _fake_timer(first: float, then: float, loop_calls: int = 2):
    """A stand-in for compress's side-by-side measurement: the teacher 10 ms, the student ``first``× of it on the
    first ``loop_calls`` calls (the loop's measurement and its confirmation) and ``then``× after; returns it and
    the list its calls are counted in."""
    from cheapconv.compression import runner

    calls: list[int] = []

    def measure(teacher, student, lib, batches, **kw):
        calls.append(1)
        ratio = first if len(calls) <= loop_calls else then
        return runner.Measured({b: 10.0 for b in batches}, {b: 10.0 * ratio for b in batches}, "torch", 1)

    return measure, calls


def test_a_budget_the_loop_cannot_meet_says_why_it_stopped(teacher, tmp_path, monkeypatch):
    """Every measurement 3× the teacher against a 100 % budget: one round, then the corrected budget (the budget
    less twice the teacher's time) is below any student; the result is not met, and its notes say both that and why
    the loop stopped."""
    from cheapconv.compression import runner

    fake, calls = _fake_timer(3.0, 3.0)
    monkeypatch.setattr(runner, "_measure", fake)
    result = cheapconv.compress(teacher, get_dataset(DATA, "train", augment=False), "100%",
                                library=tmp_path / "lib", epochs=0, **SMALL)
    assert not result.met and result.budget is not None and len(result.budget.rounds) == 1
    assert result.budget.rounds[0].confirmation is None and len(calls) == 2     # the loop's, then the final one
    assert any("not met as measured" in n for n in result.notes)
    assert any(n.startswith("stopped: the corrected budget") for n in result.notes)


def test_a_final_measurement_over_the_budget_is_said(teacher, tmp_path, monkeypatch):
    """The round met the budget, the measurement after training did not (a fake timer: the same student, 0.80× then
    1.05× of the teacher against a 100 % budget, which the teacher itself meets, so the library's own timings cannot
    make it unreachable): the result says so, with both figures; when both are within it, nothing."""
    from cheapconv.compression import runner

    data = get_dataset(DATA, "train", augment=False)
    for final, said in ((1.05, True), (0.95, False)):
        fake, calls = _fake_timer(0.80, final)
        monkeypatch.setattr(runner, "_measure", fake)
        result = cheapconv.compress(teacher, data, "100%", library=tmp_path / "lib", epochs=0, **SMALL)
        assert result.met and len(result.budget.rounds) == 1 and len(calls) == 3    # measured, confirmed, final
        assert result.budget.rounds[0].confirmation == pytest.approx(result.budget.rounds[0].measured)
        notes = [n for n in result.notes if "measured again after training" in n]
        assert bool(notes) == said
        if said:
            lib_ms = result.library.teacher_latency_ms
            assert f"{1.05 * lib_ms:.3f} ms" in notes[0] and f"{0.80 * lib_ms:.3f} ms" in notes[0]


def test_cli_compress_writes_a_student_that_loads(teacher, tmp_path, capsys):
    cheapconv.save(teacher, tmp_path / "t.pt")
    code, out, err = run(capsys, "compress", tmp_path / "t.pt", "--data", DATA, "--budget", "60%", "--metric",
                         "params", "--epochs", "0", "--samples", "64", "--held-out", "32", "--families",
                         "grouped,bottleneck", "--library", tmp_path / "lib", "-o", tmp_path / "s.pt")
    assert code == 0, err
    assert "Selection under" in out and "compress: teacher and student" in out
    student = cheapconv.load(tmp_path / "s.pt")
    assert cheapconv.count_params(student, "paper") <= 0.6 * cheapconv.count_params(teacher, "paper")
    # the front of other budgets from the same library, beside the student: every row within its budget, the
    # predicted loss falling as the budget grows
    rows = list(csv.DictReader((tmp_path / "s.front.csv").open()))
    assert len(rows) >= 3 and all(float(r["predicted_params"]) <= float(r["budget"]) for r in rows)
    losses = [float(r["predicted_loss"]) for r in sorted(rows, key=lambda r: float(r["budget"]))]
    assert losses == sorted(losses, reverse=True) and losses[-1] == 0.0     # 100 %: the teacher itself
    pytest.importorskip("matplotlib")
    assert (tmp_path / "s.front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compress_dry_run_and_an_unreachable_budget(teacher, tmp_path, capsys):
    cheapconv.save(teacher, tmp_path / "t.pt")
    code, out, err = run(capsys, "compress", tmp_path / "t.pt", "--data", DATA, "--budget", "50%", "--dry-run")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "sites" in flat and "options to fit and time" in flat and "block1.0.conv1+conv2" in flat
    assert not (tmp_path / "lib").exists()
    estimate = " ".join(err.split())
    assert "Estimated library build: about" in estimate and "measured now on" in estimate, err
    assert "nothing kept" in estimate
    code, _, err = run(capsys, "compress", tmp_path / "t.pt", "--data", DATA, "--budget", "1%", "--metric", "params",
                       "--epochs", "0", "--samples", "64", "--held-out", "32", "--families", "bottleneck",
                       "--library", tmp_path / "lib", "-o", tmp_path / "s.pt")
    flat = " ".join(err.split())
    assert code == 2 and "reach" in flat and "Traceback" not in err and not (tmp_path / "s.pt").exists()


def _losing_distill(end_top1: float):
    """A stand-in for distill that moves the student's weights and ends at ``end_top1`` from a start of 0.80."""
    from cheapconv.train import DistillResult

    def distill(teacher, student, train_set, *, val_data=None, config=None):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)
        return DistillResult(student, start={"top1": 0.80, "top5": 1.0, "loss": 0.5, "n": 32},
                             end={"top1": end_top1, "top5": 1.0, "loss": 0.9, "n": 32})

    return distill


def test_a_student_that_training_made_worse_is_kept_from_before_training(teacher, tmp_path, monkeypatch):
    """Where distillation ends below the start, compress says so and keeps the student from before it (the same
    architecture, the weights of assembly and reconstruction); where it ends above, it keeps nothing extra."""
    from cheapconv.compression import runner

    data = get_dataset(DATA, "train", augment=False)
    for end, kept in ((0.60, True), (0.85, False)):
        monkeypatch.setattr(runner, "distill", _losing_distill(end))
        result = cheapconv.compress(teacher, data, "50%", metric="params", library=tmp_path / "lib", epochs=1,
                                    val_data=get_dataset(DATA, "test"), **SMALL)
        notes = [n for n in result.notes if "Training ended worse than it started" in n]
        assert bool(notes) == kept and (result.before_training is not None) == kept
        if kept:
            assert "80.00 % → 60.00 %" in notes[0] and "before_training" in notes[0]
            before, after = result.before_training.state_dict(), result.student.state_dict()
            assert before.keys() == after.keys()
            weights = [k for k, v in before.items() if v.is_floating_point()]
            assert all(torch.allclose(before[k] + 1.0, after[k]) for k in weights
                       if k in dict(result.student.named_parameters()))
            assert result.before_training.cheapconv_recipe == result.student.cheapconv_recipe


def test_cli_compress_writes_the_student_before_training_beside_a_worse_one(teacher, tmp_path, capsys,
                                                                               monkeypatch):
    from cheapconv.compression import runner

    monkeypatch.setattr(runner, "distill", _losing_distill(0.60))
    cheapconv.save(teacher, tmp_path / "t.pt")
    code, out, err = run(capsys, "compress", tmp_path / "t.pt", "--data", DATA, "--budget", "60%", "--metric",
                         "params", "--epochs", "1", "--samples", "64", "--held-out", "32", "--families",
                         "grouped,bottleneck", "--library", tmp_path / "lib", "-o", tmp_path / "s.pt", "--no-front")
    assert code == 0, err
    said = " ".join(err.split())        # the console wraps long lines
    assert "Training ended worse than it started" in said and "the student before training, which scored" in said
    start, end = cheapconv.load(tmp_path / "s.before-training.pt"), cheapconv.load(tmp_path / "s.pt")
    assert cheapconv.count_params(start, "paper") == cheapconv.count_params(end, "paper")
    pairs = zip(start.state_dict().values(), end.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)
