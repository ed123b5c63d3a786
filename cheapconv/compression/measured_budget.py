"""A budget met *as measured* (issue 27): select, measure the assembled student as a whole, correct the latency
model from the measurement, select again.

The library predicts a student's latency additively (the teacher's time less each option's time saved, each
measured on its own site). The whole student differs: fused kernels, session overheads, caches; the issue found
the additive estimate 10-25 % low in ONNX Runtime. :func:`meet_budget` corrects it with an additive offset:

    offset ← offset + (measured − (predicted + offset))     (starting at 0; i.e. offset = measured − predicted)

and solves again against the budget less the offset, so a student measured 0.4 ms over its prediction is next
chosen from those predicted 0.4 ms under the budget. It stops at the first student measured within the budget
(``tolerance`` allowed over it) or after ``rounds`` rounds in all.

A student measured within the budget is measured once more before it is accepted (``confirm``), and both
measurements must be within it. One measurement of a few milliseconds on a shared machine moves by several per
cent, so a student near the budget's edge can pass on one lucky draw (issue 27's EfficientNet-Lite0 students,
accepted by one measurement each, re-measured 1-5 % over their budgets). A student that fails its confirmation
counts as a miss, and the offset is corrected from the mean of its two measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UsageError
from .budgets import format_value, parse_budget
from .library_model import Library
from .selection import BudgetUnreachableError, Selection, select

__all__ = ["BudgetResult", "Round", "meet_budget"]


@dataclass
class Round:
    """One solve-and-measure round: the budget solved against (the budget less the offset so far), the
    library's prediction for the chosen student (uncorrected), what the caller measured, and the confirming
    second measurement where the first was within the budget (None otherwise)."""

    target: float
    predicted: float
    measured: float
    met: bool
    confirmation: float | None = None

    @property
    def worst(self) -> float:
        """The larger of the round's measurements."""
        return max(self.measured, self.confirmation if self.confirmation is not None else self.measured)

    @property
    def mean(self) -> float:
        """The mean of the round's measurements (the offset's correction uses it)."""
        return self.measured if self.confirmation is None else (self.measured + self.confirmation) / 2


@dataclass
class BudgetResult:
    """What :func:`meet_budget` hands back: the selection (the student that met the budget as measured, else the
    attempt measured lowest, with ``met`` False), the budget, the final offset and every round."""

    selection: Selection
    met: bool
    budget: float
    offset: float
    rounds: list[Round]
    notes: list[str] = field(default_factory=list)

    @property
    def history(self) -> list[tuple[float, float]]:
        """(predicted, measured) per round."""
        return [(r.predicted, r.measured) for r in self.rounds]


def meet_budget(library: Library, budget: str | float, measure: Callable[[Selection], float], *, rounds: int = 3,
                tolerance: float = 0.02, metric: str = "latency", max_params: str | float | None = None,
                max_macs: str | float | None = None, confirm: bool = True) -> BudgetResult:
    """Select under ``budget``, have ``measure(selection)`` measure the assembled student (the caller builds and
    times it, in the metric's unit), and where it is over the budget by more than ``tolerance`` (a fraction of
    the budget: 0.02 allows 2 % over), correct the prediction by the offset measured − predicted and select
    again; at most ``rounds`` rounds in all (see the module docstring). With ``confirm`` a student measured
    within the budget is measured a second time and accepted only if that is within it too.

    Stops early when a corrected budget falls below the fastest student the library can build (said in
    ``notes``). ``rounds`` and the caps are as in :func:`~cheapconv.compression.select`.
    """
    if rounds < 1:
        raise UsageError(f"rounds must be at least 1 (one solve and one measurement), not {rounds}.")
    if tolerance < 0:
        raise UsageError(f"tolerance is a fraction of the budget (0.02: 2 % over it), and not negative: {tolerance}.")
    limit = parse_budget(budget, library, metric)
    allowed = limit * (1 + tolerance)
    offset = 0.0
    history: list[Round] = []
    attempts: list[Selection] = []
    notes: list[str] = []
    for _ in range(rounds):
        target = limit - offset
        stop = (f"stopped: the corrected budget {format_value(target, metric)} (the budget less the measured "
                f"offset {format_value(offset, metric)}) is below the fastest student")
        if target <= 0:
            notes.append(stop)
            break
        try:
            selection = select(library, target, metric=metric, max_params=max_params, max_macs=max_macs)
        except BudgetUnreachableError as exc:
            if not attempts:
                raise
            notes.append(f"{stop}, {format_value(exc.reachable[0], metric)}")
            break
        if offset:
            selection.notes.append(f"solved against {format_value(target, metric)}: the budget less the offset "
                                   f"{format_value(offset, metric)} measured in the rounds before")
        predicted = selection.predicted(metric)
        measured = float(measure(selection))
        confirmation = float(measure(selection)) if confirm and measured <= allowed else None
        met = measured <= allowed and (confirmation is None or confirmation <= allowed)
        this = Round(target, predicted, measured, met, confirmation)
        history.append(this)
        attempts.append(selection)
        if met:
            return BudgetResult(selection, True, limit, offset, history, notes)
        if confirmation is not None:
            notes.append(f"round {len(history)}: measured {format_value(measured, metric)}, within the budget, then "
                         f"{format_value(confirmation, metric)} when measured again, over it; counted as a miss")
        offset += this.mean - (predicted + offset)
    best = min(range(len(attempts)), key=lambda i: history[i].worst)
    notes.append(f"no student met {format_value(limit, metric)} as measured in {len(history)} round(s); the one "
                 f"measured lowest ({format_value(history[best].worst, metric)}) is returned")
    return BudgetResult(attempts[best], False, limit, offset, history, notes)
