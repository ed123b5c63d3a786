"""Stopping a run on request: Ctrl-C / SIGTERM or a callback's ``request_stop``, and what the user is told.

The first SIGINT/SIGTERM only raises a flag (:class:`StopSignal`); the loop finishes the step, every rank
agrees to stop at the same step boundary (:class:`StopNow`), a checkpoint is written and
:class:`Interrupted` says where. A second signal interrupts at once; the last checkpoint written then stays
the one to resume from (:func:`interrupted_message`).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["Interrupted", "StopNow", "StopSignal", "interrupted_message", "stopped_message"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, or a callback's ``request_stop``) stopped the run; ``checkpoint`` was written."""

    def __init__(self, message: str, checkpoint: Path | None, step: int) -> None:
        super().__init__(message)
        self.checkpoint, self.step = checkpoint, step

    def __str__(self) -> str:
        return str(self.args[0])


class StopNow(Exception):
    """Every rank agreed to stop at this step boundary (raised inside the loop, caught by it)."""


class StopSignal:
    """While active, the first SIGINT/SIGTERM only sets ``requested`` (the loop stops at the end of the
    step and writes a checkpoint); a second one interrupts at once. Main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nStopping after this step and writing a checkpoint (press Ctrl-C again to abort at once)...",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def stopped_message(step: int, total_steps: int, checkpoint: Path | None) -> str:
    """What a stop at a step boundary says (the checkpoint of that step has been written)."""
    where = f"; checkpoint written to {checkpoint} (resume with --resume)" if checkpoint else ""
    return f"Interrupted at step {step} of {total_steps}{where}."


def interrupted_message(step: int, total_steps: int, checkpoint: Path | None, last_saved: int | None) -> str:
    """What an interruption *not* at a step boundary says (a second Ctrl-C, or no signal handler): the state
    may be mid-step, so the last checkpoint written (writes are atomic) stays the one to resume from."""
    when = (f"after the last step ({step} of {total_steps}), while validating or writing the final "
            "checkpoint" if step >= total_steps else f"during step {step + 1}")
    if checkpoint and last_saved is not None:
        kept = (f"; the last checkpoint ({checkpoint}, step {last_saved}) is kept: rerun with --resume "
                "(resume=True) to continue from it")
        if last_saved >= total_steps:
            kept += " (no training step is repeated; only the final results are written)"
    else:
        kept = "; no checkpoint had been written, so a new run starts over"
    return f"Interrupted {when}{kept}."
