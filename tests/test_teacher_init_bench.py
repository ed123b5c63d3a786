"""The report of the teacher-initialisation study (benchmarks/teacher_init/, issue 11's table): accuracies at the
fixed fractions of the run, with and without re-estimated BatchNorm statistics, and the steps to the random
student's final accuracy."""

from __future__ import annotations

import json

from benchmarks.teacher_init import study as teacher_init


def _record(block, init, step0, curve):
    return {"key": f"{block}/{init}", "block": block, "init": init, "lr": 0.1, "grad_clip": 1.0 if init != "random"
            else None, "step0": step0, "curve": curve, "steps_per_epoch": 8, "epochs": 2}


def test_report_shows_both_accuracies_and_the_steps_to_the_random_final(tmp_path):
    results = tmp_path / "results.jsonl"
    rows = [
        {"key": "teacher/test100", "test_top1": 0.9, "test_images": 100},
        _record("B(2)", "random", 0.1, [[2, 0.1, 0.2], [8, 0.3, 0.4], [16, 0.6, 0.62]]),
        # raw accuracy dips below the random final until step 16; re-estimated is above it from step 2
        _record("B(2)", "teacher-clip1", 0.5, [[2, 0.2, 0.7], [8, 0.55, 0.75], [16, 0.8, 0.81]]),
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = teacher_init.report(results)
    line = next(x for x in text.splitlines() if "teacher-clip1" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "50.00%"                               # step 0
    assert cells[3] == "20.00% (70.00%)"                      # 1/4 epoch = step 2
    assert cells[4] == "55.00% (75.00%)"                      # 1 epoch = step 8
    assert cells[5] == "80.00% (81.00%) (2 ep)"
    assert cells[6] == "16 of 16 (2)" and cells[7] == "1.0×"
    assert "re-estimated" in text


def test_report_reads_the_older_two_column_curves(tmp_path):
    results = tmp_path / "results.jsonl"
    rows = [_record("G(4)", "random", 0.1, [[2, 0.1], [8, 0.3], [16, 0.6]]),
            _record("G(4)", "teacher-clip1", 0.7, [[2, 0.65], [8, 0.7], [16, 0.8]])]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = teacher_init.report(results)
    line = next(x for x in text.splitlines() if "teacher-clip1" in x)
    assert "| 70.00% | 65.00% | 70.00% | 80.00% (2 ep) | 0 of 16 | already at step 0 |" in line
    assert "re-estimated" not in text


def test_report_measures_the_steps_against_the_reference_when_there_is_one(tmp_path):
    """A reference (the reproduction study's random student given its whole schedule, --stage reference) takes
    the place of this file's random run in the last two columns, and is named below the table."""
    results = tmp_path / "results.jsonl"
    rows = [_record("B(2)", "random", 0.1, [[8, 0.3], [16, 0.6]]),
            _record("B(2)", "teacher-clip1", 0.5, [[2, 0.62], [8, 0.75], [16, 0.8]]),
            {"key": "reference/B(2)", "block": "B(2)", "test_top1": 0.7, "steps": 48, "checkpoint": "x.ckpt",
             "test_images": 100}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = teacher_init.report(results)
    line = next(x for x in text.splitlines() if "teacher-clip1" in x)
    assert line.rstrip().endswith("| 8 of 48 | 6.0× |")       # first at or above 70 %: step 8 of the reference's 48
    assert "B(2) 70.00% after 48 steps" in text
