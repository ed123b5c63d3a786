"""The reproduction study (benchmarks/reproduce/) end to end in a tiny configuration, its resumption, the
report, and the statistics and verdicts the report is built on."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.common.stats import bootstrap_spearman, ranks, spearman, steps_to_reach
from benchmarks.reproduce import costs as reproduce_costs
from benchmarks.reproduce import report as reproduce_report
from benchmarks.reproduce import study as reproduce
from benchmarks.reproduce.plan import Run, Settings, plan_runs
from cheapconv.data import datasets as data

TINY = ["--teacher", "wrn_10_1", "--epochs", "1", "--subset", "128", "--test-subset", "128", "--batch-size", "64",
        "--students", "G(4)", "--smaller", "wrn_10_1", "--budgets", "BG(2,M)", "--seeds", "1", "--threads", "1",
        "--quiet", "--only", "1,2"]


def test_rank_statistics():
    assert ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # scipy's doc example
    assert math.isnan(spearman([1, 2, 3], [7, 7, 7]))
    lo, hi = bootstrap_spearman(list(range(30)), [v + (3 if v % 2 else -3) for v in range(30)], n=300)
    assert 0.8 < lo <= hi <= 1


def _run(row, student, mode, error, seed=0, params=100, schedule="s"):
    return {"kind": "run", "row": row, "student": student, "mode": mode, "seed": seed, "test_error": error,
            "params": params, "macs": 10 * params, "arch": f"{student}", "schedule": schedule,
            "build": ["cheap", student], "key": f"{row}|{student}|{mode}|{seed}|{schedule}"}


def test_claim_verdicts_respect_the_seed_spread():
    records = [_run("1", "teacher", "scratch", 5.0, params=700),
               *[_run("2", "G(4)", "at", e, seed=i, params=250) for i, e in enumerate([6.0, 6.4, 5.6])],  # sd 0.4
               _run("2", "G(4)", "kd", 6.2, params=250), _run("2", "G(4)", "scratch", 7.5, params=250),
               *[_run("3", "wrn_10_2", "at", e, seed=i, params=300) for i, e in enumerate([7.0, 7.2, 6.8])],
               *[_run("4", "search@BG(2,M)", "at", e, seed=i, params=55) for i, e in enumerate([8.0, 8.1, 7.9])],
               *[_run("2", "BG(2,M)", "at", e, seed=i, params=55) for i, e in enumerate([8.2, 8.1, 8.3])]]
    s = reproduce_report.Study(records)
    assert s.spread == pytest.approx(0.4)
    verdicts = {title[0]: verdict for title, verdict, _ in reproduce_report.claims(s, margin=1.0)}
    assert verdicts["1"] == "held"                                # 6.0 vs 7.0: Δ 1.0 > 0.4
    assert verdicts["2"] == "mixed"                               # AT vs KD Δ 0.2 is no win; KD vs scratch is
    assert verdicts["3"] == "held"                                # 6.0 − 5.0 = 1.0 ≤ 1.0
    assert verdicts["4"] == "no win (within the seed spread)"     # Δ 0.2 < 0.4
    assert verdicts["5"] == "not yet measured"
    claim2 = reproduce_report.claims(s, margin=1.0)[1][2]
    assert claim2[-1].startswith("Room to distil: the student from scratch minus the teacher, in points of "
                                 "error: G(4) +2.50")
    worse = reproduce_report.Study([r | {"test_error": r["test_error"] + 3} if r["row"] == "4" else r
                                    for r in records])
    assert dict((t[0], v) for t, v, _ in reproduce_report.claims(worse, 1.0))["4"] == "did not hold"


def test_fidelity_claim_compares_fisher_with_parameter_count():
    configs = [{"rules": ["a=G(4)"], "fisher": float(i), "paper": 100 + (i * 7) % 5, "macs": 1000 + i}
               for i in range(12)]
    records = [{"kind": "fidelity-configs", "configs": configs, "budget_of": "BG(2,M)", "budget": 100,
                "minibatch": "x"},
               *[_run("fidelity", f"cfg{i:02d}", "at", 20.0 - i, schedule="f") for i in range(12)]]
    title, verdict, texts = reproduce_report.fidelity_claim(reproduce_report.Study(records))
    assert verdict == "held", texts                   # Fisher ranks the errors perfectly, params do not
    assert "ρ(Fisher score, test error) = -1.00" in texts[0]


@pytest.mark.skipif(not (data.DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_tiny_study_end_to_end_resumes_and_reports(tmp_path, capsys):
    results, work = tmp_path / "results" / "r.jsonl", tmp_path / "work"
    argv = [*TINY, "--results", str(results), "--work", str(work)]
    reproduce.main(argv)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["row"], r["student"], r["mode"]) for r in records] == [
        ("1", "teacher", "scratch"), ("2", "G(4)", "scratch"), ("2", "G(4)", "kd"), ("2", "G(4)", "at")]
    assert all(r["train_images"] == 128 and r["test_images"] == 128 and r["steps"] == 2 for r in records)
    assert records[1]["params"] < records[0]["params"] and records[0]["teacher_file"]
    assert records[3]["teacher_sha"] == records[0]["teacher_sha"]
    assert records[0]["command"].startswith("python -m benchmarks.reproduce --teacher wrn_10_1 ")

    capsys.readouterr()
    reproduce.main(argv)                                   # everything done: nothing runs, nothing is added
    assert "4 already in" in capsys.readouterr().err
    assert results.read_text().count("\n") == 4

    # a run whose line is lost but whose (finished) checkpoint is there resumes it instead of training again
    results.write_text("".join(line + "\n" for line in results.read_text().splitlines()[:3]))
    reproduce.main(argv)
    again = [json.loads(line) for line in results.read_text().splitlines()]
    assert again[3]["key"] == records[3]["key"] and again[3]["resumed"]
    assert again[3]["test_error"] == records[3]["test_error"] and again[3]["steps"] == 2

    out = tmp_path / "reproduction.md"
    reproduce_report.main(["--results", str(results), "--out", str(out)])
    text = out.read_text()
    assert "| 2 | G(4) | " in text and f"{records[3]['test_error']:.2f}" in text
    assert "pending" in text                               # rows 3 and 4 of the study's plan have not run
    assert (results.parent / "reproduce-error-vs-params.png").stat().st_size > 1000
    assert "**5. The Fisher score ranks students better than parameter count: not yet measured.**" in text
    assert "no latency measured yet" in text

    reproduce.main([*argv, "--latency", "--latency-repeats", "2"])     # both trained architectures, timed
    timed = [json.loads(line) for line in results.read_text().splitlines() if '"latency"' in line]
    assert sorted(r["arch"] for r in timed) == sorted({r["arch"] for r in records})
    assert all(0 < r["batch1_ms"] < r["batch32_ms"] for r in timed)
    text = reproduce_report.render(results, out)
    assert (results.parent / "reproduce-error-vs-latency.png").stat().st_size > 1000
    assert "| 1 | teacher | 1.00× | 1.00× | 1.00× | 1.00× |" in text


def test_cost_section_relates_every_student_to_the_teacher():
    records = [_run("1", "teacher", "scratch", 5.0, params=700) | {"macs": 100_000_000},
               _run("2", "G(4)", "at", 6.0, params=250) | {"macs": 36_000_000},
               _run("3", "wrn_10_2", "at", 7.0, params=300) | {"macs": 44_000_000}]
    for arch, b1, b32 in (("teacher", 2.0, 40.0), ("G(4)", 1.8, 38.0), ("wrn_10_2", 1.0, 20.0)):
        records.append({"kind": "latency", "arch": arch, "batch1_ms": b1, "batch32_ms": b32, "threads": 1})
    s = reproduce_report.Study(records)
    text = "\n".join(reproduce_costs.cost_section(s))
    assert "| 2 | G(4) | 0.36× | 0.36× | 0.90× | 0.95× | 30.3 | 6.00 |" in text   # 36 M MACs × 32 / 38 ms
    assert "error-vs-parameters front (2 of 3): G(4) (6.00 %), teacher (5.00 %)" in text
    assert "batch 1 front (3 of 3): wrn_10_2 (7.00 %), G(4) (6.00 %), teacher (5.00 %)" in text
    claim1 = reproduce_report.claims(s, 1.0)[0][2][0]
    assert claim1.endswith("CPU latency, batch 1: 1.80 vs 1.00 ms")
    pts = [{"params": x, "error": e} for x, e in [(3, 1), (1, 5), (2, 5), (2, 4)]]
    assert [(p["params"], p["error"]) for p in reproduce_costs.pareto_front(pts, "params")] == [(1, 5), (2, 4), (3, 1)]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_teacher_initialised_row_records_its_learning_curve(tmp_path):
    """Row 5 (issue 11's question, at the study's schedule): the start's accuracy and test top-1 after fixed
    fractions of the first epoch."""
    results, work = tmp_path / "r.jsonl", tmp_path / "work"
    argv = [*TINY[:-1], "1,5", "--teacher-init", "--calib-samples", "32", "--calib-steps", "5",
            "--subset", "256", "--batch-size", "32", "--results", str(results), "--work", str(work)]
    reproduce.main(argv)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    init = [r for r in rows if r["row"] == "5"]
    assert [r["student"] for r in init] == ["init:G(4)", "init:B(2)"]
    for r in init:
        assert r["steps"] == 8 and r["calib_samples"] == 32 and r["calib_steps"] == 5
        assert 0 <= r["test_top1_at_start"] <= 1
        assert [p[0] for p in r["curve"]] == [1, 2, 4]           # 1/8, 1/4 and 1/2 of an 8-step epoch
        assert all(0 <= p[2] <= 1 for p in r["curve"]) and r["curve"][1][1] == 0.25
    out = tmp_path / "reproduction.md"
    reproduce_report.main(["--results", str(results), "--out", str(out)])
    section = out.read_text().split("## Teacher-initialised students along the run (row 5)")[1].split("\n## ")[0]
    g4 = next(line for line in section.splitlines() if line.startswith("| G(4) | 0 |"))
    assert f"| {100 * init[0]['test_top1_at_start']:.2f} | {100 * init[0]['curve'][0][2]:.2f} |" in g4
    assert "| – |" in g4                                   # no random-initialised G(4) in this study: no comparison


def test_row5_steps_to_the_random_final():
    measured = [(1, 0.5), (2, 0.72), (4, 0.8), (8, 0.9)]      # the curve's points, then the run's final
    assert steps_to_reach(0.6, measured, 0.7) == 2
    assert steps_to_reach(0.6, measured, 0.55) == 0
    assert steps_to_reach(0.6, measured, 0.85) == 8
    assert steps_to_reach(0.6, measured, 0.95) is None


def test_more_seeds_gives_the_named_students_every_seed_in_every_mode():
    def keys(*extra):
        args = reproduce.parse_args([*TINY[:-2], "--seeds", "2", "--only", "2,4", *extra])
        return {(j.row, j.student, j.mode, j.seed) for j in plan_runs(Settings.from_args(args), args, [])
                if isinstance(j, Run)}

    base, more = keys(), keys("--more-seeds", "G(4),search@BG(2,M)")
    assert ("2", "G(4)", "kd", 1) not in base and ("2", "G(4)", "at", 1) in base
    assert more - base == {("2", "G(4)", "scratch", 1), ("2", "G(4)", "kd", 1)}
    one_budget = ["--budgets", "BG(2,M),B(2)"]
    assert ("4", "search@B(2)", "at", 1) not in keys(*one_budget)
    assert {("4", "search@B(2)", "at", 1), ("2", "B(2)", "at", 1)} <= keys(*one_budget, "--more-seeds", "search@B(2)")


def test_the_report_reads_the_study_arguments_of_old_and_new_commands():
    """Records written before the benchmarks became a package name the script by path; both forms plan alike."""
    new = "python -m benchmarks.reproduce --threads 1 --teacher-init --more-seeds 'G(4)' --quiet"
    old = "python benchmarks/reproduce.py --threads 1 --teacher-init --more-seeds 'G(4)' --quiet"
    want = ["--threads", "1", "--teacher-init", "--more-seeds", "G(4)", "--quiet"]
    assert reproduce_report.study_arguments(new) == reproduce_report.study_arguments(old) == want
