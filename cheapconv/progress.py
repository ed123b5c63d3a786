"""Progress of long work on stderr: a live bar on a terminal, plain lines in a pipe or a log file.

A live bar draws nothing until it ends when stderr is not a terminal (rich redraws bars on terminals only),
so a 45-minute search or a slow evaluation looked hung in a log. :class:`ProgressReport` draws the bar where
it can and otherwise writes a line when a phase starts, at every ~10 % of it and when it ends, each with the
time spent and an estimate of the time left::

    Scoring (Fisher): 100/1,000 (10%), 0:42 elapsed, ETA 6:18

Work reports through a callback ``tick(phase, done, total)`` (``search``'s phases, ``profile``'s blocks), or
``tick(done, total)`` bound to one phase with :meth:`ProgressReport.phase` (evaluation)::

    with ProgressReport({"scoring": "Scoring (Fisher)"}) as report:
        result = cheapconv.search(..., progress=report.tick)
    with ProgressReport() as report:
        figures = cheapconv.evaluate(model, data, progress=report.phase("Evaluating"))

:func:`stage` marks a step without a count ("Measuring side by side...") the same way: a spinner on a
terminal, a line at its start and one at its end otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressReport", "format_duration", "stage"]


def format_duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _console(console: Any | None) -> Any:
    if console is not None:
        return console

    return Console(stderr=True)


def _live(console: Any) -> bool:
    return bool(console.is_terminal) and not console.is_dumb_terminal


@dataclass
class _Phase:
    started: float        # when its work began (the end of whatever ran before it)
    base: int = 0         # the count it started from (a resumed run's steps already done)
    printed: int = -1     # the last tenth a line was written for
    last_line: float = 0.0
    finished: bool = False


class ProgressReport:
    """One report of a piece of work in phases: a rich bar per phase on a terminal, plain lines elsewhere.

    - ``labels``: how each phase is named (``{"scoring": "Scoring (Fisher)"}``; unknown phases by their name).
    - ``console``: a rich Console (default: a new one on stderr); whether it is a terminal decides the form.
    - ``every``: the fraction of a phase between two plain lines (0.1: one line per ~10 %). A phase whose total
      is unknown (0) gets a line at most once a minute.
    - ``unit``: appended to the counts of plain lines (``"images"``).

    Use it as a context manager (the bar is drawn inside); :meth:`tick` may also be called outside one, and then
    writes plain lines only.
    """

    def __init__(self, labels: Mapping[str, str] | None = None, *, console: Any | None = None, every: float = 0.1,
                 unit: str = "") -> None:
        self.labels = dict(labels or {})
        self.console = _console(console)
        self.live = _live(self.console)
        self.every, self.unit = every, unit
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._phases: dict[str, _Phase] = {}
        self._last = time.monotonic()

    # ------------------------------------------------------------------------------------ context

    def __enter__(self) -> ProgressReport:
        self._last = time.monotonic()
        if self.live:
            # labels and info may quote paths and layer names: shown literally, never as markup
            self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}", markup=False), console=self.console,
                                 transient=False)
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._tasks = None, {}

    # ------------------------------------------------------------------------------------ reporting

    def label(self, phase: str) -> str:
        """How ``phase`` is named in the bar and the lines."""
        return self.labels.get(phase, phase)

    def start(self, phase: str, done: int, total: int, info: str = "") -> None:
        """Begin ``phase`` explicitly at ``done`` of ``total`` (a resumed run starts part-way: its estimate then
        counts only the work of this run). Writes the phase's first line. Optional: a phase also begins at its
        first :meth:`tick`, timed from the end of the work before it."""
        now = time.monotonic()
        self._phases[phase] = _Phase(started=now, base=done)
        self._last = now
        self._show(phase, done, total, info, force=True)

    def tick(self, phase: str, done: int, total: int, info: str = "") -> None:
        """``done`` of ``total`` units of ``phase`` are finished (``total`` 0: unknown); ``info`` is shown beside
        the bar or at the end of the line."""
        now = time.monotonic()
        first = phase not in self._phases
        if first:
            self._phases[phase] = _Phase(started=self._last)
        self._last = now
        self._show(phase, done, total, info, force=first)

    def phase(self, phase: str) -> Callable[[int, int], None]:
        """``tick`` bound to one phase: a ``progress(done, total)`` callback."""
        return lambda done, total: self.tick(phase, done, total)

    # ------------------------------------------------------------------------------------ drawing

    def _show(self, phase: str, done: int, total: int, info: str, *, force: bool) -> None:
        if self._bar is not None:
            if phase not in self._tasks:
                self._tasks[phase] = self._bar.add_task(self.label(phase), total=total or None, completed=done,
                                                        info=info)
            self._bar.update(self._tasks[phase], completed=done, total=total or None, info=info)
            return
        state, now = self._phases[phase], time.monotonic()
        if state.finished:
            return
        if total > 0:
            tenth = int(done / total / self.every + 1e-9) if self.every > 0 else 0
            end = done >= total
            due = force or end or tenth > state.printed
        else:
            tenth, end = state.printed, False
            due = force or now - state.last_line >= 60
        if not due:
            return
        state.printed, state.last_line, state.finished = tenth, now, end
        self.console.print(self.line(phase, done, total, info, now=now), highlight=False, markup=False,
                           soft_wrap=True)

    def line(self, phase: str, done: int, total: int, info: str = "", *, now: float | None = None) -> str:
        """The plain line of ``phase`` at ``done`` of ``total``."""
        state = self._phases.get(phase) or _Phase(started=self._last)
        elapsed = (time.monotonic() if now is None else now) - state.started
        unit = f" {self.unit}" if self.unit else ""
        if total > 0:
            text = f"{self.label(phase)}: {done:,}/{total:,}{unit} ({100 * done / total:.0f}%)"
        else:
            text = f"{self.label(phase)}: {done:,}{unit}"
        text += f", {format_duration(elapsed)} elapsed"
        ran = done - state.base
        if total > 0 and done >= total:
            text += ", done"
        elif total > 0 and ran > 0:
            text += f", ETA {format_duration(elapsed / ran * (total - done))}"
        return text + (f"; {info}" if info else "")


@contextmanager
def stage(text: str, *, console: Any | None = None) -> Iterator[None]:
    """A step of unknown length: rich's spinner with ``text`` on a terminal; elsewhere a line ``text`` when it
    starts and ``text done (0:12)`` when it ends, so that a log shows what ran and for how long."""
    console = _console(console)
    if _live(console):
        with console.status(text):
            yield
        return
    t0 = time.monotonic()
    console.print(text, highlight=False, markup=False, soft_wrap=True)
    yield
    console.print(f"{text.rstrip('.').rstrip()} done ({format_duration(time.monotonic() - t0)})", highlight=False,
                  markup=False, soft_wrap=True)
