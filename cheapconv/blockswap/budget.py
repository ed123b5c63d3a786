"""Budgets: ``300k``, ``1.2M``, ``40M`` (parameters or MACs), ``5ms`` (latency), ``25%`` (of the teacher)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError

Metric = Literal["params", "macs", "latency"]
METRICS: tuple[str, ...] = ("params", "macs", "latency")

_COUNT_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_TIME_SUFFIX = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_BUDGET = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-zµ%]*)\s*")
_UNITS = {"params": "parameters", "macs": "MACs", "latency": "ms"}


@dataclass(frozen=True)
class Budget:
    """A parsed budget. ``value`` is absolute (parameters, MACs, or milliseconds) unless ``relative``, in
    which case it is a fraction of the teacher's cost (``25%`` -> 0.25)."""

    value: float
    metric: Metric
    relative: bool = False
    text: str = ""

    def target(self, teacher_cost: float) -> float:
        """The absolute budget for a teacher that costs ``teacher_cost`` in this metric."""
        return self.value * teacher_cost if self.relative else self.value

    def __str__(self) -> str:
        return self.text or (f"{100 * self.value:g}%" if self.relative else format_cost(self.value, self.metric))


def format_cost(value: float, metric: str) -> str:
    """``301234`` -> ``'301,234 parameters'``; latency in milliseconds with three decimals."""
    if metric == "latency":
        return f"{value:.3f} ms"
    return f"{round(value):,} {_UNITS[metric]}"


def parse_budget(budget: str | float | Budget, metric: str | None = None) -> Budget:
    """Parse a budget; ``metric`` None means: latency for a time (``5ms``), else parameters.

    >>> parse_budget("300k")
    Budget(value=300000.0, metric='params', relative=False, text='300k')
    >>> parse_budget("25%", "macs").target(327_600_000)
    81900000.0
    """
    if metric is not None and metric not in METRICS:
        raise UsageError(f"Unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    if isinstance(budget, Budget):
        if metric is not None and metric != budget.metric:
            raise UsageError(f"The budget {budget} is a {budget.metric} budget, not {metric}.")
        return budget
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if budget <= 0:
            raise UsageError(f"A budget must be positive, got {budget}.")
        return Budget(float(budget), metric or "params", False, str(budget))
    if not isinstance(budget, str):
        raise UsageError(f"A budget is a number or a string such as '300k', '40M', '5ms' or '25%', "
                         f"not {type(budget).__name__}.")
    m = _BUDGET.fullmatch(budget)
    if not m:
        raise UsageError(f"Cannot read the budget {budget!r}. Write a count with an optional k/M/G suffix "
                         "('300k', '1.2M'), a time ('5ms'), or a fraction of the teacher ('25%').")
    number, suffix = float(m.group(1)), m.group(2)
    if number <= 0:
        raise UsageError(f"A budget must be positive, got {budget!r}.")
    if suffix == "%":
        return Budget(number / 100.0, metric or "params", True, budget.strip())
    if suffix in _TIME_SUFFIX:
        if metric not in (None, "latency"):
            raise UsageError(f"The budget {budget!r} is a time, but the metric is {metric}. Use --metric "
                             "latency (or leave the metric out), or give a count such as '300k'.")
        return Budget(number * _TIME_SUFFIX[suffix], "latency", False, budget.strip())
    if suffix in _COUNT_SUFFIX:
        if metric == "latency":
            raise UsageError(f"A latency budget needs a time unit, e.g. '5ms'; got {budget!r}.")
        return Budget(number * _COUNT_SUFFIX[suffix], metric or "params", False, budget.strip())
    hint = " (M is million; for milliseconds write ms)" if suffix == "m" else ""
    raise UsageError(f"Unknown unit {suffix!r} in the budget {budget!r}{hint}. Counts take k, M or G; times "
                     "ms, us or s; a fraction of the teacher is written with %.")
