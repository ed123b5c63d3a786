"""Progress goes to logs too: where stderr is not a terminal (a pipe, a log file, a test's capture), long
commands write a line when a phase starts, at every ~10 % with an ETA, and when it ends."""

from __future__ import annotations

import io
import re

from rich.console import Console

import cheapconv
from cheapconv import DistillConfig, distill
from cheapconv.data import get_dataset
from cheapconv.progress import ProgressReport, format_duration, stage
from cheapconv_cli.main import main

LINE = re.compile(r"^(?P<label>.+): (?P<done>[\d,]+)/(?P<total>[\d,]+).* \((?P<pct>\d+)%\), (?P<elapsed>[\d:]+) "
                  r"elapsed(, ETA [\d:]+|, done)?")


def _plain() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def _lines(text: str, label: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m and m["label"] == label]


def test_plain_lines_at_each_tenth_with_an_eta_and_one_at_the_end():
    console, buffer = _plain()
    with ProgressReport({"s": "Scoring"}, console=console) as report:
        assert not report.live
        for done in range(1, 101):
            report.tick("s", done, 100)
        report.tick("s", 100, 100)   # a repeated last tick writes nothing more
    lines = _lines(buffer.getvalue(), "Scoring")
    assert [int(m["done"]) for m in lines] == [1, *range(10, 101, 10)]
    assert all("ETA" in m.string for m in lines[:-1]) and lines[-1].string.endswith("done")


def test_a_phase_started_part_way_estimates_from_this_run_only():
    console, buffer = _plain()
    report = ProgressReport(console=console, unit="steps")
    report.start("train", 300, 500)
    report.tick("train", 350, 500, "loss 0.1")
    first, second = buffer.getvalue().splitlines()
    assert first.startswith("train: 300/500 steps (60%)") and "ETA" not in first
    assert second.startswith("train: 350/500 steps (70%)") and "ETA" in second and second.endswith("; loss 0.1")


def test_stage_writes_its_start_and_its_end_and_durations_read_as_clock_times():
    console, buffer = _plain()
    with stage("Measuring side by side...", console=console):
        pass
    assert buffer.getvalue().splitlines() == ["Measuring side by side...", "Measuring side by side done (0:00)"]
    assert (format_duration(59.6), format_duration(61), format_duration(3725)) == ("1:00", "1:01", "1:02:05")


def test_evaluate_writes_progress_lines_into_a_pipe(tmp_path, capsys):
    cheapconv.save(cheapconv.create_model("wrn_10_1", num_classes=4), tmp_path / "m.pt")
    code = main(["evaluate", str(tmp_path / "m.pt"), "--data", "synthetic:3x32x32:4:64", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = _lines(captured.err, "Evaluating on synthetic:3x32x32:4:64 (test)")
    assert [int(m["done"]) for m in lines] == list(range(8, 65, 8)) and "images" in lines[0].string
    assert "ETA" in lines[0].string and lines[-1].string.endswith("done")


def test_compare_data_writes_progress_lines_per_model(capsys):
    code = main(["compare", "wrn_10_1", "wrn_10_2", "--batch", "2", "--repeats", "1", "--warmup", "0",
                 "--data", "synthetic", "--limit", "16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in ("wrn_10_1", "wrn_10_2"):
        assert _lines(captured.err, f"Evaluating {name} on synthetic")[-1].string.startswith(
            f"Evaluating {name} on synthetic: 16/16 images (100%)")
    assert "Measuring side by side..." in captured.err and "Measuring side by side done (" in captured.err


def test_search_writes_progress_lines_before_it_ends(capsys):
    code = main(["search", "wrn_10_1", "--budget", "50%", "--samples", "3", "--batch-size", "4", "--spread-runs", "2",
                 "--candidates", "S, G(2), G(N/4), B(2)"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    scoring = _lines(captured.err, "Scoring (Fisher)")
    assert [int(m["done"]) for m in scoring] == [1, 2, 3] and int(scoring[-1]["total"]) == 3
    assert "ETA" in scoring[0].string and scoring[-1].string.endswith("done")
    assert _lines(captured.err, "Re-scoring the top")


def test_training_writes_a_line_per_tenth_of_its_steps(capsys):
    steps = 20
    data = get_dataset("synthetic:3x32x32:4:64", "train")
    distill(None, cheapconv.create_model("wrn_10_1", num_classes=4), data,
            config=DistillConfig(max_steps=steps, batch_size=8, log_every=5))
    lines = _lines(capsys.readouterr().err, "train")
    assert [int(m["done"]) for m in lines] == list(range(0, steps + 1, 2))
    assert "ETA" in lines[1].string and "epoch 1/" in lines[1].string and "loss" in lines[-1].string


def test_a_terminal_gets_the_bar_and_no_lines():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with ProgressReport({"s": "Scoring [x]"}, console=console) as report:
        assert report.live
        for done in range(1, 11):
            report.tick("s", done, 10)
    text = buffer.getvalue()
    assert "Scoring [x]" in text and "10/10" in text and "elapsed" not in text   # the bar, shown literally
