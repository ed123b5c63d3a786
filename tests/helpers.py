"""Small helpers shared by the training tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from cheapconv import Callback


class StopAt(Callback):
    """Ask the run to stop after step ``step`` (as Ctrl-C or a time limit would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, run) -> None:
        if run.step == self.step:
            run.request_stop()
