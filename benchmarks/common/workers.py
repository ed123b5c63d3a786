"""One measurement per fresh process: a crash, a leak or a timeout in one model cannot stop a sweep.

The worker is a study module run as ``python -m MODULE ARGS`` from the repository root (so ``benchmarks`` and
``cheapconv`` import as they do for the sweep), on one intra-op thread unless ``OMP_NUM_THREADS`` says
otherwise; it prints its result as one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: the repository root, where ``python -m benchmarks.…`` finds the package
REPO = Path(__file__).resolve().parents[2]


def first_line(e: BaseException | str) -> str:
    """The first line of an error's message (300 characters at most), or its type where it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def run_worker(module: str, args: list[str], timeout: float) -> tuple[dict | None, str]:
    """``(result, "")`` from the last JSON line the worker printed, or ``(None, why)`` where it printed none."""
    cmd = [sys.executable, "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1]), ""
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    if proc.returncode < 0:
        tail = f"killed by signal {-proc.returncode} (9: out of memory, usually; rerun it alone with -j 1)"
    return None, f"worker exit {proc.returncode}: {tail[:300]}"
