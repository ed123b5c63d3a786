"""A saved student can be started from its teacher again (issue 24, point 5): :func:`cheapconv.load` restores the
plan that :func:`cheapconv.init_from_teacher` and :func:`cheapconv.reconstruct` pair sites by, whatever the
storage kind, and ``cheapconv cheapen STUDENT --teacher TEACHER --init teacher --calib-data D`` does it from the
command line. Errors say exactly what to pass."""

from __future__ import annotations

import warnings

import pytest
import torch

import cheapconv
from cheapconv.errors import UsageError
from cheapconv.store import graph_codec
from cheapconv_cli.main import main


def _cheapen(teacher, spec, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(teacher, spec, **kwargs)


@pytest.fixture
def teacher():
    return cheapconv.create_model("wrn_10_1").eval()


def _not_describable(*args, **kwargs):
    raise graph_codec.NotDescribable("forced by the test")


@pytest.mark.parametrize("storage", ["graph", "recipe"])
@pytest.mark.parametrize("spec", ["LR(0.5)", "B(2)"])
def test_a_loaded_student_initialises_and_reconstructs_like_the_one_in_memory(tmp_path, teacher, monkeypatch,
                                                                              spec, storage):
    student = _cheapen(teacher, spec)
    path = tmp_path / "s.pt"
    with monkeypatch.context() as patch:
        if storage == "recipe":       # a student whose graph cannot be stored as data is rebuilt by name
            patch.setattr(graph_codec, "describe_graph_module", _not_describable)
        assert cheapconv.save(student, path) == storage
    loaded = cheapconv.load(path)
    assert [e.layer for e in loaded.cheapconv_plan.replaced] == [e.layer for e in student.cheapconv_plan.replaced]

    records = cheapconv.init_from_teacher(loaded, teacher)
    assert [r.kind for r in records] == [r.kind for r in cheapconv.init_from_teacher(student, teacher)]
    mine, theirs = loaded.state_dict(), student.state_dict()
    assert all(torch.allclose(mine[k], theirs[k]) for k in theirs)     # the same closed forms as in memory
    assert loaded.cheapconv_recipe["init"] == "teacher"

    report = cheapconv.reconstruct(loaded, teacher, torch.randn(16, 3, 32, 32), samples=16, steps=1,
                                   progress=False)
    assert len(report.sites) == len(student.cheapconv_plan.replaced)
    out = tmp_path / "r.pt"
    cheapconv.save(loaded, out)
    assert cheapconv.read_recipe(out)["init"] == "teacher"


def test_a_file_without_a_plan_or_another_teacher_says_what_to_pass(tmp_path, teacher):
    cheapconv.save(teacher, tmp_path / "t.pt")
    with pytest.raises(UsageError, match="was not cheapened: its file records no plan.*Pass the student file"):
        cheapconv.reconstruct(cheapconv.load(tmp_path / "t.pt"), teacher, torch.randn(4, 3, 32, 32),
                              progress=False)
    cheapconv.save(_cheapen(teacher, "LR(0.5)"), tmp_path / "s.pt")
    other = cheapconv.create_model("wrn_10_1", num_classes=5)
    with pytest.raises(UsageError, match=r"not the model the student was cheapened from: fc.weight \[10, 64\]"):
        cheapconv.init_from_teacher(cheapconv.load(tmp_path / "s.pt"), other)


# ------------------------------------------------------------------------------------------------- CLI

def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_starts_a_saved_student_from_its_teacher(tmp_path, capsys, teacher):
    cheapconv.save(teacher, tmp_path / "t.pt")
    code, _, err = _cli(capsys, "cheapen", tmp_path / "t.pt", "--block", "G(4)", "-o", tmp_path / "s.pt")
    assert code == 0, err
    code, out, err = _cli(capsys, "cheapen", tmp_path / "s.pt", "--teacher", tmp_path / "t.pt", "--init", "teacher",
                          "--calib-data", "synthetic:3x32x32:10:16", "--calib-samples", "8", "--calib-steps", "1",
                          "-o", tmp_path / "r.pt")
    assert code == 0, err
    assert "Initialised from the teacher" in out and "Reconstruction on 8 calibration images" in out
    assert cheapconv.read_recipe(tmp_path / "r.pt")["init"] == "teacher"
    assert cheapconv.load(tmp_path / "r.pt")(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("extra, needle", [
    ([], "--teacher TEACHER --init teacher"),                              # a saved student, nothing to do
    (["--teacher", "{t}"], "add --init teacher"),
    (["--teacher", "{t}", "--init", "teacher", "--block", "G(4)"], "drop --block/--policy/--policy-file"),
])
def test_cli_restart_errors_say_what_to_pass(tmp_path, capsys, teacher, extra, needle):
    cheapconv.save(teacher, tmp_path / "t.pt")
    cheapconv.save(_cheapen(teacher, "G(4)"), tmp_path / "s.pt")
    argv = [a.format(t=tmp_path / "t.pt") for a in extra]
    code, out, err = _cli(capsys, "cheapen", tmp_path / "s.pt", *argv, "-o", tmp_path / "r.pt")
    assert code == 2 and needle in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "r.pt").exists()


def test_cli_restart_of_a_teacher_file_says_it_is_not_a_student(tmp_path, capsys, teacher):
    cheapconv.save(teacher, tmp_path / "t.pt")
    code, _, err = _cli(capsys, "cheapen", tmp_path / "t.pt", "--teacher", tmp_path / "t.pt", "--init", "teacher",
                        "-o", tmp_path / "r.pt")
    assert code == 2 and "not a cheapened student" in err and "drop --teacher and give --block SPEC" in err
