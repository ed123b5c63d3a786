"""Render the study's page (``benchmarks/reproduce/README.md``) and its Pareto plots from its results (see study.py).

Everything in the page comes from the records of ``benchmarks/results/reproduce.jsonl`` (and the Fisher
check's ``fisher_check.json``): the table in the shape of the papers' tables (params, MACs, CPU latency, test
error from scratch / KD / AT with ± one standard deviation over seeds; "pending" where a planned run has no
result yet), the plots, the commands, versions and wall time, and the five claims, each held / did not hold /
not yet measured.

The seed spread: the largest standard deviation of any multi-seed group of the study. A difference smaller
than it is never called a win, including between single-seed runs (whose own spread is unknown).

    python -m benchmarks.reproduce.report                                 # the real study
    python -m benchmarks.reproduce.report --results R.jsonl --out R.md    # elsewhere
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
from collections import defaultdict
from pathlib import Path

from cheapconv.store import atomic_write

from ..common.records import RESULTS, read_records
from ..common.stats import mean_sd
from .costs import cost_section, latency_pair, pareto_front, student_points
from .fidelity import FISHER_DECISION, fidelity_claim, fidelity_section, fisher_section
from .row5 import teacher_init_section

#: where the page is written: beside the study
PAGE = Path(__file__).resolve().parent / "README.md"
#: how records written before the benchmarks became a package name the commands, and the same commands today
OLD_COMMANDS = {"python benchmarks/reproduce.py": "python -m benchmarks.reproduce",
                "python benchmarks/reproduce_fisher.py": "python -m benchmarks.reproduce.fisher"}

MODES = ("scratch", "kd", "at")
MODE_NAMES = {"scratch": "scratch", "kd": "KD", "at": "AT"}
ROW_TITLES = {"1": "teacher", "2": "cheap student (teacher's architecture)", "3": "smaller standard WRN",
              "4": "BlockSwap searched student", "5": "teacher-initialised + reconstructed"}


class Study:
    """The records of one schedule, grouped: ``errors[(row, student, mode)] = [error % per seed]``."""

    def __init__(self, records: list[dict], plan: list | None = None):
        runs = [r for r in records if r.get("kind") == "run"]
        teacher = [r for r in runs if r["row"] == "1"]
        main = [r for r in runs if r["row"] not in ("0", "fidelity")]
        self.schedule = teacher[-1]["schedule"] if teacher else (main[-1]["schedule"] if main else None)
        self.runs = [r for r in main if r["schedule"] == self.schedule]
        self.parity = [r for r in runs if r["row"] == "0"]
        self.fidelity = [r for r in runs if r["row"] == "fidelity"]
        self.records = records
        self.errors: dict[tuple, list[float]] = defaultdict(list)
        self.info: dict[tuple, dict] = {}
        for r in self.runs:
            self.errors[(r["row"], r["student"], r["mode"])].append(r["test_error"])
            self.info[(r["row"], r["student"])] = r
        self.latency = {r["arch"]: r for r in records if r.get("kind") == "latency"}
        self.planned = {(j.row, j.student, j.mode) for j in plan or []
                        if hasattr(j, "mode") and j.row not in ("0", "fidelity")}
        if self.schedule is None:
            self.schedule = next((j.schedule for j in plan or [] if getattr(j, "row", "") == "1"), None)
        self.costs = planned_costs(plan or [], self.info)
        shas = {r["teacher_sha"] for r in teacher[-1:] if "teacher_sha" in r}
        self.stale = sorted(r["key"] for r in self.runs if shas and r.get("teacher_sha", next(iter(shas))) not in shas)
        sds = [mean_sd(v)[1] for v in self.errors.values() if len(v) > 1]
        self.spread = max(sds) if sds else None

    def stat(self, row: str, student: str, mode: str) -> tuple[float, float | None, int] | None:
        v = self.errors.get((row, student, mode))
        if not v:
            return None
        m, sd = mean_sd(v)
        return m, sd, len(v)

    def cell(self, row: str, student: str, mode: str) -> str:
        s = self.stat(row, student, mode)
        if s is None:
            return "pending" if (row, student, mode) in self.planned else "–"
        m, sd, n = s
        return f"{m:.2f}" if sd is None else f"{m:.2f} ± {sd:.2f} (n={n})"

    def students(self) -> list[tuple[str, str]]:
        keys = {(k[0], k[1]) for k in self.errors} | {(k[0], k[1]) for k in self.planned if k[0] != "0"}
        return sorted(keys, key=lambda k: (k[0], -self.params(k), k[1]))

    def params(self, k: tuple[str, str], default: float = 0) -> float:
        """Parameters of a student: counted on its run, or on its planned architecture before it ran."""
        return self.info[k]["params"] if k in self.info else self.costs.get(k, (default,))[0]


def planned_costs(plan: list, info: dict) -> dict[tuple[str, str], tuple[int, int]]:
    """(params, MACs) of planned students that have not run yet and whose architecture is known now."""
    import warnings

    import cheapconv

    costs = {}
    for j in plan:
        k = (getattr(j, "row", None), getattr(j, "student", None))
        if k in info or k in costs or not hasattr(j, "arch") or j.arch[0] not in ("wrn", "cheap", "init"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher = j.schedule.split("/", 1)[0]
            m = cheapconv.create_model(j.arch[1]) if j.arch[0] == "wrn" else \
                cheapconv.cheapen(cheapconv.create_model(teacher), j.arch[1])
        costs[k] = (cheapconv.count_params(m, "paper"), cheapconv.count_macs(m, (1, 3, 32, 32)))
    return costs


def compare(s: Study, a: tuple, b: tuple) -> tuple[str, str]:
    """(verdict, text) for "a has lower error than b": held / did not hold / no win / not yet measured."""
    sa, sb = s.stat(*a), s.stat(*b)
    if sa is None or sb is None:
        return "not yet measured", f"{a[1]} {MODE_NAMES[a[2]]} vs {b[1]} {MODE_NAMES[b[2]]}: pending"
    d = sb[0] - sa[0]   # > 0: the first has the lower error
    lower = "the first" if d > 0 else ("the second" if d < 0 else "neither")
    text = (f"{a[1]} {MODE_NAMES[a[2]]} {sa[0]:.2f} % vs {b[1]} {MODE_NAMES[b[2]]} {sb[0]:.2f} % "
            f"(the error of {lower} is lower by {abs(d):.2f} points")
    if s.spread is None:
        return "not yet measured", text + "; no multi-seed group yet, so the seed spread is unknown)"
    text += f", seed spread {s.spread:.2f})"
    if d > s.spread:
        return "held", text
    if -d > s.spread:
        return "did not hold", text
    return "no win (within the seed spread)", text


def overall(verdicts: list[str]) -> str:
    if not verdicts or all(v == "not yet measured" for v in verdicts):
        return "not yet measured"
    measured = [v for v in verdicts if v != "not yet measured"]
    if all(v == "held" for v in measured):
        return "held" + (" (so far; some comparisons pending)" if len(measured) < len(verdicts) else "")
    if all(v == "did not hold" for v in measured):
        return "did not hold"
    if any(v == "held" for v in measured):
        return "mixed"
    return "did not hold" if any(v == "did not hold" for v in measured) else "no win (within the seed spread)"


def claims(s: Study, margin: float) -> list[tuple[str, str, list[str]]]:
    """The issue's five claims: (claim, verdict, the comparisons behind it)."""
    out = []
    cheap = [k for k in s.students() if k[0] == "2"]
    small = [k for k in s.students() if k[0] == "3"]
    pairs = []
    for k in small:   # each smaller WRN against the cheap student with the most parameters not above it
        p = s.params(k)
        fits = [c for c in cheap if p and s.params(c, math.inf) <= p]
        if fits:
            c = max(fits, key=s.params)
            verdict, text = compare(s, (*c, "at"), (*k, "at"))
            pairs.append((verdict, text + latency_pair(s, c, k)))
    out.append(("1. Cheap blocks beat smaller architectures at equal (or fewer) parameters (AT both)",
                overall([v for v, _ in pairs]), [t for _, t in pairs]))
    c2 = []
    for k in [k for k in cheap if (*k, "kd") in s.planned or s.stat(*k, "kd")]:
        c2 += [compare(s, (*k, "at"), (*k, "kd")), compare(s, (*k, "kd"), (*k, "scratch"))]
    teacher = s.stat("1", "teacher", "scratch")
    texts2 = [t for _, t in c2]
    room = [(k[1], st[0] - teacher[0]) for k in cheap if teacher and (st := s.stat(*k, "scratch"))]
    if room:   # what a teacher can pass on: how much better it is than the student learns alone
        texts2.append("Room to distil: the student from scratch minus the teacher, in points of error: "
                      + ", ".join(f"{name} {d:+.2f}" for name, d in room)
                      + " (the paper's WRN-40-2 was 1.30 points better than its B(2) student from scratch).")
    out.append(("2. AT beats KD beats scratch for cheap students", overall([v for v, _ in c2]), texts2))
    best = min((st + (k,) for k in cheap if (st := s.stat(*k, "at"))), default=None)
    title3 = f"3. The best cheap student comes within {margin:g} point(s) of error of the teacher"
    if teacher is None or best is None:
        out.append((title3, "not yet measured", []))
    else:
        gap = best[0] - teacher[0]
        out.append((title3, "held" if gap <= margin else "did not hold",
                    [f"best cheap student {best[3][1]} (AT) {best[0]:.2f} % vs teacher {teacher[0]:.2f} %: "
                     f"{gap:+.2f} points (the paper: B(2) with AT 0.31 points behind WRN-40-2 on CIFAR-10)"]))
    c4 = [compare(s, k + ("at",), ("2", k[1].split("@", 1)[1], "at")) for k in s.students() if k[0] == "4"]
    out.append(("4. The searched student beats the single-type student at equal budget (AT both)",
                overall([v for v, _ in c4]), [t for _, t in c4]))
    out.append(fidelity_claim(s))
    return out


def pareto_plots(s: Study, plot_dir: Path) -> dict[str, Path | None]:
    """Error vs params and error vs measured latency (AT where there is a teacher, else scratch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = student_points(s)
    out: dict[str, Path | None] = {}
    plot_dir.mkdir(parents=True, exist_ok=True)
    colours = {"1": "black", "2": "tab:blue", "3": "tab:orange", "4": "tab:green", "5": "tab:purple"}
    for name, key, label in (("params", "params", "parameters (paper convention)"),
                             ("latency", "b1", "CPU latency, batch 1, fp32 (ms)")):
        pts = [p for p in points if p[key] is not None]
        if not pts:
            out[name] = None
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for row in sorted({p["row"] for p in pts}):
            sel = [p for p in pts if p["row"] == row]
            ax.errorbar([p[key] for p in sel], [p["error"] for p in sel], yerr=[p["sd"] for p in sel], fmt="o",
                        color=colours.get(row, "grey"), label=ROW_TITLES.get(row, row), capsize=3)
            for p in sel:
                ax.annotate(p["student"], (p[key], p["error"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        front = pareto_front(pts, key)
        ax.step([p[key] for p in front], [p["error"] for p in front], where="post", color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        fmt = (lambda v, _: f"{v / 1e3:g}k") if name == "params" else (lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(fmt))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(fmt))
        ax.tick_params(axis="x", which="minor", labelsize=6)
        ax.set_xlabel(label)
        ax.set_ylabel("test error (%), AT (teacher: scratch)")
        ax.set_title(f"Fashion-MNIST, {s.schedule}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = plot_dir / f"reproduce-error-vs-{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        out[name] = path
    return out


def table(s: Study) -> list[str]:
    lines = ["| row | student | params | MACs | CPU latency b1 (ms) | scratch error % | KD error % | AT error % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row, student in s.students():
        info = s.info.get((row, student), {})
        cost = (info["params"], info["macs"]) if info else s.costs.get((row, student))
        lat = s.latency.get(info.get("arch"), {})
        lat_text = f"{lat['batch1_ms']:.2f} ({lat['threads']} thr)" if lat else "pending"
        params = f"{cost[0]:,}" if cost else "pending"
        macs = f"{cost[1] / 1e6:.1f} M" if cost else "pending"
        label = student
        if row == "4" and info:
            ref = info["build"][1].split(":", 1)[1]
            found = [r for r in s.records if r.get("kind") == "search" and r["key"] == ref]
            label = f"{student}: {found[-1]['summary']}" if found else student
        cells = [s.cell(row, student, m) for m in MODES]
        lines.append(f"| {row} | {label} | {params} | {macs} | {lat_text} | " + " | ".join(cells) + " |")
    return lines


def provenance(records: list[dict], shown: list[str] | None = None) -> list[str]:
    """The commands, versions, wall time and machine of the records (``shown``: commands the page quotes
    elsewhere, such as the Fisher checks')."""
    commands = sorted({r["command"] for r in records if "command" in r})
    versions = sorted({f"cheapconv {r['cheapconv']}, torch {r['torch']}, Python {r['python']}"
                       for r in records if "torch" in r})
    wall = sum(r.get("wall_s", 0) for r in records if r.get("kind") in ("run", "search"))
    dates = sorted(r["date"] for r in records if "date" in r)
    loads = [r["load_avg"] for r in records if "load_avg" in r]
    threads = sorted({r["threads"] for r in records if "threads" in r})
    lines = ["```", *commands, "```", "", f"Versions: {'; '.join(versions) or 'none yet'}.",
             f"Wall time of the recorded runs and searches: {wall / 3600:.2f} h ({len(records)} records"
             + (f", {dates[0]} to {dates[-1]}" if dates else "") + ")"
             + ("; runs that resumed a checkpoint count only their last part" if any(r.get("resumed") for r in records)
                else "") + "."]
    devices = sorted({r["device"] for r in records if r.get("kind") == "run" and "device" in r})
    if devices and not any(d.startswith("cuda") for d in devices):
        lines.append("Every run ran on the CPU (none used a GPU), so the issue's GPU rows (teacher and "
                     "G(4)/B(2) at the paper's full schedule, with GPU distillation throughput) are not part of these "
                     "results: no GPU has been lent to this project's sessions yet. `benchmarks/gpu/reproduce.sh` "
                     "runs them in one device call (its header says what to carry), and `benchmarks/gpu/check.sh` "
                     "measures the throughput against the plain loop.")
    old = [f"`{a}` is `{b}`" for a, b in OLD_COMMANDS.items()
           if any(c.startswith(a + " ") for c in [*commands, *(shown or [])])]
    if old:
        lines.append("Commands recorded before the benchmarks became a package name the scripts by path; with the "
                     "same arguments, " + " and ".join(old) + " today.")
    if loads:
        lines.append(f"Threads {', '.join(map(str, threads))}; load average when each record was written "
                     f"{min(loads):.1f}–{max(loads):.1f} (the machine is shared: wall times are not speed claims).")
    return lines


def study_arguments(command: str) -> list[str]:
    """The study's own arguments in a recorded command: ``python -m benchmarks.reproduce ARGS``, or
    ``python benchmarks/reproduce.py ARGS`` as records written before the benchmarks became a package say."""
    words = shlex.split(command)
    return words[3:] if words[1:2] == ["-m"] else words[2:]


def study_plan(records: list[dict]) -> list:
    """The jobs the study's command plans (all rows), to mark missing ones "pending"."""
    from . import study
    from .plan import Settings, plan_runs

    # the latest training command says what the study is meant to hold (its --only is dropped: all rows)
    argv = next((study_arguments(r["command"]) for r in reversed(records) if r.get("kind") == "run"), [])
    drop = {"--only", "--results", "--work"}
    clean, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif a not in ("--dry-run", "--latency"):
            clean.append(a)
    args = study.parse_args(clean)
    return plan_runs(Settings.from_args(args), args, records)


def design(s: Study) -> list[str]:
    """What was chosen and why (the schedule's parts come from the records' schedule key)."""
    if not s.schedule:
        return []
    teacher, epochs, batch, fast, *_ = s.schedule.split("/")
    return [f"Design: the papers' WRN-40-2 / 200-epoch CIFAR recipe takes days on this 2-core CPU, so the teacher is "
            f"{teacher.replace('_', '-').upper()} and every run follows the spec's recipe (SGD, momentum 0.9, lr 0.1, "
            f"weight decay 5e-4, {batch[1:]} images a batch, lr × 0.2 at 30/60/80 % of training, random crop + "
            f"flip) shortened to {epochs[1:]} epochs of the 60,000 training images, trained with "
            f"{fast.replace('+cl', ' autocast + channels_last')} (row 0 checks that against fp32). Students start "
            "from random weights; cheap students are the "
            "teacher's architecture with cheap blocks. Absolute errors are therefore those of a short schedule: "
            "the claims are about the differences between rows under the same schedule."]


def parity_section(s: Study) -> list[str]:
    if not s.parity:
        return ["Pending (row 0 has not run)."]
    by = {r["mode"]: r for r in s.parity}
    lines = ["| setting | test error % | training wall s |", "|---|---:|---:|"]
    for mode in ("scratch-fp32", "scratch"):
        if mode in by:
            r = by[mode]
            what = f"{r['precision']}{', channels_last' if r['channels_last'] else ', NCHW'}"
            lines.append(f"| {what} | {r['test_error']:.2f} | {r['wall_s']:.0f} |")
    if len(by) == 2:
        d = by["scratch"]["test_error"] - by["scratch-fp32"]["test_error"]
        r = by["scratch"]
        spread = f"{s.spread:.2f}" if s.spread is not None else "not yet known"
        lines += ["", f"The teacher architecture from scratch on the first {r['train_images']:,} training images, "
                  f"{r['epochs']} epoch(s), seed 0 for both. Difference (fast − fp32): {d:+.2f} points; the study's "
                  f"seed spread: {spread}. A difference within the spread means no accuracy cost was detected."]
    return lines


def fisher_commands(paths: list[Path]) -> list[str]:
    """The command each Fisher check recorded (its section quotes it)."""
    return [c for p in paths if (c := json.loads(Path(p).read_text()).get("command"))]


def render(results: Path, out: Path, *, fisher: list[Path] | None = None, margin: float = 1.0,
           plot_dir: Path | None = None) -> str:
    """Write the report for ``results`` to ``out`` (plots into ``plot_dir``, default beside the results)."""
    records = read_records(results)
    s = Study(records, study_plan(records))
    plots = pareto_plots(s, plot_dir or results.parent)
    fisher = fisher if fisher is not None else sorted(results.parent.glob("fisher_check*.json"))
    lines = ["# Reproducing the papers' claims on real Fashion-MNIST", "",
             "Generated by `python -m benchmarks.reproduce.report` from "
             f"`{os.path.relpath(results, out.parent)}` (the study: `python -m benchmarks.reproduce`; the "
             "docstring of `benchmarks/reproduce/study.py` says what each row is). Error = 100 − top-1 on the test "
             "images, fp32 evaluation. ± is one standard deviation over seeds (n = seeds); a single figure is one "
             "seed. \"pending\": planned, not yet run. "
             "To continue the study: `python -m benchmarks.reproduce` (resumable; `--dry-run` lists what is left), "
             "then the report command again.",
             "", f"Schedule: `{s.schedule}` (teacher / epochs / batch / training precision / training images / "
             "test images).", "", *design(s), "", "## Results", "", *table(s), ""]
    if s.stale:
        lines += [f"**Warning**: {len(s.stale)} runs were distilled from another teacher file than the teacher row's "
                  f"(teacher retrained?): {', '.join(s.stale)}. Delete their lines and run them again.", ""]
    for name, title in (("params", "Error against parameters"), ("latency", "Error against measured latency")):
        path = plots.get(name)
        lines += [f"**{title}**: " + (f"![{title}]({os.path.relpath(path, out.parent)})" if path else
                                      "pending (no latency measured yet: `python -m benchmarks.reproduce --latency` "
                                      "on a quiet machine)" if name == "latency" else "pending"), ""]
    lines += ["## What the cheap blocks buy on this CPU", "", *cost_section(s), "", "## The claims", ""]
    for title, verdict, texts in claims(s, margin):
        lines += [f"**{title}: {verdict}.**", "", *[f"- {t}" for t in texts], ""]
    lines += ["### Search fidelity: the sampled configurations (claim 5)", "", *fidelity_section(s), ""]
    lines += ["## Teacher-initialised students along the run (row 5)", "", *teacher_init_section(records), ""]
    lines += ["## Accuracy parity of the fast setting (row 0)", "", *parity_section(s), "",
              "## Fisher ranking with bf16 and smaller minibatches", "", *fisher_section(fisher), "",
              FISHER_DECISION, "",
              "## Commands, versions, wall time", "", *provenance(records, fisher_commands(fisher)), ""]
    text = "\n".join(lines)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS / "reproduce.jsonl")
    p.add_argument("--out", type=Path, default=PAGE)
    p.add_argument("--fisher", type=Path, nargs="*", default=None,
                   help="The Fisher checks' JSON files (default: fisher_check*.json beside the results).")
    p.add_argument("--plots", type=Path, default=None, help="Where the PNGs go (beside the results).")
    p.add_argument("--margin", type=float, default=1.0, help="Claim 3's margin, in points of error.")
    args = p.parse_args(argv)
    render(args.results, args.out, fisher=args.fisher, margin=args.margin, plot_dir=args.plots)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
