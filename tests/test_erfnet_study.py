"""benchmarks/erfnet (issue 28's study): the teacher's stopping rule, the verdict's rule, the page rendered from the
committed results, and the teacher trained phase by phase until its plateau (slow)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks.common.records import RESULTS, append_record
from benchmarks.erfnet import report, training
from benchmarks.erfnet.latency import parse_sizes
from benchmarks.erfnet.plateau import Plateau, best_index, epochs_since_best
from benchmarks.erfnet.study import parse_args, part, settings_of, train_stage


@pytest.mark.parametrize("values,delta,best,since", [
    ([], 0.0, None, 0), ([0.5], 0.0, 0, 0), ([0.1, 0.3, 0.3, 0.29], 0.0, 1, 2),
    ([0.1, 0.2, 0.205, 0.21], 0.01, 1, 2), ([0.1, 0.2, 0.215], 0.01, 2, 0)])
def test_best_index_needs_a_gain_above_min_delta(values, delta, best, since):
    assert best_index(values, delta) == best
    assert epochs_since_best(values, delta) == since


class _Run:
    stop = False

    def request_stop(self):
        self.stop = True


def test_plateau_stops_after_patience_and_keeps_the_best_weights(tmp_path):
    model = torch.nn.Linear(2, 2)
    plateau = Plateau(model, tmp_path / "c.jsonl", patience=2, min_delta=0.01)
    run = _Run()
    plateau.on_start(run)
    weights = {}
    for epoch, miou in enumerate([0.2, 0.5, 0.505, 0.49], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        weights[epoch] = model.weight.clone()
        plateau.on_record({"kind": "step", "epoch": epoch})          # not an epoch record: ignored
        plateau.on_record({"kind": "epoch", "epoch": epoch, "step": 10 * epoch, "val_miou": miou, "loss": 1.0,
                           "lr": 0.1, "epoch_time_s": 2.0})
        assert run.stop == (epoch == 4) == plateau.stopped
    assert torch.equal(plateau.best_state()["weight"], weights[2])   # 0.505 is not better by more than 0.01
    s = plateau.summary()
    assert (s["epochs_run"], s["best_epoch"], s["best_val_miou"], s["stopped"]) == (4, 2, 0.5, "plateau")
    assert [pt[0] for pt in s["curve"]] == [1, 2, 3, 4] and s["curve_columns"][2] == "val_miou"
    # a resumed phase that replays epoch 4 counts it once, and its rule state survives in the files
    again = Plateau(model, tmp_path / "c.jsonl", patience=2, min_delta=0.01)
    again.on_start(run)
    again.on_record({"kind": "epoch", "epoch": 4, "step": 40, "val_miou": 0.49})
    assert again.summary()["epochs_run"] == 4 and again.stopped


def test_plateau_summary_says_cap_when_the_rule_never_fired(tmp_path):
    plateau = Plateau(torch.nn.Linear(1, 1), tmp_path / "c.jsonl", patience=3)
    for epoch, miou in enumerate([0.1, 0.2, 0.3], start=1):
        plateau.on_record({"kind": "epoch", "epoch": epoch, "val_miou": miou})
    assert plateau.summary()["stopped"] == "cap" and plateau.summary()["best_epoch"] == 3


def test_a_resumed_phase_keeps_its_earlier_epochs_from_the_metrics_file(tmp_path):
    """distill's result holds only the epochs its own call ran; the phase's curve comes from the metrics file,
    each epoch once (a resume cuts the file back to the checkpoint, then replays from there)."""
    ckpt = tmp_path / "scratch-0.ckpt"
    metrics = training.metrics_file(ckpt, 2)
    assert metrics.name == "scratch-0.phase2.metrics.jsonl"
    points = ((1, 0.1), (2, 0.2), (2, 0.25), (3, 0.3))
    lines = [{"kind": "step", "epoch": 1}] + [{"kind": "epoch", "epoch": e, "val_miou": v, "loss": 1.0,
                                                "epoch_time_s": 2.0} for e, v in points]
    metrics.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = argparse.Namespace(steps=30, last={"val_miou": 0.3}, history=[{"epoch": 3}])
    got = training.phase_summary(training.Phase(epochs=3, name="whole"), result, metrics)
    assert [pt[:2] for pt in got["curve"]] == [[1, 0.1], [2, 0.25], [3, 0.3]]
    assert (got["steps"], got["wall_s"], got["val_miou"]) == (30, 6.0, 0.3)


@pytest.mark.parametrize("teacher,scratch,at,start", [
    ([0.70], [0.60, 0.62, 0.61], [0.66, 0.67, 0.665], "**Verdict: the claim holds**"),
    ([0.70], [0.60, 0.62, 0.61], [0.55, 0.56, 0.555], "**Verdict: the claim does not hold"),
    ([0.70], [0.60, 0.65, 0.61], [0.62, 0.60, 0.64], "**Verdict: not shown**"),
    ([0.60], [0.61, 0.62, 0.63], [0.64, 0.65, 0.66], "**Verdict: not testable here**"),
    ([0.70], [0.60], [0.66], "**Verdict: not decided**"),
    ([], [0.60, 0.61], [0.66, 0.67], "**Verdict: not yet measured**")])
def test_verdict_rule(teacher, scratch, at, start):
    line = report.verdict(teacher, scratch, at)
    assert line.startswith(start)
    if "holds" in start:
        assert "AT recovers 61 % of it" in line   # (66.5 − 61) / (70 − 61)


def test_the_committed_page_is_what_its_results_render(tmp_path):
    out = tmp_path / "README.md"
    report.render(RESULTS / "erfnet.jsonl", out)
    assert out.read_bytes() == report.PAGE.read_bytes()


def test_latency_sizes_are_multiples_of_eight():
    assert parse_sizes("64x64, 512X1024") == [(64, 64), (512, 1024)]
    for bad in ("64", "60x64", "0x8", "ax8"):
        with pytest.raises(ValueError, match="multiples of 8"):
            parse_sizes(bad)


@pytest.mark.slow
def test_teacher_phases_end_at_the_plateau_and_resume_from_their_files(tmp_path, monkeypatch):
    """Each phase, capped at 3 epochs with a rule no gain can meet, stops after epoch 2 through the callback's
    stop request; the best (first) epoch's weights are annealed for one epoch from that epoch's lr; a second call
    trains nothing."""
    from cheapconv.data import get_dataset

    full = get_dataset("fashion-mnist-seg", "train", in_chans=1, seed=0)
    data = (part(full, 0, 16, augment=True), part(full, 16, 24, augment=False), part(full, 24, 32, augment=False))
    args = argparse.Namespace(teacher_seed=0, teacher_max_epochs=3, patience=1, min_delta=1.0, batch_size=8,
                              lr=0.05, weight_decay=2e-4, precision="fp32", device="cpu", quiet=True,
                              teacher_anneal_epochs=1)
    model, fields = training.train_teacher(args, data, tmp_path)
    for p in fields["phases"]:
        assert (p["epochs_run"], p["best_epoch"], p["stopped"]) == (2, 1, "plateau")
        assert p["steps"] >= 4 and len(p["curve"]) == 2 and p["epochs_total"] == 3
        lr = p["curve_columns"].index("lr")
        assert p["anneal"]["lr_start"] == p["curve"][0][lr] and p["anneal"]["steps"] == 2
    best = torch.load(tmp_path / "teacher-2.curve.best.pt", weights_only=True)
    assert not all(torch.equal(model.state_dict()[k], v) for k, v in best.items())   # annealed from there
    assert 0 <= fields["test_miou"] <= 1 and json.dumps(fields)

    def no_training(*a, **kw):
        raise AssertionError("a finished phase was trained again")

    monkeypatch.setattr(training, "run_phases", no_training)
    again, fields2 = training.train_teacher(args, data, tmp_path)
    assert fields2 == fields


def test_a_results_file_of_other_settings_is_refused_before_any_work(tmp_path):
    """Runs made with other settings are never mixed into one table: the study says so and stops."""
    results = tmp_path / "r.jsonl"
    args = parse_args(["--results", str(results), "--work", str(tmp_path / "w")])
    append_record(results, {"kind": "run", "key": "teacher", "settings": {**settings_of(args), "lr": 9.0}})
    with pytest.raises(SystemExit, match="other settings"):
        train_stage(args)
    assert not (tmp_path / "w").exists()
