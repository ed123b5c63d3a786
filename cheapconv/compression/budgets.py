"""Budgets for the selection (issue 27): what a budget's text means, and each metric's figures in a library.

A budget is read against one *metric*:

- ``latency``: milliseconds in the library's runtime settings; the student's predicted time is the teacher's
  (``Library.teacher_latency_ms``) less the chosen options' ``latency_saved_ms``;
- ``params``: parameters in the paper convention (BatchNorm running statistics included, as the paper's tables
  count them): the teacher's ``teacher_paper`` plus the options' ``paper`` changes;
- ``macs``: multiply-accumulates for one input: ``teacher_macs`` plus the options' ``macs`` changes.

Its text is a share of the teacher's figure in that metric (``50%``), a time for ``latency`` (``2ms``,
``2.5 ms``; also ``800us`` and ``0.002s``), or a count for ``params`` and ``macs`` (``300k``, ``1.2M``,
``0.5G``, ``300000``, ``3e5``). :func:`parse_budget` turns it into the metric's unit.
"""

from __future__ import annotations

import re

from ..errors import UsageError
from ..formatting import human
from .library_model import GroupWidth, Library, SiteOption, WidthPrice

__all__ = ["METRICS", "check_metric", "format_value", "option_change", "parse_budget", "teacher_value"]

#: what a budget can bound, and its unit
METRICS = {"latency": "ms", "params": "parameters (paper convention)", "macs": "MACs"}

_FORMS = ("a share of the teacher ('50%'), a time for the latency metric ('2ms', '2.5 ms'), or a count for the "
          "params or macs metric ('300k', '1.2M', '300000')")
_TEXT = re.compile(r"^\s*(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>%|ms|us|µs|s|k|K|M|G)?\s*$")
_TIME = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_COUNT = {None: 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else a :class:`UsageError` listing them."""
    if metric not in METRICS:
        raise UsageError(f"Unknown budget metric {metric!r}. Valid: {', '.join(METRICS)}.")
    return metric


def teacher_value(library: Library, metric: str) -> float | None:
    """The teacher's figure in ``metric`` (None: a latency the library did not measure)."""
    check_metric(metric)
    if metric == "latency":
        return library.teacher_latency_ms
    return float(library.teacher_paper if metric == "params" else library.teacher_macs)


def option_change(option: SiteOption | WidthPrice | GroupWidth, metric: str) -> float | None:
    """What choosing ``option`` (a site option, its price at a width combination, or a group width) adds to the
    student's figure in ``metric`` (negative: cheaper); None for a latency that was not measured."""
    if metric == "latency":
        return None if option.latency_saved_ms is None else -option.latency_saved_ms
    return float(option.paper if metric == "params" else option.macs)


def format_value(value: float | None, metric: str) -> str:
    """``2.345 ms``, ``1.2M params``, ``34.5M MACs``; ``?`` for an unknown value."""
    if value is None:
        return "?"
    if metric == "latency":
        return f"{value:.3f} ms"
    return f"{human(round(value))} {'params' if metric == 'params' else 'MACs'}"


def parse_budget(text: str | float, library: Library, metric: str = "latency") -> float:
    """The budget ``text`` in ``metric``'s unit (milliseconds, parameters in the paper convention, or MACs).

    A number passes through as that value. A share (``50%``) is of the teacher's figure in the library.

    >>> lib = Library(key={}, teacher_latency_ms=2.9, teacher_paper=700_000)
    >>> parse_budget("50%", lib), parse_budget("2.5 ms", lib), parse_budget("300k", lib, "params")
    (1.45, 2.5, 300000.0)
    """
    check_metric(metric)
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _TEXT.match(str(text).replace(",", "").replace("_", ""))
        if match is None:
            raise UsageError(f"Cannot read the budget {text!r}: give {_FORMS}.")
        number, unit = float(match["number"]), match["unit"]
        if unit == "%":
            teacher = teacher_value(library, metric)
            if not teacher:
                raise UsageError(f"The budget {text!r} is a share of the teacher's {metric}, which this library did "
                                 "not record. Give the budget as a value instead (e.g. '2ms' or '300k').")
            value = number / 100 * teacher
        elif unit in _TIME:
            if metric != "latency":
                raise UsageError(f"The budget {text!r} is a time, but the metric is {metric}. Use the latency "
                                 f"metric for a time, or give {_FORMS}.")
            value = number * _TIME[unit]
        else:
            if metric == "latency":
                raise UsageError(f"The budget {text!r} is a count, but the metric is latency. Give a time such "
                                 "as '2ms' or a share such as '50%', or use the params or macs metric for a count.")
            value = number * _COUNT[unit]
    if not value > 0:
        raise UsageError(f"The budget {text!r} must be positive: give {_FORMS}.")
    return value
