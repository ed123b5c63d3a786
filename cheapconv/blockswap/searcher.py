"""BlockSwap: choose one block type per residual pair or replaceable conv under a budget
(``blockswap-and-structured.md`` §1).

The entry point is :func:`search`, exported as ``cheapconv.search`` and ``cheapconv.blockswap.search`` (this
module is named ``searcher`` so that the function never shadows a module of the same name).

>>> import cheapconv
>>> result = cheapconv.search("wrn_10_1", "50%", samples=4, batch_size=8,
...                           candidates="S, G(2), G(4), B(2)")   # doctest: +SKIP
>>> print(result.policy_text())                                    # doctest: +SKIP

1. **Blocks and candidates** (:mod:`.space`): every residual-branch conv pair of the teacher, and every other
   conv (not the stem) that a candidate besides ``S`` can replace; the default candidates are the paper's 23
   types, a block keeps those it can take. Where no conv can take any (a depthwise network under the
   default candidates) the search says so and names the blocks that would apply.
2. **Cost tables**: each (block, candidate) is built once and priced; a configuration costs teacher +
   Σ deltas, exactly what counting the cheapened model gives (parameters in either convention, MACs).
   Latency budgets use per-block latencies measured once on the device (:mod:`.timing`): an additive
   estimate, reported next to the measured latency of the winner.
3. **Sampling**: uniformly one candidate per block, seeded; configurations within ±``tolerance`` of the
   budget are kept until ``samples`` *distinct* students are found (two spellings that resolve to the same
   structure, such as ``G(2)`` and ``G(N/16)`` on 32 channels, are one student and are scored once).
4. **Scoring** (:mod:`.scoring`): each kept configuration is built by :func:`cheapconv.cheapen` from its
   policy and scored by its Fisher potential (:mod:`cheapconv.blockswap.fisher`) on one fixed minibatch with one seeded
   initialisation, the same for all candidates. The top configurations are re-scored with other seeds and
   minibatches, so the spread of the scores is known.

The reference code's defects are not repeated: the policy of a configuration names every block, and the plan
of every scored student is checked against the configuration (no block silently takes its stage's first
type); policies are ordinary text files that ``cheapen --policy-file`` reads back; costs come from the teacher
at hand, not a constant; one seed fixes the sampling, the initialisation and the minibatch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..blocks import BlockSpec, rounded
from ..counting import count_macs, count_params
from ..errors import UsageError
from ..measure.runtimes import check_runtime, measure_in_runtime
from ..models import create_model
from ..surgery.rewrite import cheapen
from .budget import Budget, format_cost, parse_budget
from .result import ScoredConfiguration, SearchResult
from .scoring import Scorer, fixed_minibatch
from .space import SearchSpace, parse_candidates
from .timing import measure_latencies

__all__ = ["sample_configurations", "search"]

Progress = Callable[[str, int, int], None]


def sample_configurations(space: SearchSpace, key: str, window: tuple[float, float], samples: int, *,
                          seed: int = 0, max_draws: int = 2_000_000, chunk: int = 65_536
                          ) -> tuple[list[tuple[int, ...]], int, int]:
    """Draw configurations uniformly (one candidate per block) until ``samples`` distinct students cost
    within ``window``; returns (kept configurations in draw order, draws, draws within the window)."""
    gen = torch.Generator().manual_seed(seed)
    base, table = space.table(key)
    counts = space.counts
    rows = torch.arange(len(space.blocks))
    lo, hi = window
    kept: dict[tuple[str, ...], tuple[int, ...]] = {}
    draws = hits = 0
    stale = 0
    while len(kept) < samples and draws < max_draws and stale < 32:
        n = min(chunk, max_draws - draws)
        idx = (torch.rand(n, len(counts), generator=gen, dtype=torch.float64) * counts).long()
        idx = torch.minimum(idx, counts - 1)
        cost = base + table[rows, idx].sum(1)
        ok = ((cost >= lo) & (cost <= hi)).nonzero().flatten()
        before = len(kept)
        for i in ok.tolist():
            hits += 1
            config = tuple(idx[i].tolist())
            kept.setdefault(space.key(config), config)
            if len(kept) >= samples:
                draws += i + 1
                break
        else:
            draws += n
        # the window holds few distinct students and all are found: stop instead of drawing to max_draws
        stale = stale + 1 if len(kept) == before and kept else 0
    return list(kept.values()), draws, hits


def search(teacher: nn.Module | str, budget: str | float | Budget, *, metric: str | None = None,
           candidates: str | Sequence[str | BlockSpec] | None = None, samples: int = 1000,
           tolerance: float = 0.025, data=None, seed: int = 0, batch_size: int = 128,
           convention: str = "paper", top: int = 5, spread_runs: int = 3,
           input_size: tuple[int, ...] | None = None, leaf_modules: Sequence = (),
           latency_batch: int = 1, latency_device: str | torch.device | None = None,
           max_draws: int = 2_000_000, progress: Progress | None = None, runtime: str = "torch",
           precision: str = "bf16", fold: bool = True, round_to: int | None = None) -> SearchResult:
    """BlockSwap search: the best mixed-block student of ``teacher`` within ``budget``, by Fisher potential.

    - ``teacher``: a module or a model name (``wrn_40_2``, ``resnet18``, ``timm:resnet26``); its weights do
      not matter (candidates are scored from a seeded random initialisation).
    - ``budget``: ``"300k"``, ``"1.2M"``, ``"40M"`` (with ``metric="macs"``), ``"5ms"``, or ``"25%"`` of the
      teacher; ``metric`` is ``"params"``, ``"macs"`` or ``"latency"`` (None: latency for a time, else
      params). Parameters are counted in ``convention`` (``"paper"``, as the paper's tables, or
      ``"trainable"``).
    - ``candidates``: block specs (``"S, G(4), B(2)"`` or a list); default :data:`DEFAULT_CANDIDATES`, which
      replace dense k×k convs: for a depthwise network (MobileNet, EfficientNet) choose blocks that replace
      its 1×1 convs, e.g. ``"S, LRp(0.5), LRp(0.25), ACDC(2)"`` (the error says which apply).
    - ``samples``: distinct configurations within ``±tolerance`` of the budget to score (the paper: 1000).
    - ``data``: the scoring minibatch's source (see :func:`fixed_minibatch`); None uses seeded synthetic
      images with random labels (noted in the result). ``batch_size`` is its size (the paper: 128).
    - ``seed``: fixes sampling, initialisation and minibatch; the same seed gives the same result.
    - ``top`` configurations are re-scored ``spread_runs`` times in all (seeds ``seed .. seed+spread_runs-1``,
      each with its own initialisation and, where the data allow, its own minibatch) for the spread.
    - ``progress(phase, done, total)`` is called as the phases ("latency", "scoring", "spread") advance.
    - ``runtime``: where a latency budget is priced and the winner timed: ``"torch"`` (eager, the default) or
      another name of :data:`~cheapconv.extensions.RUNTIMES` (:mod:`cheapconv.measure.runtimes`); each block
      and candidate is exported as a small graph of its own, the winner as a whole; ``fold=False`` exports them
      without folding BatchNorm into the convs (in the runtimes that time an exported file).
    - ``precision``: of the Fisher pass, ``"bf16"`` (autocast, the default: it keeps the fp32 ranking at
      ~1.4x the speed) or ``"fp32"``; a device without native bf16 scores in fp32 (noted).
    - ``round_to``: every candidate's inner widths rounded to multiples of it (``B(2)@8``; see
      :func:`cheapconv.cheapen`).

    Raises :class:`~cheapconv.errors.UsageError` when the budget is outside the reachable range (the message
    gives the range). The winner's policy, applied by :func:`cheapconv.cheapen`, builds a student whose
    counted cost is exactly the searched cost (checked: ``result.measured``).

    >>> result = search("wrn_16_1", "60%", samples=3, batch_size=8, spread_runs=1)  # doctest: +SKIP
    >>> teacher = cheapconv.create_model("wrn_16_1")                                 # doctest: +SKIP
    >>> student = cheapconv.cheapen(teacher, result.winner.policy)                    # doctest: +SKIP
    """
    _check_arguments(tolerance=tolerance, samples=samples, batch_size=batch_size, top=top,
                     spread_runs=spread_runs, convention=convention)
    t_start = time.perf_counter()
    model_name, teacher = _resolve_teacher(teacher)
    the_budget = parse_budget(budget, metric)
    metric = the_budget.metric
    tick = (lambda phase, done, total: progress(phase, done, total)) if progress else (lambda *a: None)

    if round_to:   # every candidate with inner widths rounded, as cheapen(round_to=) builds the winner
        candidates = [rounded(c, round_to) for c in parse_candidates(candidates)]
    space, latency_conditions = _cost_tables(
        teacher, candidates, metric=metric, input_size=input_size, leaf_modules=leaf_modules,
        model_name=model_name, latency_batch=latency_batch, latency_device=latency_device, tick=tick,
        runtime=runtime, fold=fold)
    t_tables = time.perf_counter()
    key = space.cost_key(metric, convention)
    teacher_cost = space.base[key]
    target = the_budget.target(teacher_cost)
    window = (target * (1 - tolerance), target * (1 + tolerance))
    reachable = space.cost_range(key)
    _check_reachable(the_budget, target, window, reachable, teacher_cost, model_name)
    configs, draws, hits = sample_configurations(space, key, window, samples, seed=seed, max_draws=max_draws)
    t_sampled = time.perf_counter()
    _check_sampled(configs, draws, tolerance, target, reachable, metric)
    notes = list(space.notes)
    if len(configs) < samples:
        notes.append(f"only {len(configs)} distinct configurations lie within the budget window "
                     f"({draws:,} draws); all were scored")

    batch = fixed_minibatch(data, batch_size=batch_size, seed=seed, input_shape=space.input_shape,
                            teacher=teacher)
    if batch.synthetic:
        notes.append(f"no data given, so candidates were scored on {batch.source}; real training images "
                     "(data=, --data) give scores that reflect real inputs")
    scorer = Scorer(teacher, space, batch, seed=seed, input_size=input_size, leaf_modules=leaf_modules,
                    precision=precision)
    if scorer.precision != precision:
        notes.append(f"{scorer.device} has no native bf16, so Fisher scores were computed in fp32")
    ranked, results = _score_all(scorer, space, configs, key, tick)
    t_scored = time.perf_counter()
    scoring_parts = dict(scorer.seconds)
    extra = [fixed_minibatch(data, batch_size=batch_size, seed=seed + r, input_shape=space.input_shape,
                             teacher=teacher) for r in range(1, spread_runs)]
    _spread(scorer, ranked, results, extra, seed=seed, top=top, tick=tick)
    t_spread = time.perf_counter()

    measured = _verify_winner(teacher, space, ranked[0], results[0], metric=metric, input_size=input_size,
                              leaf_modules=leaf_modules, model_name=model_name, latency_batch=latency_batch,
                              latency_conditions=latency_conditions)
    seconds = {"tables": t_tables - t_start, "sampling": t_sampled - t_tables,
               "scoring": t_scored - t_sampled, "spread": t_spread - t_scored,
               "total": time.perf_counter() - t_start,
               **{f"scoring_{k}": v for k, v in scoring_parts.items()}}
    return SearchResult(
        model=model_name, budget=the_budget, metric=metric, convention=convention, target=target,
        tolerance=tolerance, reachable=reachable, teacher_cost=teacher_cost,
        blocks=[b.label for b in space.blocks],
        results=results, draws=draws, in_budget=hits, samples=samples, minibatch=batch.source, seed=seed,
        seconds=seconds, measured=measured, latency_conditions=latency_conditions, notes=notes,
        precision=scorer.precision)


# --- the phases of search() -----------------------------------------------------------------------------------
def _check_arguments(*, tolerance: float, samples: int, batch_size: int, top: int, spread_runs: int,
                     convention: str) -> None:
    if not 0 <= tolerance < 1:
        raise UsageError(f"tolerance is a fraction of the budget in [0, 1), got {tolerance}.")
    if samples < 1 or batch_size < 1 or top < 1 or spread_runs < 1:
        raise UsageError("samples, batch_size, top and spread_runs must be at least 1.")
    if convention not in ("paper", "trainable"):
        raise UsageError(f"convention must be 'paper' or 'trainable', not {convention!r}.")


def _resolve_teacher(teacher: nn.Module | str) -> tuple[str, nn.Module]:
    """(name, module) of a teacher given as a module or a model name."""
    if isinstance(teacher, str):
        return teacher, create_model(teacher)
    return getattr(teacher, "cheapconv_source", None) or type(teacher).__name__, teacher


def _cost_tables(teacher: nn.Module, candidates, *, metric: str, input_size, leaf_modules, model_name: str,
                 latency_batch: int, latency_device, tick: Progress, runtime: str = "torch",
                 fold: bool = True) -> tuple[SearchSpace, dict]:
    """The search space with its cost tables; per-block latencies too (measured once) for a latency budget.
    Returns the space and the latency measurement's conditions (empty for other metrics)."""
    if metric == "latency":  # an unknown or missing runtime fails before any work
        check_runtime(runtime, device=latency_device)
    space = SearchSpace.of(teacher, candidates, input_size=input_size, leaf_modules=leaf_modules,
                           model_name=model_name)
    latency_conditions = {}
    if metric == "latency":
        device = latency_device or next(iter(teacher.parameters())).device
        latency_conditions = measure_latencies(space, teacher, batch=latency_batch, device=device,
                                               progress=lambda d, t: tick("latency", d, t), runtime=runtime,
                                               fold=fold)
    return space, latency_conditions


def _check_reachable(the_budget: Budget, target: float, window: tuple[float, float],
                     reachable: tuple[float, float], teacher_cost: float, model_name: str) -> None:
    """Refuse a budget window outside the range the candidates can reach, giving the range."""
    metric = the_budget.metric
    if window[1] < reachable[0] or window[0] > reachable[1]:
        what = format_cost(target, metric)
        raise UsageError(
            f"The budget {the_budget} ({what}) is out of reach for {model_name}: with these candidates its "
            f"students cost between {format_cost(reachable[0], metric)} and "
            f"{format_cost(reachable[1], metric)} "
            f"(the teacher: {format_cost(teacher_cost, metric)}). Choose a budget in that range, e.g. "
            f"{math.ceil(100 * (reachable[0] + reachable[1]) / 2 / teacher_cost)}% of the teacher.")


def _check_sampled(configs: list, draws: int, tolerance: float, target: float, reachable: tuple[float, float],
                   metric: str) -> None:
    """Refuse a window that no draw fell into (a budget at the very edge of the reachable range)."""
    if not configs:
        raise UsageError(
            f"No configuration within ±{tolerance:.1%} of {format_cost(target, metric)} in {draws:,} uniform "
            "draws: "
            f"the budget lies at the edge of the reachable range {format_cost(reachable[0], metric)} – "
            f"{format_cost(reachable[1], metric)}. Move it inward or widen --tolerance.")


def _score_all(scorer: Scorer, space: SearchSpace, configs: list[tuple[int, ...]], key: str, tick: Progress
               ) -> tuple[list[tuple[int, ...]], list[ScoredConfiguration]]:
    """Score every configuration once; returns the configurations best first and their results."""
    scored = []
    for n, config in enumerate(configs):
        scores = scorer.score(config)
        scored.append((config, scores))
        tick("scoring", n + 1, len(configs))
    order = sorted(range(len(scored)), key=lambda i: -scored[i][1].total)  # stable: ties keep draw order
    results = []
    for rank, i in enumerate(order, start=1):
        config, scores = scored[i]
        costs = space.costs(config)
        results.append(ScoredConfiguration(
            rank=rank, choice=space.choice(config), rules=tuple(space.rules(config)), cost=costs[key],
            params=int(costs["params"]), paper=int(costs["paper"]), macs=int(costs["macs"]),
            latency_ms=costs.get("latency"), score=scores.total,
            block_scores=tuple(scores.per_site.values())))
    return [scored[i][0] for i in order], results


def _spread(scorer: Scorer, ranked: list[tuple[int, ...]], results: list[ScoredConfiguration], extra: list, *,
            seed: int, top: int, tick: Progress) -> None:
    """Re-score the ``top`` configurations under other seeds (init, and the ``extra`` minibatches where the
    data allow) and record all their scores as ``spread_scores``."""
    top_n = min(top, len(results))
    runs = len(extra) + 1
    for j in range(top_n):
        values = [results[j].score]
        for r, other in enumerate(extra, start=1):
            values.append(scorer.score(ranked[j], seed=seed + r, batch=other).total)
            tick("spread", j * (runs - 1) + r, top_n * (runs - 1))
        results[j].spread_scores = tuple(values)


def _verify_winner(teacher: nn.Module, space: SearchSpace, config: tuple[int, ...], winner: ScoredConfiguration,
                   *, metric: str, input_size, leaf_modules, model_name: str, latency_batch: int,
                   latency_conditions: dict) -> dict[str, float]:
    """The winner as the user will get it, ``cheapen(teacher, policy)``, counted (and timed for a latency
    budget); raises if a count differs from what the search computed."""
    student = cheapen(teacher, space.policy(config), input_size=input_size, leaf_modules=leaf_modules,
                      strict=True, model_name=model_name)
    shape = (1, *space.input_shape)
    measured: dict[str, float] = {"params": count_params(student, "trainable"),
                                  "paper": count_params(student, "paper"), "macs": count_macs(student, shape)}
    if metric == "latency":  # the whole winner, in the runtime its blocks were priced in
        (lat,) = measure_in_runtime([student], (latency_batch, *space.input_shape),
                                    latency_conditions.get("runtime", "torch"), device=latency_conditions["device"],
                                    fold=latency_conditions.get("fold", True))
        measured["latency"] = lat.median_ms
    for k in ("params", "paper", "macs"):
        if measured[k] != getattr(winner, k):
            raise RuntimeError(f"cheapconv bug: the winner counts {measured[k]} {k} once built, the search "
                               f"computed {getattr(winner, k)}")
    return measured
