"""``cheapconv train / distill / evaluate``: the documented flow end to end, exit codes 0/1/2/130, data
adapters stated, missing datasets explained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import cheapconv
from cheapconv_cli.main import main

DATA = "synthetic:3x32x32:10:128"
FAST = ["--epochs", "1", "--batch-size", "32", "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_cheapen_distill_evaluate(tmp_path, capsys):
    teacher, student, trained = tmp_path / "teacher.pt", tmp_path / "s.pt", tmp_path / "trained.pt"
    code, out, err = run(capsys, "train", "wrn_10_1", "--data", DATA, "-o", str(teacher), *FAST)
    assert code == 0, err
    assert "val top-1" in out and f"Wrote {teacher}" in err
    assert (tmp_path / "teacher.ckpt").is_file() and (tmp_path / "teacher.metrics.jsonl").is_file()
    assert cheapconv.read_recipe(teacher)["training"]["loss"] == "ce"

    # a teacher that came from `train` can be cheapened and distilled from, as files
    assert run(capsys, "cheapen", str(teacher), "--block", "G(4)", "-o", str(student))[0] == 0
    code, out, err = run(capsys, "distill", "--teacher", str(teacher), "--student", str(student), "--data", DATA,
                         "--loss", "at+kd", "-o", str(trained), *FAST)
    assert code == 0, err
    assert "at+kd" in out
    records = [json.loads(line) for line in (tmp_path / "trained.metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "end" and {"at", "kd", "ce", "lr", "images_per_s", "peak_mem_mb",
                                             "val_top1", "val_top5"} <= set(records[-2])

    code, out, err = run(capsys, "evaluate", str(trained), "--data", DATA, "--json")
    assert code == 0, err
    figures = json.loads(out)
    assert figures["n"] == 128 and 0 <= figures["top1"] <= figures["top5"] <= 1
    assert figures["top1"] == pytest.approx(cheapconv.read_recipe(trained)["training"]["val_top1"])

    # zoo name + local weights as the teacher
    weights = tmp_path / "teacher_weights.pth"
    torch.save(cheapconv.load(teacher).state_dict(), weights)
    code, _, err = run(capsys, "distill", "--teacher", "wrn_10_1", "--teacher-weights", str(weights),
                       "--student", str(student), "--data", DATA, "--loss", "kd", "-o", str(trained), *FAST)
    assert code == 0, err


def test_grayscale_data_into_rgb_model_is_stated(tmp_path, capsys):
    code, _, err = run(capsys, "train", "wrn_10_1", "--data", "synthetic:1x28x28:10:64", "-o",
                       str(tmp_path / "t.pt"), *FAST)
    assert code == 0, err
    assert "repeating the channel" in err and "zero-padding them to 32×32" in err


@pytest.mark.parametrize("argv, needle", [
    (["train", "no_such_net", "--data", DATA, "-o", "{tmp}/t.pt"], "Unknown model"),
    (["train", "wrn_10_1", "--data", "mnist-ish", "-o", "{tmp}/t.pt"], "Unknown dataset"),
    (["train", "wrn_10_1", "--data", DATA, "-o", "{tmp}/missing/t.pt"], "does not exist"),
    (["train", "wrn_10_1", "--data", DATA, "-o", "{tmp}/t.pt", "--precision", "fp8"], "unknown precision"),
    (["train", "wrn_10_1", "--data", DATA, "-o", "{tmp}/t.pt", "--resume"], "No checkpoint"),
    (["distill", "--teacher", "{tmp}/nope.pt", "--student", "{tmp}/s.pt", "--data", DATA, "-o", "{tmp}/o.pt"],
     "does not exist"),
    (["distill", "--teacher", "wrn_10_1", "--student", "wrn_10_1", "--data", DATA, "-o", "{tmp}/o.pt",
      "--loss", "mse"], "Unknown loss kind"),
    (["evaluate", "{tmp}/nope.pt", "--data", DATA], "does not exist"),
    (["train", "wrn_10_1", "--data", "cifar10", "--data-dir", "{tmp}", "-o", "{tmp}/t.pt"], "looked for"),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, capsys, argv, needle):
    code, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2, err
    assert needle in err and "Traceback" not in err


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", "wrn_10_1", "--data", "cifar100", "--data-dir", str(tmp_path))
    assert code == 2
    assert str(tmp_path) in err and "--download" in err and "cifar-100-python" in err


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_exits_130(tmp_path):
    """A real SIGINT to the command: it finishes the step, writes the checkpoint, exits 130; --resume ends it."""
    out = tmp_path / "t.pt"
    argv = [sys.executable, "-m", "cheapconv_cli.main", "train", "wrn_10_1", "--data", "synthetic:3x32x32:10:4096",
            "-o", str(out), "--epochs", "1", "--batch-size", "32", "--no-progress", "--log-every", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = tmp_path / "t.metrics.jsonl"
    import time

    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or not metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted at step" in err and "t.ckpt" in err
    assert subprocess.run(argv + ["--resume"], capture_output=True, timeout=600).returncode == 0
