"""The front of one library: the selection at each of many budgets, solved from the same fitted and timed options
(issue 27, item 3: "the front of other budgets solved from the same library (CSV + PNG)").

Every point is what the library *predicts* (summed per-site KL against the predicted figure in the budget's
metric). For a latency budget the prediction is additive; ``compress`` measures the one student it hands back and
knows by how much the additive model was off for it (``offset``), which the front reports beside its points
(a CSV column and the plot's caption) rather than silently applying it to students nobody measured.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plots import front_plot
from .budgets import format_value
from .library_model import Library
from .selection import BudgetUnreachableError, Selection, select

__all__ = ["DEFAULT_SHARES", "Front", "front"]

#: the budgets ``compress`` solves for its front: 10 % to 100 % of the teacher's figure in steps of 5 %
DEFAULT_SHARES = tuple(f"{p}%" for p in range(10, 101, 5))


@dataclass
class Front:
    """Selections at several budgets from one library (budget order), and the budgets no student reaches.

    ``offset``: what the measured-budget loop found the additive latency model off by for the student it measured
    (measured − predicted, ms; 0 when nothing was measured), reported beside the predictions, not applied."""

    metric: str
    selections: list[Selection]
    skipped: list[str] = field(default_factory=list)
    offset: float = 0.0

    def __iter__(self) -> Iterator[Selection]:
        return iter(self.selections)

    def __len__(self) -> int:
        return len(self.selections)

    def rows(self) -> list[dict[str, Any]]:
        """One row per selection: the budget, the predicted figures and loss, the solver's verdict, the policy."""
        return [{"metric": s.metric, "budget": s.budget,
                 "budget_share": s.budget / t if (t := s.teacher()) else None,
                 "predicted_latency_ms": s.predicted_latency_ms,
                 "measured_offset_ms": self.offset if s.metric == "latency" else None,
                 "predicted_params": s.predicted_paper, "predicted_macs": s.predicted_macs,
                 "predicted_loss": s.predicted_loss, "sites_changed": len(s.chosen), "status": s.status,
                 "mip_gap": s.mip_gap, "policy": s.policy().replace("\n", "; ")} for s in self.selections]

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows as CSV text, also written to ``path`` when given."""
        out = io.StringIO()
        rows = self.rows()
        fields = list(rows[0]) if rows else ["metric", "budget"]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        if path is not None:
            Path(path).write_text(out.getvalue())
        return out.getvalue()

    def plot(self, path: str | Path, *, marks: Sequence[tuple[str, float, float]] = (), title: str = "") -> None:
        """A PNG of the predicted loss against the predicted figure (as a share of the teacher's), one point per
        budget, with ``marks`` (label, share, loss) drawn over it, e.g. the student measured. Needs matplotlib
        (``cheapconv[plots]``)."""
        points = [(s.predicted() / s.teacher(), s.predicted_loss) for s in self.selections if s.teacher()]
        caption = (f"additive latency model off by {format_value(self.offset, 'latency')} for the student measured"
                   if self.metric == "latency" and self.offset else "")
        front_plot(path, points, marks=marks, xlabel=f"predicted {self.metric} ÷ teacher",
                   ylabel="predicted loss (summed per-site KL to the teacher)", title=title, caption=caption)


def front(library: Library, budgets: Sequence[str | float] = DEFAULT_SHARES, *, metric: str = "latency",
          max_params: str | float | None = None, max_macs: str | float | None = None, offset: float = 0.0) -> Front:
    """:func:`select` at each of ``budgets`` (e.g. ``["30%", "50%", "70%"]``; default 10 % to 100 % in steps of
    5 %) from the same library: the predicted loss against the budget. A budget no student reaches is skipped,
    with its reason in ``skipped``. ``offset``: see :class:`Front`."""
    selections, skipped = [], []
    for budget in budgets:
        try:
            selections.append(select(library, budget, metric=metric, max_params=max_params, max_macs=max_macs))
        except BudgetUnreachableError as exc:
            skipped.append(f"{budget}: {exc}")
    return Front(metric, selections, skipped, offset)
