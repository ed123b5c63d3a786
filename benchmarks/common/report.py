"""Progress lines and the number formats of the studies' Markdown tables."""

from __future__ import annotations

import sys
from collections.abc import Callable


def say(msg: str) -> None:
    """A progress line on stderr, flushed at once (stdout is kept for the tables a study prints)."""
    print(msg, file=sys.stderr, flush=True)


def progress_printer(what: str) -> Callable[[str, int, int], None]:
    """A ``progress=`` callback for ``cheapconv.search`` and the like: about 20 lines per phase, via :func:`say`."""
    def tick(phase: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            say(f"  {what}: {phase} {done}/{total}")
    return tick


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G), as cheapconv's own tables write counts."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.3g}{suffix}{unit}"
    return f"{n:g}{unit}"
