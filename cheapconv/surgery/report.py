"""Rendering: plan tables and before/after summaries as rich tables (and as plain text)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from .planner import Plan


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G), for tables."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.3g}{suffix}{unit}"
    return f"{n:g}{unit}"


def ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}×" if after else "–"


_STYLE = {"replace": "green", "keep": "dim", "skip": "dim", "cannot": "yellow"}


def plan_table(plan: Plan, *, show_all: bool = True) -> Table:
    from rich.table import Table

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
    from rich.table import Table

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


def render_plain(renderable, width: int = 160) -> str:
    """Render a rich renderable to plain text (no colour), e.g. for ``str(plan)`` and logs."""
    from rich.console import Console

    console = Console(width=width, record=True, file=_NullFile(), color_system=None)
    console.print(renderable)
    return console.export_text()


class _NullFile:
    def write(self, s):
        return len(s)

    def flush(self):
        pass
