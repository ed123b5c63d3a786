"""Distillation never silently loses the start: a student that starts from its teacher is evaluated before the
first step and after the last, a worse end is warned about (library and command line), a resume keeps the
start it recorded, and the evaluation changes nothing in the trajectory."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from helpers import StopAt

import cheapconv
from cheapconv import DistillConfig, distill
from cheapconv.data import DatasetInfo, SegmentationTensorDataset, get_dataset
from cheapconv.train.loop import Interrupted
from cheapconv.train.start_end import StartLostWarning, start_end_line
from cheapconv_cli.main import main

DATA = "synthetic:3x32x32:4:64"
RUN = DistillConfig(max_steps=4, batch_size=16, grad_clip=1.0, loss="ce", progress=False)
ABSURD, GENTLE = 50.0, 0.01   # an lr that throws the start away, and one that keeps learning


@pytest.fixture(scope="module")
def data():
    return get_dataset(DATA, "train"), get_dataset(DATA, "test")


@pytest.fixture(scope="module")
def teacher(data):
    """wrn_10_1 trained a few steps: above chance (4 classes), still learning."""
    torch.manual_seed(0)
    net = cheapconv.create_model("wrn_10_1", num_classes=4)
    distill(None, net, data[0], val_data=data[1],
            config=DistillConfig(max_steps=12, batch_size=16, lr=0.1, schedule="cosine", progress=False))
    return net.eval()


def _warm(teacher):
    """A student that starts from its teacher (recorded in its recipe); the null policy keeps its accuracy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(teacher, "S", init="teacher")


def _cold(teacher):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(teacher, "G(4)")


def test_an_absurd_lr_ends_below_the_start_and_says_so(teacher, data):
    with pytest.warns(StartLostWarning, match=r"ended worse than it started: val top-1 .* → .*lower lr"):
        result = distill(teacher, _warm(teacher), data[0], val_data=data[1], config=RUN.replace(lr=ABSURD))
    assert result.start is not None and result.end is not None
    assert result.start["top1"] > 0.25 and result.end["top1"] < result.start["top1"]
    assert result.worse_than_start is True
    assert result.start_end == f"val top-1 {100 * result.start['top1']:.2f} % → {100 * result.end['top1']:.2f} %"
    assert result.last["start_val_top1"] == result.start["top1"]   # the end record holds both


def test_no_warning_when_training_improves_on_the_start(teacher, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StartLostWarning)
        result = distill(teacher, _warm(teacher), data[0], val_data=data[1], config=RUN.replace(lr=GENTLE))
    assert result.worse_than_start is False and result.end["top1"] > result.start["top1"]


@pytest.mark.filterwarnings("ignore::cheapconv.train.start_end.StartLostWarning")   # a random start may end lower
def test_only_teacher_initialised_students_by_default_and_eval_start_chooses(teacher, data):
    run = RUN.replace(max_steps=1, lr=GENTLE)
    assert distill(teacher, _cold(teacher), data[0], val_data=data[1], config=run).start is None
    assert distill(teacher, _cold(teacher), data[0], val_data=data[1],
                   config=run.replace(eval_start=True)).start is not None
    assert distill(teacher, _warm(teacher), data[0], val_data=data[1],
                   config=run.replace(eval_start=False)).start is None
    assert distill(teacher, _warm(teacher), data[0], config=run).start is None   # no validation data: nothing to say


def test_evaluating_the_start_leaves_the_trajectory_unchanged(teacher, data):
    runs = [distill(teacher, _warm(teacher), data[0], val_data=data[1], config=RUN.replace(lr=GENTLE, eval_start=e))
            for e in (False, True)]
    assert runs[1].start is not None and runs[0].start is None
    for a, b in zip(runs[0].student.state_dict().values(), runs[1].student.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_keeps_the_recorded_start_and_does_not_evaluate_again(teacher, data, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    run = RUN.replace(lr=GENTLE, checkpoint_every_steps=1)
    with pytest.raises(Interrupted):
        distill(teacher, _warm(teacher), data[0], val_data=data[1], config=run, checkpoint=ckpt, callbacks=[StopAt(2)])
    first = [json.loads(line) for line in ckpt.with_suffix(".metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in first].count("start") == 1
    start = {k[4:]: v for k, v in first[0].items() if k.startswith("val_")}

    seen = []

    class Starts(cheapconv.Callback):
        def on_record(self, record):
            seen.append(record["kind"])

    result = distill(teacher, _warm(teacher), data[0], val_data=data[1], config=run, checkpoint=ckpt, resume=True,
                     callbacks=[Starts()])
    assert "start" not in seen                                 # not evaluated again (the weights moved on)
    assert {k: v for k, v in result.start.items() if k != "n"} == start   # the checkpoint's figures
    records = [json.loads(line) for line in ckpt.with_suffix(".metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("start") == 1 and records[-1]["start_val_top1"] == start["top1"]


def test_segmentation_start_and_end_are_miou():
    images = torch.zeros(16, 1, 16, 16, dtype=torch.uint8)
    masks = torch.zeros(16, 16, 16, dtype=torch.uint8)
    images[:, :, 4:12, 4:12], masks[:, 4:12, 4:12] = 250, 1
    data = SegmentationTensorDataset(images, masks, DatasetInfo("toy-seg", 2, 1, 16, (0.5,), (0.25,),
                                                                task="segmentation"), augment=False)
    torch.manual_seed(0)
    net = cheapconv.create_model("segwrn_10_1", num_classes=2, in_chans=1)
    result = distill(None, net, data, val_data=data, config=RUN.replace(max_steps=1, lr=0.01, eval_start=True))
    assert set(result.start) >= {"miou", "pixel_acc"} and "iou" not in result.start
    assert result.start_end.startswith("val mIoU ")
    assert start_end_line({"miou": 0.5, "pixel_acc": 0.9}, {"miou": 0.25}) == "val mIoU 50.00 % → 25.00 %"
    assert start_end_line(None, {"top1": 0.5}) is None


def test_cli_distill_prints_the_start_and_end_and_warns_naming_the_files(teacher, tmp_path, capsys):
    cheapconv.save(teacher, tmp_path / "t.pt")
    cheapconv.save(_warm(teacher), tmp_path / "warm.pt")
    code = main(["distill", "-t", str(tmp_path / "t.pt"), "-s", str(tmp_path / "warm.pt"), "--data", DATA,
                 "--loss", "ce", "--max-steps", "4", "--batch-size", "16", "--lr", str(ABSURD), "--no-progress",
                 "-o", str(tmp_path / "out.pt")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "val top-1 " in captured.out and "(before the first step → after the last)" in captured.out
    assert "warning:" in captured.err and "ended worse than it started" in captured.err
    assert f"unchanged in {tmp_path / 'warm.pt'}" in captured.err.replace("\n", "")
    assert "StartLostWarning" not in captured.err                        # said once, as the command's warning
    training = cheapconv.read_recipe(tmp_path / "out.pt")["training"]
    assert training["start"]["top1"] > training["end"]["top1"]
    assert training["augment"] == "standard"
