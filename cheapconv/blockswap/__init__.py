"""BlockSwap: choose one block type per residual pair or replaceable conv under a budget (see :mod:`.searcher`)."""

from __future__ import annotations

from .budget import METRICS, Budget, format_cost, parse_budget
from .fisher import fisher_potential, seeded_init_
from .result import ScoredConfiguration, SearchResult
from .scoring import Minibatch, Scorer, fixed_minibatch
from .searcher import sample_configurations, search
from .space import DEFAULT_CANDIDATES, Candidate, SearchBlock, SearchSpace, parse_candidates
from .timing import measure_latencies

__all__ = [
    "DEFAULT_CANDIDATES", "METRICS", "Budget", "Candidate", "Minibatch", "ScoredConfiguration", "Scorer",
    "SearchBlock", "SearchResult", "SearchSpace", "fisher_potential", "fixed_minibatch", "format_cost",
    "measure_latencies", "parse_budget", "parse_candidates", "sample_configurations", "search", "seeded_init_",
]
