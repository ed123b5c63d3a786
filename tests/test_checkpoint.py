"""Resume checkpoints: exact resume on CPU, safe loading, atomic writes, refusals with clear messages."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import StopAt

from cheapconv import DistillConfig, distill
from cheapconv.data import synthetic_dataset
from cheapconv.errors import FileFormatError, UsageError
from cheapconv.models import WideResNet
from cheapconv.train.checkpoint import load_checkpoint
from cheapconv.train.loop import Interrupted


def _data():
    # 16×16 images keep the steps cheap; augmentation is on, so the saved RNG state matters.
    train = synthetic_dataset("train", channels=3, image_size=16, num_samples=96, seed=1)
    return train


def _teacher():
    torch.manual_seed(1)
    return WideResNet(10, 1)


def _student():
    import cheapconv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(_teacher(), "G(4)")


CFG = DistillConfig(epochs=2, batch_size=32, lr=0.05, loss="at+kd", progress=False, log_every=2,
                    checkpoint_every_steps=2)




def test_interrupted_then_resumed_run_reaches_the_same_weights(tmp_path):
    teacher, data = _teacher(), _data()
    full = distill(teacher, _student(), data, config=CFG, checkpoint=tmp_path / "full.ckpt").student

    ckpt = tmp_path / "part.ckpt"
    with pytest.raises(Interrupted) as info:   # stops mid-epoch 1 (3 steps per epoch), writes a checkpoint
        distill(teacher, _student(), data, config=CFG, checkpoint=ckpt, callbacks=[StopAt(4)])
    assert info.value.step == 4 and info.value.checkpoint == ckpt
    assert load_checkpoint(ckpt)["step"] == 4

    torch.manual_seed(123)  # a different global RNG state and fresh initial weights must not matter
    resumed = distill(teacher, _student(), data, config=CFG.replace(log_every=5), checkpoint=ckpt,
                      resume=True)
    assert resumed.steps == 6
    for (name, a), b in zip(full.state_dict().items(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # the metrics file was appended to, not restarted
    lines = (tmp_path / "part.metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "epoch"' in line for line in lines) == 2


def test_checkpoint_is_plain_data_and_written_atomically(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    distill(None, _teacher(), _data(), config=CFG.replace(epochs=1, loss="ce"), checkpoint=ckpt)
    payload = torch.load(ckpt, weights_only=True)   # no code from the file runs
    assert payload["format"] == "cheapconv-checkpoint"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "config_json"} <= set(payload)
    assert DistillConfig.from_dict(__import__("json").loads(payload["config_json"])) == CFG.replace(
        epochs=1, loss="ce")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt", "run.metrics.jsonl"]  # no temp files


def test_resume_refuses_a_different_recipe(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        distill(None, _teacher(), _data(), config=CFG.replace(loss="ce"), checkpoint=ckpt, callbacks=[StopAt(1)])
    with pytest.raises(UsageError, match=r"momentum: checkpoint 0.9, now 0.5"):
        distill(None, _teacher(), _data(), config=CFG.replace(loss="ce", momentum=0.5), checkpoint=ckpt, resume=True)


def test_resume_from_missing_or_foreign_file(tmp_path):
    import cheapconv

    with pytest.raises(UsageError, match="No checkpoint"):
        distill(None, _teacher(), _data(), config=CFG.replace(loss="ce"), checkpoint=tmp_path / "x.ckpt",
                resume=True)
    model_file = tmp_path / "model.pt"
    cheapconv.save(_teacher(), model_file)
    with pytest.raises(FileFormatError, match="model file"):
        load_checkpoint(model_file)


def test_first_ctrl_c_only_requests_a_stop_and_the_second_interrupts():
    import os
    import signal

    from cheapconv.train.stopping import StopSignal

    previous = signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested                      # the loop finishes its step, then checkpoints
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a gradient scaler needs a CUDA GPU")
def test_fp16_with_grad_scaler_resumes_on_gpu(tmp_path):
    cfg = CFG.replace(precision="fp16", channels_last=True, device="cuda")
    full = distill(_teacher(), _student(), _data(), config=cfg, checkpoint=tmp_path / "a.ckpt")
    assert full.steps == 6 and load_checkpoint(tmp_path / "a.ckpt")["scaler"] is not None


def test_fp16_on_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="fp16"):
        distill(None, _teacher(), _data(), config=CFG.replace(loss="ce", precision="fp16", device="cpu"))
