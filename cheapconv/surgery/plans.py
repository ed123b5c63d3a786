"""The plan as data: one :class:`PlanEntry` per layer, the :class:`Plan` (totals, JSON round trip) and its tables.

:mod:`cheapconv.surgery.planner` builds plans; everything that reads one (the rewrite, saved files, the
profiler, the command line) needs only this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from rich.table import Table

from ..formatting import human, ratio, render_plain

__all__ = ["Action", "Plan", "PlanEntry", "plan_table", "summary_table"]

Action = Literal["replace", "keep", "skip", "cannot"]


@dataclass
class PlanEntry:
    """One row of a plan: a conv, or a residual-branch conv pair (``layer1.0.conv1+conv2``)."""

    layer: str
    convs: tuple[str, ...]
    action: Action
    block: str | None = None
    rule: str | None = None
    reason: str = ""
    shape: str = ""
    params_before: int = 0          # trainable convention
    params_after: int = 0
    paper_before: int = 0           # paper convention (BN running stats included)
    paper_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    #: modules between a pair's convs that the block rebuilds from the teacher's (``W(f)``), else empty
    between: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return self.action == "replace"


@dataclass
class Plan:
    """A printable, serialisable list of :class:`PlanEntry` plus model totals before and after."""

    model: str
    policy: str
    input_shape: tuple[int, ...]
    mode: Literal["graph", "module"]
    entries: list[PlanEntry]
    totals: dict[str, int]
    stages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def replaced(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.changes]

    @property
    def impossible(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.action == "cannot"]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        d = dict(d)
        d["entries"] = [PlanEntry(**{**e, "convs": tuple(e["convs"]), "between": tuple(e.get("between", ()))})
                        for e in d["entries"]]
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)

    def table(self, *, show_all: bool = True) -> Table:
        """A rich Table of the entries (kept rows dimmed): :func:`plan_table`."""
        return plan_table(self, show_all=show_all)

    def __str__(self) -> str:
        return render_plain(self.table())


_STYLE = {"replace": "green", "keep": "dim", "skip": "dim", "cannot": "yellow"}


def plan_table(plan: Plan, *, show_all: bool = True) -> Table:
    t = Table(title=f"Plan: {plan.model} with '{plan.policy}' ({plan.mode} mode)", title_justify="left")
    for col, just in (("layer", "left"), ("shape", "left"), ("action", "left"), ("block", "left"),
                      ("params", "right"), ("MACs", "right"), ("reason", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for e in plan.entries:
        if not show_all and e.action in ("keep", "skip") and e.rule is None:
            continue
        params = human(e.params_before) if not e.changes else f"{human(e.params_before)}→{human(e.params_after)}"
        macs = human(e.macs_before) if not e.changes else f"{human(e.macs_before)}→{human(e.macs_after)}"
        t.add_row(e.layer, e.shape, e.action, e.block or "", params, macs, e.reason, style=_STYLE[e.action])
    return t


def summary_table(plan: Plan) -> Table:
    """Before/after totals: params in both conventions and MACs, with reduction ratios."""
    tot = plan.totals
    c, h, w = plan.input_shape
    t = Table(title=f"{plan.model}: {len(plan.replaced)} of {len(plan.entries)} layers replaced "
                    f"(input {c}×{h}×{w})", title_justify="left")
    for col in ("", "before", "after", "reduction"):
        t.add_column(col, justify="right" if col else "left")
    for label, key in (("params (trainable)", "params"), ("params (paper)", "paper"), ("MACs", "macs")):
        before, after = tot[f"{key}_before"], tot[f"{key}_after"]
        t.add_row(label, f"{before:,}", f"{after:,}", ratio(before, after))
    return t
