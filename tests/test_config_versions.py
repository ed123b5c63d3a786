"""Configurations and checkpoints written by earlier versions still load: version 1 kept the objective's settings
(beta, alpha, temperature, kd_reduction, taps) as flat fields beside the loss's name; version 2 holds one
objective, with its own settings, under ``loss``.

The fixtures in tests/data/ were written by the code of version 1 (before the change): a config dict, and the
checkpoint of an at+kd run stopped after 2 of its 6 steps, with the figures of the uninterrupted run."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import cheapconv
from cheapconv import DistillConfig, distill
from cheapconv.data import synthetic_dataset
from cheapconv.errors import UsageError
from cheapconv.models import WideResNet
from cheapconv.train.checkpoint import load_checkpoint

DATA = Path(__file__).parent / "data"
V1 = json.loads((DATA / "distill_config_v1.json").read_text())


def test_a_version_1_config_loads_with_its_settings_under_loss():
    cfg = DistillConfig.from_dict(V1)
    assert cfg.loss.to_dict() == {"name": "at+kd", "beta": 500.0, "taps": ["block1", "block2", "block3"],
                                  "alpha": 0.8, "temperature": 3.0, "kd_reduction": "reference"}
    assert (cfg.lr, cfg.batch_size, cfg.version) == (0.05, 32, 2)
    stored = cfg.to_dict()
    assert not {"beta", "alpha", "temperature", "kd_reduction", "taps"} & set(stored)
    assert DistillConfig.from_dict(stored) == cfg
    assert cfg == DistillConfig(epochs=2, batch_size=32, lr=0.05, progress=False, log_every=2,
                                checkpoint_every_steps=2, device="cpu",
                                loss={"name": "at+kd", "beta": 500.0, "alpha": 0.8, "temperature": 3.0,
                                      "kd_reduction": "reference", "taps": ["block1", "block2", "block3"]})


@pytest.mark.parametrize("flat, loss", [
    ({"loss": "kd", "beta": 5.0, "alpha": 0.5}, {"name": "kd", "alpha": 0.5, "temperature": 4.0,
                                                   "kd_reduction": "batchmean"}),   # beta is not KD's: dropped
    ({"loss": "scratch", "beta": 5.0}, {"name": "ce"}),
    ({"loss": None, "beta": 1000.0, "temperature": 2.0}, None),   # "at" or "ce" at run time; KD settings unused
    ({"loss": None, "beta": 250.0}, {"name": "at", "beta": 250.0, "taps": []}),   # what a run with a teacher used
])
def test_version_1_settings_move_to_the_loss_that_takes_them(flat, loss):
    cfg = DistillConfig.from_dict({"version": 1, "epochs": 1, **flat})
    assert (cfg.loss.to_dict() if cfg.loss is not None else None) == loss


def test_the_objective_is_one_field_with_its_own_settings():
    cfg = DistillConfig(loss="kd")
    assert cfg.loss.name == "kd" and cfg.loss.alpha == 0.9 and cfg.replace(loss="KD+AT").loss.name == "at+kd"
    assert DistillConfig().resolved_loss(teacher=True) == "at" and DistillConfig().objective(teacher=False).name == "ce"
    with pytest.raises(UsageError, match="The ce loss has no setting beta"):
        DistillConfig(loss={"name": "ce", "beta": 3.0})
    with pytest.raises(UsageError, match="KD weight alpha"):
        DistillConfig(loss={"name": "kd", "alpha": 2.0})
    with pytest.raises(UsageError, match="Unknown training setting"):
        DistillConfig.from_dict({"version": 2, "beta": 3.0})   # flat settings are version 1's only


def test_a_version_1_checkpoint_resumes_to_the_same_weights(tmp_path):
    """The checkpoint written by version 1 resumes under the migrated config (no setting differs) and reaches
    the weights of the run that was never interrupted, computed by version 1."""
    ckpt = tmp_path / "run.ckpt"
    shutil.copy(DATA / "distill_v1.ckpt", ckpt)
    assert json.loads(load_checkpoint(ckpt)["config_json"])["version"] == 1
    data = synthetic_dataset("train", channels=3, image_size=16, num_samples=96, seed=1)
    torch.manual_seed(1)
    teacher = WideResNet(10, 1)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = cheapconv.cheapen(WideResNet(10, 1), "G(4)")
    result = distill(teacher, student, data, config=DistillConfig.from_dict(V1), checkpoint=ckpt, resume=True)
    expected = json.loads((DATA / "distill_v1.expected.json").read_text())
    flat = torch.cat([p.detach().flatten().double() for p in result.student.state_dict().values()
                      if p.is_floating_point()])
    assert result.steps == expected["steps"]
    assert float(flat.sum()) == pytest.approx(expected["sum"], rel=1e-9)
    assert float(flat.pow(2).sum()) == pytest.approx(expected["sum_sq"], rel=1e-9)
