"""The recipe for students that start from their teacher: recorded by cheapen/reconstruct, kept by save and
load, applied by ``cheapconv distill`` where the command line leaves it open, warned about in ``distill()``."""

from __future__ import annotations

import warnings

import pytest
import torch

import cheapconv
from cheapconv import DistillConfig
from cheapconv.train.config import FINE_TUNING
from cheapconv.train.fine_tuning import check_start, starts_from_teacher
from cheapconv_cli.main import main

DATA = "synthetic:3x32x32:10:16"
SHORT = ["--max-steps", "1", "--batch-size", "8", "--no-progress"]


def _student(teacher, init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(teacher, "G(4)", init=init)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return cheapconv.create_model("wrn_10_1").eval()


def test_fine_tuning_config_changes_only_clip_and_schedule():
    cfg, paper = DistillConfig.fine_tuning(epochs=1), DistillConfig(epochs=1)
    assert (cfg.grad_clip, cfg.schedule) == (1.0, "cosine") == (FINE_TUNING["grad_clip"], FINE_TUNING["schedule"])
    changed = {k for k, v in cfg.to_dict().items() if paper.to_dict()[k] != v}
    assert changed == {"grad_clip", "schedule"}
    assert DistillConfig.fine_tuning(grad_clip=2.0).grad_clip == 2.0      # the caller's settings win


def test_the_start_is_recorded_and_survives_save_and_load(teacher, tmp_path):
    assert not starts_from_teacher(_student(teacher, "random"))
    assert starts_from_teacher(_student(teacher, "teacher"))
    # a random-initialised student fitted by reconstruct starts from its teacher too
    student = _student(teacher, "random")
    cheapconv.reconstruct(student, teacher, torch.randn(8, 3, 32, 32), samples=8, steps=0, progress=False)
    assert starts_from_teacher(student)
    assert student.cheapconv_recipe["reconstructed"] == {"samples": 8, "steps": 0}
    cheapconv.save(student, tmp_path / "s.pt")
    assert starts_from_teacher(cheapconv.load(tmp_path / "s.pt"))
    assert cheapconv.read_recipe(tmp_path / "s.pt")["init"] == "teacher"


def test_check_start_warns_only_for_an_unclipped_teacher_initialised_student(teacher):
    warm, cold = _student(teacher, "teacher"), _student(teacher, "random")
    with pytest.warns(UserWarning, match="starts from its teacher.*DistillConfig.fine_tuning"):
        check_start(warm, DistillConfig(epochs=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_start(warm, DistillConfig.fine_tuning(epochs=1))
        check_start(warm, DistillConfig(epochs=1, grad_clip=5.0))
        check_start(cold, DistillConfig(epochs=1))


def _distill(capsys, tmp_path, student_file, *extra):
    code = main(["distill", "--teacher", str(tmp_path / "t.pt"), "--student", str(student_file), "--data", DATA,
                 "-o", str(tmp_path / "out.pt"), *SHORT, *extra])
    err = capsys.readouterr().err
    return code, err, (cheapconv.read_recipe(tmp_path / "out.pt")["training"]["config"] if code == 0 else None)


def test_cli_distill_trains_a_teacher_initialised_student_with_the_fine_tuning_recipe(teacher, tmp_path, capsys):
    cheapconv.save(teacher, tmp_path / "t.pt")
    cheapconv.save(_student(teacher, "teacher"), tmp_path / "warm.pt")
    cheapconv.save(_student(teacher, "random"), tmp_path / "cold.pt")

    code, err, cfg = _distill(capsys, tmp_path, tmp_path / "warm.pt")
    assert code == 0, err
    assert (cfg["grad_clip"], cfg["schedule"]) == (1.0, "cosine")
    assert "starts from its teacher" in err and "--grad-clip 1 " in err and "--schedule cosine" in err
    # resuming the finished run: the resumed config must match the run's (same defaults), no training
    code = main(["distill", "--teacher", str(tmp_path / "t.pt"), "--student", str(tmp_path / "warm.pt"),
                 "--data", DATA, "-o", str(tmp_path / "out.pt"), *SHORT, "--resume"])
    assert code == 0, capsys.readouterr().err

    code, err, cfg = _distill(capsys, tmp_path, tmp_path / "warm.pt", "--grad-clip", "3", "--schedule", "multistep")
    assert code == 0, err
    assert (cfg["grad_clip"], cfg["schedule"]) == (3.0, "multistep")   # what the user gives wins
    assert "starts from its teacher" not in err

    code, err, cfg = _distill(capsys, tmp_path, tmp_path / "cold.pt")
    assert code == 0, err
    assert (cfg["grad_clip"], cfg["schedule"]) == (None, "multistep")  # the paper's recipe for random starts
    assert "starts from its teacher" not in err


def test_cli_distill_fine_tunes_at_the_lr_its_teacher_was_trained_with(tmp_path, capsys):
    """A student that starts from its teacher trains at the teacher's recorded lr unless --lr is given (measured:
    benchmarks/pretrained_journey/README.md); a teacher without a training record leaves the default."""
    assert main(["train", "wrn_10_1", "--data", DATA, "--lr", "0.02", *SHORT, "-o", str(tmp_path / "t.pt")]) == 0
    trained = cheapconv.load(tmp_path / "t.pt")
    assert cheapconv.train.fine_tuning.teacher_lr(trained) == 0.02
    cheapconv.save(_student(trained, "teacher"), tmp_path / "warm.pt")
    capsys.readouterr()
    code, err, cfg = _distill(capsys, tmp_path, tmp_path / "warm.pt")
    assert code == 0, err
    assert cfg["lr"] == 0.02 and "--lr 0.02 (its teacher's)" in " ".join(err.split())
    code, err, cfg = _distill(capsys, tmp_path, tmp_path / "warm.pt", "--lr", "0.05", "--overwrite")
    assert code == 0, err
    assert cfg["lr"] == 0.05 and "(its teacher's)" not in err
    assert cheapconv.train.fine_tuning.teacher_lr(cheapconv.create_model("wrn_10_1")) is None
