"""How long ``cheapconv --help`` takes to start, against a bare ``python -c "import torch"``, side by side.

Whole processes, timed from start to exit, interleaved in one run (the two alternate, in ABBA order, so load
that changes during the run falls on both alike); one untimed run of each first warms the file cache. Prints
each command's median, min and max, the ratio of the medians (the goal: ``--help`` at most 0.5× the import),
the load average before and after, and the CPU and thread counts. Run it on a quiet machine. Usage:
    python -m benchmarks.perf.cli_startup [--runs 15] [--args "distill --help"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: the goal of issue 26: a --help costs at most this fraction of ``import torch``
GOAL = 0.5


def cheapconv_command(args: list[str]) -> list[str]:
    """The installed ``cheapconv`` console script beside this interpreter, else ``python -m cheapconv_cli.main``."""
    script = Path(sys.executable).with_name("cheapconv")
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "cheapconv_cli.main", *args]


def time_process(argv: list[str]) -> float:
    """Seconds from starting ``argv`` to its exit (output discarded); a failure is an error, not a figure."""
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def interleaved(commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """``runs`` timings of each command, taken in turn: A B, then B A, and so on (after one untimed run each)."""
    for argv in commands.values():
        time_process(argv)
    times: dict[str, list[float]] = {label: [] for label in commands}
    order = list(commands)
    for i in range(runs):
        for label in order if i % 2 == 0 else order[::-1]:
            times[label].append(time_process(commands[label]))
    return times


def machine() -> dict:
    """What the figures depend on: load average, CPUs, and the thread settings the children inherit."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"load_average": list(os.getloadavg()), "cpus": os.cpu_count(), "cpus_usable": affinity,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "python": sys.version.split()[0]}


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {label: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "runs": len(ts)}
            for label, ts in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.cli_startup",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (>= 10 for a figure)")
    parser.add_argument("--args", default="--help", help="the cheapconv arguments to time (default --help)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    help_label = f"cheapconv {args.args}"
    commands = {help_label: cheapconv_command(shlex.split(args.args)),
                "import torch": [sys.executable, "-c", "import torch"]}
    before = machine()
    times = interleaved(commands, args.runs)
    after = machine()
    threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True).stdout.strip()   # asked after the timings
    figures = summary(times)
    ratio = figures[help_label]["median_s"] / figures["import torch"]["median_s"]

    print(f"{args.runs} runs of each, interleaved; CPUs {before['cpus']} (usable {before['cpus_usable']}), "
          f"torch intra-op threads {threads}, OMP_NUM_THREADS={before['OMP_NUM_THREADS'] or 'unset'}, "
          f"Python {before['python']}")
    print("load average (1, 5, 15 min): before " + ", ".join(f"{v:.2f}" for v in before["load_average"])
          + "; after " + ", ".join(f"{v:.2f}" for v in after["load_average"]))
    print("\n| command | median s | min s | max s |\n|---|---:|---:|---:|")
    for label, f in figures.items():
        print(f"| `{label}` | {f['median_s']:.3f} | {f['min_s']:.3f} | {f['max_s']:.3f} |")
    print(f"\n{help_label} ÷ import torch (medians): {ratio:.2f}× (goal: at most {GOAL}×)")
    if args.runs < 10:
        print(f"(only {args.runs} runs each: a check that it works, not a figure; use --runs 10 or more)")
    record = {"commands": {k: shlex.join(v) for k, v in commands.items()}, "figures": figures, "ratio": ratio,
              "times_s": times, "torch_threads": threads, "machine_before": before, "machine_after": after}
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
