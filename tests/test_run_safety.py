"""Training-run safety: resuming a finished run, refusing to overwrite an unfinished one, refusing a resume
with other data or another teacher, changing lr / grad-clip on resume, going back before a blow-up, output
paths checked up front, metrics files that stay valid JSON lines and appear only when a run starts."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from helpers import StopAt

import cheapconv
from cheapconv import Callback, DistillConfig, distill
from cheapconv.data import synthetic_dataset
from cheapconv.errors import UsageError
from cheapconv.models import WideResNet
from cheapconv.train.checkpoint import load_checkpoint, previous_checkpoint
from cheapconv.train.loop import Interrupted, NonFiniteLossError
from cheapconv_cli.main import main


def _data(seed: int = 1, n: int = 96):
    return synthetic_dataset("train", channels=3, image_size=16, num_samples=n, seed=seed)


def _net(seed: int = 1):
    torch.manual_seed(seed)
    return WideResNet(10, 1)


# 96 samples / batch 16 = 6 steps per epoch; 8 steps end inside the second epoch
CFG = DistillConfig(max_steps=8, batch_size=16, lr=0.05, loss="ce", progress=False, log_every=1,
                    checkpoint_every_steps=2)




def _interrupted(tmp_path, stop: int = 3, cfg: DistillConfig = CFG, teacher=None, name: str = "run"):
    ckpt = tmp_path / f"{name}.ckpt"
    with pytest.raises(Interrupted):
        distill(teacher, _net(), _data(), config=cfg, checkpoint=ckpt, callbacks=[StopAt(stop)])
    return ckpt


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------- 1. resuming a finished run


def test_resume_of_a_finished_run_trains_no_step(tmp_path):
    full = distill(None, _net(), _data(), config=CFG, checkpoint=tmp_path / "a.ckpt")
    shutil.copy(tmp_path / "a.ckpt", tmp_path / "b.ckpt")
    shutil.copy(tmp_path / "a.metrics.jsonl", tmp_path / "b.metrics.jsonl")
    steps = []

    class Count(Callback):
        def on_step(self, run):
            steps.append(run.step)

    again = distill(None, _net(seed=5), _data(), config=CFG, checkpoint=tmp_path / "b.ckpt", resume=True,
                    callbacks=[Count()])
    assert steps == [] and again.steps == 8
    assert _equal(full.student, again.student)
    assert again.last["val_top1" if "val_top1" in full.last else "train_top1"] == full.last.get(
        "val_top1", full.last["train_top1"])
    records = _records(tmp_path / "b.metrics.jsonl")
    assert [r["kind"] for r in records].count("end") == 1          # the end record is not duplicated
    assert records[:-1] == _records(tmp_path / "a.metrics.jsonl")[:-1]


def test_cli_resume_of_a_finished_run_writes_the_same_model(tmp_path, capsys):
    base = ["train", "wrn_10_1", "--data", "synthetic:3x32x32:10:96", "--max-steps", "8", "-b", "16", "--seed",
            "1", "--no-progress"]
    assert run_cli(capsys, *base, "-o", tmp_path / "a.pt")[0] == 0
    shutil.copy(tmp_path / "a.ckpt", tmp_path / "b.ckpt")
    code, _, err = run_cli(capsys, *base, "-o", tmp_path / "b.pt", "--resume")
    assert code == 0, err
    assert _equal(cheapconv.load(tmp_path / "a.pt"), cheapconv.load(tmp_path / "b.pt"))
    assert cheapconv.read_recipe(tmp_path / "b.pt")["training"]["steps"] == 8


def test_ctrl_c_while_writing_the_model_says_how_to_resume(tmp_path, capsys, monkeypatch):
    base = ["train", "wrn_10_1", "--data", "synthetic:3x32x32:10:96", "--max-steps", "6", "-b", "16",
            "--no-progress", "-o", tmp_path / "t.pt"]

    def interrupted_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cheapconv, "save", interrupted_save)
    code, _, err = run_cli(capsys, *base)
    assert code == 130
    assert "t.pt was not written" in err and "--resume" in err and "t.ckpt" in err
    assert not (tmp_path / "t.pt").exists()
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *base, "--resume")
    assert code == 0, err
    assert cheapconv.read_recipe(tmp_path / "t.pt")["training"]["steps"] == 6


# --------------------------------------------------------------- 2. a new run next to an unfinished one


def test_new_run_refuses_to_overwrite_an_unfinished_run(tmp_path):
    ckpt = _interrupted(tmp_path)
    metrics = tmp_path / "run.metrics.jsonl"
    before = ckpt.read_bytes(), metrics.read_bytes()
    with pytest.raises(UsageError, match=r"unfinished run.*step 3 of 8.*--resume.*--overwrite"):
        distill(None, _net(), _data(), config=CFG, checkpoint=ckpt)
    assert (ckpt.read_bytes(), metrics.read_bytes()) == before
    result = distill(None, _net(), _data(), config=CFG, checkpoint=ckpt, overwrite=True)
    assert result.steps == 8 and _records(metrics)[0]["step"] == 1       # started over
    distill(None, _net(), _data(), config=CFG, checkpoint=ckpt)           # a finished run's: a rerun


def test_cli_new_run_refuses_an_unfinished_runs_checkpoint(tmp_path, capsys):
    _interrupted(tmp_path, name="t")
    argv = ["train", "wrn_10_1", "--data", "synthetic:3x16x16:10:96", "-b", "16", "--max-steps", "8",
            "--no-progress", "-o", tmp_path / "t.pt"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "--resume" in err and "--overwrite" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, *argv, "--resume", "--overwrite")
    assert code == 2 and "one of them" in err


# ---------------------------------------------------------------- 3. resume with other data or teacher


def test_resume_refuses_other_data(tmp_path):
    ckpt = _interrupted(tmp_path)
    with pytest.raises(UsageError, match=r"training data differs \(checkpoint: synthetic:3x16x16:10:96, 96 "
                                         r"samples; now: synthetic:3x16x16:10:128, 128 samples\)"):
        distill(None, _net(), _data(n=128), config=CFG, checkpoint=ckpt, resume=True)
    with pytest.raises(UsageError, match=r"training data differs .*content differ"):
        distill(None, _net(), _data(seed=2), config=CFG, checkpoint=ckpt, resume=True)


def test_resume_refuses_another_teacher(tmp_path):
    cfg = CFG.replace(loss="kd")
    ckpt = _interrupted(tmp_path, cfg=cfg, teacher=_net(seed=1))
    with pytest.raises(UsageError, match=r"the teacher differs \(checkpoint: WideResNet, [\d,]+ parameters, "
                                         r"weights \w+; now: WideResNet"):
        distill(_net(seed=2), _net(), _data(), config=cfg, checkpoint=ckpt, resume=True)
    # the same teacher (rebuilt) resumes
    assert distill(_net(seed=1), _net(), _data(), config=cfg, checkpoint=ckpt, resume=True).steps == 8


# ------------------------------------------------------------ 4. lr / grad-clip on resume; blow-ups


def test_resume_may_change_lr_and_grad_clip_and_says_so(tmp_path):
    ckpt = _interrupted(tmp_path, stop=4)
    new = CFG.replace(lr=0.01, grad_clip=1.0)
    with pytest.warns(UserWarning, match=r"changed settings: grad_clip None -> 1.0, lr 0.05 -> 0.01"):
        result = distill(None, _net(), _data(), config=new, checkpoint=ckpt, resume=True)
    assert result.steps == 8
    resume = [r for r in _records(tmp_path / "run.metrics.jsonl") if r["kind"] == "resume"]
    assert resume == [{"kind": "resume", "step": 4, "time": resume[0]["time"],
                       "changed": {"grad_clip": {"checkpoint": None, "now": 1.0},
                                   "lr": {"checkpoint": 0.05, "now": 0.01}}}]
    step_lrs = {r["step"]: r["lr"] for r in _records(tmp_path / "run.metrics.jsonl") if r["kind"] == "step"}
    assert step_lrs[4] == pytest.approx(0.05 * CFG.lr_factor(3, 6))
    assert step_lrs[5] == pytest.approx(0.01 * CFG.lr_factor(4, 6))      # the new base lr, same schedule
    assert json.loads(load_checkpoint(ckpt)["config_json"])["lr"] == 0.01
    with pytest.raises(UsageError, match="momentum"):                    # everything else must still match
        distill(None, _net(), _data(), config=new.replace(momentum=0.5), checkpoint=ckpt, resume=True)


def test_cli_resume_keeps_the_checkpoints_lr_and_grad_clip_unless_given(tmp_path, capsys):
    argv = ["train", "wrn_10_1", "--data", "synthetic:3x32x32:10:96", "--max-steps", "6", "-b", "16",
            "--no-progress", "-o", tmp_path / "t.pt", "--resume"]
    assert run_cli(capsys, *argv[:-1], "--lr", "0.05", "--grad-clip", "2")[0] == 0
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "changed settings" not in err, err
    with pytest.warns(UserWarning, match=r"lr 0.05 -> 0.01"):
        code, _, err = run_cli(capsys, *argv, "--lr", "0.01")
    assert code == 0, err


def test_non_finite_stop_goes_back_to_the_checkpoint_before_the_blow_up(tmp_path):
    """lr 500 diverges within a few steps (BatchNorm statistics overflow at step 6). The checkpoint of step 4
    was written as the weights were blowing up; the run goes back to the one before it (step 2)."""
    data = _data(n=256)
    cfg = CFG.replace(max_steps=60, lr=500.0, checkpoint_every_steps=2)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 6 .*set back to step 2, the one before "
                                                 r"the last \(the step-4 checkpoint"):
        distill(None, _net(seed=0), data, config=cfg, checkpoint=ckpt)
    payload = load_checkpoint(ckpt)
    assert payload["step"] == 2
    weights = [v for v in payload["model"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)
    assert max(v.abs().max().item() for v in weights) < 1e6
    assert not previous_checkpoint(ckpt).exists()
    # ... and a resume with a lower lr and clipping is allowed from it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = distill(None, _net(seed=0), data, config=cfg.replace(lr=0.01, grad_clip=1.0), checkpoint=ckpt,
                         resume=True)
    assert result.steps == 60


class Poison(Callback):
    """Sets a weight to inf after step ``k`` (just before that step's checkpoint)."""

    def __init__(self, model, k: int) -> None:
        self.model, self.k = model, k

    def on_step(self, run) -> None:
        if run.step == self.k:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("inf")


def test_non_finite_weights_are_never_written(tmp_path):
    net, ckpt = _net(), tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite at step 4 .*without writing"):
        distill(None, net, _data(), config=CFG, checkpoint=ckpt, callbacks=[Poison(net, 4)])
    payload = load_checkpoint(ckpt)
    assert payload["step"] == 2
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


# -------------------------------------------------------------------- 5. output paths checked up front


def test_unwritable_checkpoint_paths_are_refused_before_any_step(tmp_path, capsys):
    steps = []

    class Count(Callback):
        def on_step(self, run):
            steps.append(run.step)

    with pytest.raises(UsageError, match="is a directory"):
        distill(None, _net(), _data(), config=CFG, checkpoint=tmp_path, callbacks=[Count()])
    with pytest.raises(UsageError, match="does not exist"):
        distill(None, _net(), _data(), config=CFG, checkpoint=tmp_path / "missing" / "run.ckpt")
    with pytest.raises(UsageError, match="metrics file"):
        distill(None, _net(), _data(), config=CFG, checkpoint=tmp_path / "run.ckpt",
                metrics_file=tmp_path / "missing" / "m.jsonl")
    assert steps == [] and list(tmp_path.iterdir()) == []

    argv = ["train", "wrn_10_1", "--data", "synthetic:3x16x16:10:96", "-b", "16", "--max-steps", "8",
            "--no-progress", "-o", tmp_path / "t.pt"]
    code, _, err = run_cli(capsys, *argv, "--checkpoint", tmp_path)
    assert code == 2 and "is a directory" in err
    code, _, err = run_cli(capsys, *argv, "--checkpoint", tmp_path / "nope" / "t.ckpt")
    assert code == 2 and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- 6./7. the metrics file


def test_resumed_metrics_are_valid_jsonl_with_each_step_once(tmp_path):
    """A kill after the step-4 checkpoint, in the middle of writing step 7's record: the resumed run cuts
    the file back to step 4 and logs steps 5.. once."""
    full = distill(None, _net(), _data(), config=CFG, checkpoint=tmp_path / "full.ckpt")
    ckpt, saved = tmp_path / "run.ckpt", tmp_path / "step4.ckpt"

    class Keep(Callback):
        def on_checkpoint(self, path, run):
            if run.step == 4:
                shutil.copy(path, saved)

    with pytest.raises(Interrupted):
        distill(None, _net(), _data(), config=CFG, checkpoint=ckpt, callbacks=[Keep(), StopAt(6)])
    shutil.copy(saved, ckpt)                                   # as if killed after step 6, checkpoint at 4
    metrics = tmp_path / "run.metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"kind": "step", "epoch": 2, "step": 7, "lo')   # a cut-off line
    resumed = distill(None, _net(), _data(), config=CFG, checkpoint=ckpt, resume=True)
    assert _equal(full.student, resumed.student)
    records = _records(metrics)                                # every line parses
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 9))
    assert [r["kind"] for r in records] == [r["kind"] for r in _records(tmp_path / "full.metrics.jsonl")]


def test_metrics_file_appears_only_when_the_run_starts(tmp_path):
    gray = synthetic_dataset("train", channels=1, image_size=16, num_samples=96)   # the model reads 3 channels
    with pytest.raises(UsageError, match="in_chans=3"):
        distill(None, _net(), gray, config=CFG, checkpoint=tmp_path / "run.ckpt")
    assert list(tmp_path.iterdir()) == []
    # a failed rerun next to a finished run leaves that run's metrics alone
    distill(None, _net(), _data(), config=CFG, checkpoint=tmp_path / "run.ckpt")
    before = (tmp_path / "run.metrics.jsonl").read_bytes()
    with pytest.raises(UsageError, match="in_chans=3"):
        distill(None, _net(), gray, config=CFG, checkpoint=tmp_path / "run.ckpt")
    assert (tmp_path / "run.metrics.jsonl").read_bytes() == before
