"""What a search returns: ranked configurations, each with its exact cost, score, spread and policy."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from ..formatting import human
from ..surgery.policy import Policy, parse_policy
from .budget import Budget, format_cost


@dataclass
class ScoredConfiguration:
    """One searched configuration. ``choice[i]`` is the type of block ``i`` (``SearchResult.blocks[i]``)."""

    rank: int
    choice: tuple[str, ...]
    rules: tuple[str, ...]        # policy lines, one per block
    cost: float                   # in the budget's metric (parameters in the budget's convention, MACs, ms)
    params: int                   # trainable convention
    paper: int                    # paper convention
    macs: int
    latency_ms: float | None      # additive estimate from per-block measurements (latency budgets only)
    score: float                  # Fisher potential on the fixed batch with the search seed
    block_scores: tuple[float, ...]
    spread_scores: tuple[float, ...] = ()   # the score under other seeds and minibatches (top configurations)

    @property
    def policy(self) -> Policy:
        """The policy that :func:`cheapconv.cheapen` turns into exactly this student."""
        return parse_policy("\n".join(self.rules))

    @property
    def spread(self) -> tuple[float, float] | None:
        """(mean, standard deviation) of :attr:`spread_scores`, or None when not re-scored."""
        if len(self.spread_scores) < 2:
            return None
        return statistics.fmean(self.spread_scores), statistics.stdev(self.spread_scores)

    def summary(self) -> str:
        """``G(4)×10, B(2)×6, S×2``: how many blocks took each type."""
        return ", ".join(f"{k}×{v}" for k, v in Counter(self.choice).most_common())


@dataclass
class SearchResult:
    """The outcome of :func:`cheapconv.search`: ``results`` best first, and how they were found."""

    model: str
    budget: Budget
    metric: str
    convention: str               # parameter convention of params budgets ("paper" or "trainable")
    target: float                 # the absolute budget
    tolerance: float
    reachable: tuple[float, float]
    teacher_cost: float
    blocks: list[str]
    results: list[ScoredConfiguration]
    draws: int                    # configurations sampled
    in_budget: int                # of which within the tolerance (duplicates included)
    samples: int                  # asked for
    minibatch: str                # where the scoring batch came from
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)   # the winner built by cheapen and counted
    latency_conditions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    precision: str = "bf16"       # of the Fisher pass (autocast), "bf16" or "fp32"

    @property
    def winner(self) -> ScoredConfiguration:
        return self.results[0]

    @property
    def window(self) -> tuple[float, float]:
        return self.target * (1 - self.tolerance), self.target * (1 + self.tolerance)

    def describe_budget(self) -> str:
        what = f"{self.metric} ({self.convention})" if self.metric == "params" else self.metric
        if self.metric == "latency":
            what += f" in {self.latency_conditions.get('runtime', 'torch')}"
        return (f"{what} budget {self.budget} = {format_cost(self.target, self.metric)} "
                f"± {self.tolerance:.1%}")

    def policy_text(self, rank: int = 1) -> str:
        """A policy file for the configuration of ``rank`` (1 = the winner), with a header of comments."""
        c = self.results[rank - 1]
        spread = c.spread
        lines = [
            f"# cheapconv search: {self.model}, {self.describe_budget()}",
            f"# rank {rank} of {len(self.results)} scored configurations (seed {self.seed}; Fisher in "
            f"{self.precision}; minibatch: {self.minibatch})",
            f"# cost {format_cost(c.cost, self.metric)}; parameters {c.paper:,} (paper), {c.params:,} "
            f"(trainable); {c.macs:,} MACs" + (f"; latency ≈ {c.latency_ms:.3f} ms (additive estimate, "
                                                  f"{self.latency_conditions.get('runtime', 'torch')})"
                                                if c.latency_ms is not None else ""),
            f"# Fisher potential {c.score:.6g}" + (f" (re-scored: {spread[0]:.6g} ± {spread[1]:.3g} over "
                                                  f"{len(c.spread_scores)} seeds)" if spread else ""),
            "# one line per searched block (a residual pair or one conv); layers not named here stay as they are",
            *c.rules,
        ]
        return "\n".join(lines) + "\n"

    def write_policies(self, path: str | Path, top: int = 1) -> list[Path]:
        """Write the winner to ``path`` and, with ``top`` > 1, rank k to ``<stem>.<k><suffix>``."""
        path = Path(path)
        written = []
        for rank in range(1, min(top, len(self.results)) + 1):
            target = path if rank == 1 else path.with_name(f"{path.stem}.{rank}{path.suffix}")
            target.write_text(self.policy_text(rank))
            written.append(target)
        return written

    def table(self, top: int = 10) -> Table:
        """A rich table of the ``top`` configurations."""
        t = Table(title=f"Block search: {self.model}, {self.describe_budget()}", title_justify="left")
        for col, just in (("rank", "right"), ("cost", "right"), ("params", "right"), ("MACs", "right"),
                          ("score", "right"), ("spread (mean ± std)", "right"), ("blocks", "left")):
            t.add_column(col, justify=just, overflow="fold")
        for c in self.results[:top]:
            spread = c.spread
            t.add_row(str(c.rank), format_cost(c.cost, self.metric).replace(" parameters", "")
                      .replace(" MACs", ""), human(c.paper), human(c.macs), f"{c.score:.4g}",
                      f"{spread[0]:.4g} ± {spread[1]:.2g}" if spread else "–", c.summary())
        return t
