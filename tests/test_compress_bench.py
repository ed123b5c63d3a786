"""The compress study's build-time stage: its solve timer and its report line (the build itself is the benchmark's
job, timed on a quiet machine; nothing here times anything against a target)."""

from __future__ import annotations

from benchmarks.compress import build_time
from benchmarks.compress.report import render
from cheapconv.compression import KEEP, Library, LibrarySite, SiteOption


def small_library() -> Library:
    """Two sites, each able to save 1 ms of a 3 ms teacher: the fastest student takes 1 ms (33 %)."""
    sites = [LibrarySite(name, "conv", (name,), options=[
        SiteOption(KEEP, None),
        SiteOption("G(2)", f"{name}=G(2)", params=-10, paper=-10, macs=-100, latency_saved_ms=1.0, kl=0.1,
                   family="G")]) for name in ("a", "b")]
    return Library(key={}, sites=sites, teacher_latency_ms=3.0, teacher_params=100, teacher_paper=100,
                   teacher_macs=1000)


def test_solve_seconds_times_a_reachable_budget_and_names_an_unreachable_one() -> None:
    library = small_library()
    seconds = build_time.solve_seconds(library, "50%", solves=3)
    assert seconds is not None and 0 < seconds < 60
    assert build_time.solve_seconds(library, "20%", solves=3) is None


def test_the_report_shows_the_build_time_against_its_targets() -> None:
    record = {"key": "build-time torch b1 abc", "stage": "build-time", "runtime": "torch", "batch": 1,
              "seconds": 612.0, "sites": 21, "options": 81, "teacher_latency_ms": 3.9,
              "solve_seconds": {"70%": 0.031, "30%": None}, "loadavg_before": [0.4, 0.5, 0.6],
              "loadavg": [1.0, 0.9, 0.8]}
    text = render([record])
    line = next(line for line in text.splitlines() if line.startswith("- fresh library"))
    assert "81 options on 21 sites built in 10.2 min" in line
    assert "70% 31 ms" in line and "30% out of reach" in line
    assert "load average 0.4 before, 1.0 after" in line


def lite0_record(budget: str, student_ms: float) -> dict:
    counts = {"student": {"paper": 50, "macs": 40}, "teacher": {"paper": 100, "macs": 100}}
    return {"key": f"lite0 onnxruntime b1 {budget} sha", "stage": "lite0", "teacher_sha": "sha", "budget": budget,
            "runtime": "onnxruntime", "batch": 1, "met": True, "notes": [], "choices": {"a": "LRp(0.5)"},
            "teacher_ms": {"1": 2.0}, "student_ms": {"1": student_ms}, "counts": counts,
            "start": {"top1": 0.80}, "end": {"top1": 0.79}}


def test_the_lite0_table_reads_its_teacher_and_its_own_remeasurement() -> None:
    records = [{"key": "lite0 teacher sha", "stage": "lite0", "teacher_sha": "sha", "top1": 0.792, "images": 500},
               lite0_record("90%", 1.84), lite0_record("70%", 1.34),
               {"key": "remeasure lite0-onnxruntime sha", "stage": "remeasure", "runtime": "onnxruntime", "batch": 1,
                "setting": "lite0-onnxruntime", "repeats": 60, "loadavg": [1.0, 1.0, 1.0],
                "ms": {"1": {"teacher": 2.0, "90%": 1.76, "70%": 1.30}}}]
    lines = render(records).splitlines()
    row90 = next(line for line in lines if line.startswith("| onnxruntime | 1 | 90% |"))
    row70 = next(line for line in lines if line.startswith("| onnxruntime | 1 | 70% |"))
    assert "| 0.92 | 0.88 |" in row90 and "| 79.20 % |" in row90
    assert "| 0.67 | 0.65 |" in row70
    remeasured = [line for line in lines if line.startswith("- re-measured (lite0-onnxruntime)")]
    assert len(remeasured) == 1     # under the Lite0 table only, not the WRN one's notes
    assert lines.index(remeasured[0]) > lines.index(row70)


def test_a_second_lite0_run_sits_beside_the_first_with_its_own_remeasurement() -> None:
    """``--attempt 2``: its rows say "(run 2)" and read their own re-measure record, the first run's rows theirs."""
    second = {**lite0_record("80%", 1.50), "key": "lite0 onnxruntime b1 80% sha #2", "attempt": 2}
    records = [lite0_record("80%", 1.60), second,
               {"key": "remeasure lite0-onnxruntime sha", "stage": "remeasure", "runtime": "onnxruntime", "batch": 1,
                "setting": "lite0-onnxruntime", "repeats": 60, "loadavg": [1.0, 1.0, 1.0],
                "ms": {"1": {"teacher": 2.0, "80%": 1.66}}},
               {"key": "remeasure lite0-onnxruntime-run2 sha", "stage": "remeasure", "runtime": "onnxruntime",
                "batch": 1, "setting": "lite0-onnxruntime-run2", "repeats": 60, "loadavg": [0.5, 0.5, 0.5],
                "ms": {"1": {"teacher": 2.0, "80%": 1.56}}}]
    lines = render(records).splitlines()
    first = next(line for line in lines if line.startswith("| onnxruntime | 1 | 80% |"))
    again = next(line for line in lines if line.startswith("| onnxruntime | 1 | 80% (run 2) |"))
    assert "| 0.80 | 0.83 |" in first and "| 0.75 | 0.78 |" in again
    out_of_reach = {"key": "lite0 onnxruntime b1 50% sha #2", "budget": "50%", "runtime": "onnxruntime",
                    "attempt": 2, "unreachable": "The budget is out of reach", "loadavg": [1.0, 1.0, 1.0]}
    lines = render([*records, out_of_reach]).splitlines()
    assert any(line.startswith("| onnxruntime | | 50% (run 2) | out of reach") for line in lines)


def test_the_rounds_column_shows_a_confirming_measurement() -> None:
    from benchmarks.compress.report import _round

    assert _round({"predicted": 1.5, "measured": 1.62, "confirmation": 1.6}) == "1.50→1.62/1.60"
    assert _round({"predicted": 1.5, "measured": 1.7, "met": False}) == "1.50→1.70"


def test_the_front_shows_the_pruning_baseline_of_the_same_teacher_at_batch_1_only() -> None:
    from benchmarks.compress.front_plot import dominated_by, pruning_points

    compress = [{"key": "student torch b1 50% aaa e1 s0", "runtime": "torch", "teacher_sha": "aaa"}]

    def student(name: str, seed: int, top1: float, sha: str = "aaa") -> dict:
        return {"stage": "students", "teacher_sha": sha, "name": name, "seed": seed, "end": {"top1": top1}}

    pruning = [student("tp-l2-0.6", 0, 0.90), student("tp-l2-0.6", 1, 0.92), student("tp-l2-0.45", 0, 0.91),
               student("tp-l2-0.3", 0, 0.95, sha="other"),   # another teacher file: not this front's
               {"stage": "latency", "runtime": "torch", "teacher_sha": "aaa",
                "ms": {"teacher": 4.0, "tp-l2-0.6": 1.6, "tp-l2-0.45": 2.0}},
               {"stage": "latency", "runtime": "onnxruntime", "teacher_sha": "aaa",
                "ms": {"teacher": 2.0, "tp-l2-0.6": 0.6, "tp-l2-0.45": 1.0}}]
    points = pruning_points(pruning, compress, "torch", 1)
    assert set(points) == {"tp-l2-0.6", "tp-l2-0.45"}
    assert points["tp-l2-0.6"][0] == 0.4 and abs(points["tp-l2-0.6"][1] - 9.0) < 1e-9   # the mean over seeds
    assert points["tp-l2-0.45"] == (0.5, 100 * (1 - 0.91))
    # no compress student was made for ONNX Runtime from this teacher, and pruning students are timed at batch 1
    assert pruning_points(pruning, compress, "onnxruntime", 1) == {}
    assert pruning_points(pruning, compress, "torch", 32) == {}
    # a compress student slower and less accurate than a pruning student is reported as beaten by it
    front = {**points, "compress 50%": (0.45, 11.4)}
    assert dominated_by(front, "compress 50%") == ["tp-l2-0.6"]


def test_against_pruning_pairs_the_most_accurate_student_of_each_side_within_each_budget() -> None:
    from benchmarks.compress.front_plot import against_pruning

    ours = {"compress 50%": (0.43, 11.4), "compress 40%": (0.38, 11.5), "compress 70% +thin": (0.68, 9.1)}
    theirs = {"tp-l2-0.6": (0.39, 9.7), "tp-l2-0.45": (0.51, 9.3)}   # 0.51 is within 50 % + 2 %
    rows = dict((r.split(" | ")[0].strip("| "), r) for r in against_pruning(ours, theirs)[2:])
    assert rows["30%"] == "| 30% | none within | none within |  |"
    assert rows["50%"] == "| 50% | compress 50% (0.43×, 11.40 %) | tp-l2-0.45 (0.51×, 9.30 %) | +2.10 |"
    assert rows["70%"] == "| 70% | compress 70% +thin (0.68×, 9.10 %) | tp-l2-0.45 (0.51×, 9.30 %) | -0.20 |"


def test_coupled_widths_are_a_setting_of_their_own_and_show_their_groups() -> None:
    import argparse

    from benchmarks.compress.__main__ import block_families, families, groups, setting
    from cheapconv.compression import DEFAULT_GROUP_WIDTHS

    args = argparse.Namespace(families="thin,coupled", runtime="torch", batch=1)
    assert "coupled" in families(args) and "coupled" not in block_families(args) and "thin" in block_families(args)
    assert groups(args) == list(DEFAULT_GROUP_WIDTHS) and setting(args) == "torch-thin+coupled"
    assert groups(argparse.Namespace(families="thin", runtime="torch", batch=1)) is None
    counts = {"student": {"paper": 30, "macs": 30}, "teacher": {"paper": 100, "macs": 100}}
    record = {"key": "student torch b1 30% sha e1 s0 +thin,coupled", "budget": "30%", "runtime": "torch", "batch": 1,
              "families": families(args), "met": True, "choices": {"block1.0.conv1+conv2": "W(0.5)"},
              "widths": {"block2.0.conv2 (+2 writers)": "Wg(0.5)"}, "teacher_ms": {"1": 4.0},
              "student_ms": {"1": 1.2}, "counts": counts, "start": {"top1": 0.8}, "end": {"top1": 0.9}}
    row = next(line for line in render([record]).splitlines() if line.startswith("| torch + thin + coupled |"))
    assert "group block2.0.conv2 (+2 writers)=Wg(0.5), block1.0.conv1+conv2=W(0.5)" in row
