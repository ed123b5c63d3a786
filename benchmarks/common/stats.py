"""Small statistics for the studies: ranks, Spearman's ρ with a bootstrap interval, mean ± sd, Pareto fronts.

Written here rather than taken from scipy, which is not installed on these machines (checked: ``import scipy``
fails in the project's venv). Ties get average ranks, as ``scipy.stats.spearmanr`` does.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation; NaN when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two equal-length samples of 2+ values, got {len(x)} and {len(y)}")
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's correlation of the average ranks)."""
    return pearson(ranks(x), ranks(y))


def bootstrap_spearman(x: Sequence[float], y: Sequence[float], *, n: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's ρ (pairs resampled with replacement; resamples whose ρ is
    undefined, e.g. all one value, are dropped)."""
    rng = random.Random(seed)
    m = len(x)
    values = []
    for _ in range(n):
        idx = [rng.randrange(m) for _ in range(m)]
        r = spearman([x[i] for i in idx], [y[i] for i in idx])
        if not math.isnan(r):
            values.append(r)
    return percentile_interval(values, level)


def bootstrap_spearman_difference(x1: Sequence[float], x2: Sequence[float], y: Sequence[float], *,
                                  n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval of ρ(x1, y) − ρ(x2, y): both rankers see the same resampled students."""
    rng = random.Random(seed)
    m = len(y)
    values = []
    for _ in range(n):
        idx = [rng.randrange(m) for _ in range(m)]
        yy = [y[i] for i in idx]
        d = spearman([x1[i] for i in idx], yy) - spearman([x2[i] for i in idx], yy)
        if not math.isnan(d):
            values.append(d)
    return percentile_interval(values, level)


def steps_to_reach(start: float, points: Sequence[tuple[int, float]], target: float) -> int | None:
    """The first measured step (0: ``start``, the accuracy before training; then ``points``, (step, accuracy)
    pairs in step order) whose accuracy is at or above ``target``; None if none is."""
    return next((step for step, top1 in [(0, start), *points] if top1 >= target - 1e-9), None)


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of ``values`` (NaN, NaN when empty)."""
    if not values:
        return math.nan, math.nan
    s = sorted(values)
    lo = s[int(math.floor((1 - level) / 2 * (len(s) - 1)))]
    hi = s[int(math.ceil((1 + level) / 2 * (len(s) - 1)))]
    return lo, hi


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation or None for a single value)."""
    if not values:
        raise ValueError("no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """For each point, whether it is on the Pareto front when both coordinates are to be minimised: no other
    point is at least as good on both axes and better on one (the rule of ``cheapconv sweep``'s plots).

    >>> pareto_front([1, 2, 3, 2], [3, 1, 2, 3])
    [True, True, False, False]
    """
    on = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dominated = any(xj <= x and yj <= y and (xj < x or yj < y)
                        for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)) if j != i)
        on.append(not dominated)
    return on
