"""The pruning study (benchmarks/pruning/, issue 31 item 3): Torch-Pruning students of a teacher, left unchanged, that
cheapconv saves, loads and distils; and the report's pick per budget (the mildest ratio within it)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import cheapconv
from benchmarks.pruning import report


def _student(name, importance, ratio, seed, end, *, params=50, macs=40):
    return {"key": f"student {name} abc e1 s{seed}", "stage": "students", "teacher_sha": "abc", "name": name,
            "importance": importance, "ratio": ratio, "seed": seed, "epochs": 1, "params": params, "macs": macs,
            "start": {"top1": 0.1}, "end": {"top1": end}}


def _records():
    ms = {"teacher": 10.0, "tp-l2-0.3": 8.0, "tp-l2-0.45": 6.0, "tp-l2-0.6": 4.0, "tp-taylor-0.6": 7.5}
    int8 = {"teacher": 5.0, "tp-l2-0.3": 4.5, "tp-l2-0.45": 4.0, "tp-l2-0.6": 3.0, "tp-taylor-0.6": 4.9}
    return [{"key": "teacher abc", "stage": "teacher", "teacher_sha": "abc", "file": "t.pt", "top1": 0.9,
             "params": 100, "macs": 100},
            _student("tp-l2-0.3", "l2", 0.3, 0, 0.91), _student("tp-l2-0.45", "l2", 0.45, 0, 0.90),
            _student("tp-l2-0.45", "l2", 0.45, 1, 0.88), _student("tp-l2-0.6", "l2", 0.6, 0, 0.85),
            _student("tp-taylor-0.6", "taylor", 0.6, 0, 0.86),
            {"key": "latency torch", "stage": "latency", "teacher_sha": "abc", "runtime": "torch", "ms": ms,
             "loadavg": [0.5]},
            {"key": "latency int8", "stage": "latency", "teacher_sha": "abc", "runtime": "onnxruntime-int8",
             "ms": int8, "loadavg": [0.5]}]


def _row(text, *starts):
    return next(line for line in text.splitlines() if line.startswith("| " + " | ".join(starts) + " |"))


def test_the_report_picks_the_mildest_ratio_within_each_budget():
    text = report.render(_records())
    assert _row(text, "torch", "70%", "l2").startswith("| torch | 70% | l2 | 0.45 | 0.60 | 89.00 ± 1.41 |")
    assert _row(text, "torch", "50%", "l2").startswith("| torch | 50% | l2 | 0.6 | 0.40 | 85.00 |")
    assert "none (fastest: 0.40)" in _row(text, "torch", "30%", "l2")
    assert "none (fastest: 0.75)" in _row(text, "torch", "70%", "taylor")
    # int8 against the int8 teacher: 4.0 / 5.0
    assert _row(text, "onnxruntime-int8", "70%", "l2").startswith("| onnxruntime-int8 | 70% | l2 | 0.6 | 0.60 |")


def test_the_students_table_shows_ratios_to_the_teacher_and_every_seed():
    text = report.render(_records())
    row = _row(text, "tp-l2-0.45")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:6] == ["0.50", "0.40", "0.60", "–", "0.80"]   # params, MACs, eager, ORT fp32 (not timed), int8
    assert cells[6:] == ["10.00", "89.00 ± 1.41", "s0: 90.00, s1: 88.00"]
    assert report.render([]) == "No records yet."


def test_a_pruned_student_is_smaller_leaves_its_teacher_alone_and_is_saved_loaded_and_distilled(tmp_path):
    pytest.importorskip("torch_pruning")
    from benchmarks.pruning.students import fine_tune, prune, save_student

    torch.manual_seed(0)
    teacher = cheapconv.create_model("wrn_10_1", num_classes=10).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    data = TensorDataset(x, y)
    for importance in ("l2", "taylor"):
        student, recipe = prune(teacher, importance, 0.5, (3, 16, 16), calibration=data)
        assert cheapconv.count_params(student, "paper") < 0.5 * cheapconv.count_params(teacher, "paper")
        assert student.fc.out_features == 10 and recipe["ignored_layers"] == ["fc"]
        assert (recipe["pruner"], recipe["pruning_ratio"], recipe["global_pruning"]) == ("MetaPruner", 0.5, True)
        path = tmp_path / f"{importance}.pt"
        assert save_student(student, path, recipe, (3, 16, 16), extra={}) == "graph"
        loaded = cheapconv.load(path)
        assert torch.allclose(loaded(x), student.eval()(x), atol=1e-6)
        assert cheapconv.read_recipe(path)["pruning"]["importance"] == importance
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    result = fine_tune(teacher, student, data, data, lr=0.1, epochs=1, seed=0, max_steps=1, batch_size=8,
                       progress=False)
    assert result.steps == 1 and result.start is not None and result.end is not None
