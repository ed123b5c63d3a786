"""Pareto plots for sweeps and the front of a compress library (matplotlib, imported only here and only when a plot
is drawn).

Like the paper's figure 3 (error against parameters, one point per block type), with a second panel against
measured latency, log x-axes, and the Pareto front (points no other point beats on both axes) drawn as a line
through its points. Sweeps without accuracies plot latency against parameters and against MACs instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .store.files import atomic_write


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """For each point, whether it is on the Pareto front when both coordinates are to be minimised: no other
    point is at least as good on both axes and better on one.

    >>> pareto_front([1, 2, 3, 2], [3, 1, 2, 3])
    [True, True, False, False]
    """
    on = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dominated = any(xj <= x and yj <= y and (xj < x or yj < y)
                        for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)) if j != i)
        on.append(not dominated)
    return on


def pareto_plot(path: str | Path, labels: Sequence[str], panels: Sequence[tuple[str, Sequence[float], str,
                Sequence[float]]], *, title: str = "") -> None:
    """Write a PNG with one panel per ``(x label, xs, y label, ys)``: points labelled, log x-axis, the Pareto
    front marked. Written atomically."""
    import matplotlib  # optional (plots extra), slow to import: only when a plot is drawn

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (xlabel, xs, ylabel, ys) in zip(axes[0], panels, strict=True):
        front = pareto_front(xs, ys)
        ax.scatter(xs, ys, c=["tab:red" if f else "tab:blue" for f in front], zorder=3)
        for label, x, y in zip(labels, xs, ys, strict=True):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        pts = sorted((x, y) for x, y, f in zip(xs, ys, front, strict=True) if f)
        if len(pts) > 1:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="tab:red", alpha=0.6,
                    label="Pareto front")
            ax.legend(loc="best", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def front_plot(path: str | Path, points: Sequence[tuple[float, float]], *,
               marks: Sequence[tuple[str, float, float]] = (), xlabel: str, ylabel: str, title: str = "",
               caption: str = "") -> None:
    """Write a PNG of one front: ``points`` (x, y) joined in x order, ``marks`` (label, x, y) drawn over them as
    labelled stars (e.g. the student that was measured), and ``caption`` under the axes. Written atomically."""
    import matplotlib  # optional (plots extra), slow to import: only when a plot is drawn

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted(points)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:blue", label="solved from the library")
    for label, x, y in marks:
        ax.scatter([x], [y], marker="*", s=160, color="tab:red", zorder=4)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=8, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if caption else 0, 1, 1))
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
