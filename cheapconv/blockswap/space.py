"""The search space: the teacher's residual blocks, the candidate types each can take, and their cost tables.

A *block* is a residual-branch conv pair as :mod:`cheapconv.fx.analysis` finds it (``conv_a -> norm -> act ->
conv_b -> ... -> add``). A *configuration* gives each block one candidate: ``S`` keeps both convs, a
conv-level spec (``G(4)``) replaces the pair's k×k convs (both, in basic blocks; the 3×3 alone where the
pair ends in a 1×1, as in bottleneck ResNets, since conv-level blocks never touch 1×1 convs), a block-level
spec (``B(2)``) collapses the pair into a bottleneck. Configurations are tuples of candidate indices, one
per block.

Costs never need a model per configuration: for every block and candidate the replacement is built once and
its change of parameters (both conventions) and MACs is recorded, so a configuration costs
``teacher + Σ deltas`` exactly (the plan prices layers the same way, and the tests compare against counting
the cheapened model). A candidate a block cannot take (groups that do not divide) is left out for that block,
with the reason kept in :attr:`SearchBlock.excluded`.

:meth:`SearchSpace.policy` turns a configuration into an ordinary policy, one line per block, that
:func:`cheapconv.cheapen` applies exactly; :meth:`SearchSpace.check_plan` verifies that it did.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..blocks import BlockSpec, parse_block
from ..blocks.grammar import split_top_level
from ..errors import UsageError
from ..fx.analysis import PairSite
from ..fx.ops import is_add, is_passthrough, single_user
from ..surgery.planner import Cost, module_cost, modules_cost
from ..surgery.policy import Policy, parse_policy
from ..threads import limited_threads

#: BlockSwap's candidate types (``blockswap-and-structured.md`` section 1, item 1).
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "S", "G(2)", "G(4)", "G(8)", "G(16)", "G(N/2)", "G(N/4)", "G(N/8)", "G(N/16)", "G(N)",
    "B(2)", "B(4)", "BG(2,2)", "BG(2,4)", "BG(2,8)", "BG(2,16)", "BG(2,M/2)", "BG(2,M/4)", "BG(2,M/8)",
    "BG(2,M/16)", "BG(4,M/2)", "BG(4,M/4)", "BG(4,M/8)",
)  # fmt: skip

_COST_KEYS = ("params", "paper", "macs")


@dataclass(frozen=True)
class Candidate:
    """One type a block can take, with its cost change against the teacher's pair.

    ``key`` describes the structure the spec resolves to in this block (group counts resolved): ``G(N/16)``
    and ``G(2)`` on a 32-channel block build the same network and share a key."""

    spec: BlockSpec
    key: str
    params: int          # trainable convention
    paper: int           # paper convention (BN running statistics included)
    macs: int
    latency_ms: float | None = None

    @property
    def text(self) -> str:
        return str(self.spec)

    @property
    def level(self) -> str:
        return self.spec.level


@dataclass
class SearchBlock:
    """One residual block of the teacher and the candidates it can take."""

    index: int
    label: str                    # the plan's name for the pair, ``block1.0.conv1+conv2``
    path: str                     # the module that holds the pair, ``block1.0``
    conv_a: str
    conv_b: str
    kxk: tuple[str, ...]          # the pair's k×k convs: what conv-level candidates replace
    shape: str
    input_shape: tuple[int, ...]  # (C, H, W) entering conv_a
    #: module whose output enters the residual add when that module is not conv_b itself (a post-activation
    #: block's last norm), else None; ``branch_node`` names the fx node when no module can carry a hook
    branch_module: str | None
    branch_node: str | None
    unique_path: bool = True      # no other block lives in ``path`` (a rule may then name the pair by it)
    candidates: list[Candidate] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)

    def site(self, candidate: Candidate) -> str | None:
        """The module (in a student) whose output is this block's branch output under ``candidate``; None
        when only the fx node :attr:`branch_node` marks it."""
        if self.branch_node is not None:
            return None
        if self.branch_module is not None:
            return self.branch_module
        return self.conv_a if candidate.level == "block" else self.conv_b


def split_specs(text: str) -> list[str]:
    """``"S, G(4); BG(2,4)"`` -> ``["S", "G(4)", "BG(2,4)"]``: commas and semicolons outside parentheses."""
    return split_top_level(text, ",;")


def parse_candidates(candidates: str | Sequence[str | BlockSpec] | None) -> list[BlockSpec]:
    """The candidate specs, in order and without repeats; None means :data:`DEFAULT_CANDIDATES`."""
    if candidates is None:
        candidates = DEFAULT_CANDIDATES
    if isinstance(candidates, str):
        candidates = split_specs(candidates)
    specs: list[BlockSpec] = []
    for c in candidates:
        spec = c if isinstance(c, BlockSpec) else parse_block(str(c))
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise UsageError("The candidate list is empty. Give block specs such as 'S, G(4), B(2)'.")
    return specs


def _selector(name: str) -> str:
    """A selector that matches exactly ``name`` (a glob unless the name holds glob characters)."""
    return f"re:{re.escape(name)}" if any(c in name for c in "*?[]") else name


def _module_key(modules: Sequence[nn.Module]) -> str:
    return " | ".join(" ".join(repr(m).split()) for m in modules)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (restored after). Pricing and planning run many tiny
    batch-1 forwards, which threads do not speed up; on a busy machine two spinning threads make them 5-10×
    slower."""
    with limited_threads(1):
        yield


def _sub(a: Cost, b: Cost) -> Cost:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def _branch_output(gm: fx.GraphModule, pair: PairSite) -> tuple[str | None, str | None]:
    """Where the branch output is beyond conv_b: (module, None), (None, node), or (None, None) for none."""
    chain = []
    cursor = single_user(pair.b.node)
    while cursor is not None and not is_add(cursor) and is_passthrough(gm, cursor):
        chain.append(cursor)
        cursor = single_user(cursor)
    if not chain:
        return None, None
    last = chain[-1]
    if last.op == "call_module":
        calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == last.target)
        if calls == 1:
            return str(last.target), None
    return None, last.name


class SearchSpace:
    """Blocks, candidates and cost tables of one teacher. Build with :meth:`of`."""

    def __init__(self, model_name: str, input_shape: tuple[int, ...], blocks: list[SearchBlock],
                 base: dict[str, float], notes: list[str], graph: fx.GraphModule | None = None,
                 pairs: dict[str, PairSite] | None = None):
        self.model_name = model_name
        self.input_shape = input_shape
        self.blocks = blocks
        self.base = base                # teacher totals: params, paper, macs (and latency once measured)
        self.notes = notes
        self.graph = graph              # the traced teacher copy the blocks were found in
        self.pairs = pairs or {}        # block label -> PairSite in ``graph`` (per-block latency needs them)

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def of(cls, teacher: nn.Module, candidates: str | Sequence[str | BlockSpec] | None = None, *,
           input_size: tuple[int, ...] | None = None, leaf_modules=(), model_name: str | None = None
           ) -> SearchSpace:
        """Analyse ``teacher`` once and price every (block, candidate)."""
        specs = parse_candidates(candidates)
        name = model_name or getattr(teacher, "cheapconv_source", None) or type(teacher).__name__
        with single_thread():
            return cls._of(teacher, specs, name, input_size, leaf_modules)

    @classmethod
    def _of(cls, teacher, specs, name, input_size, leaf_modules) -> SearchSpace:
        from ..surgery.planner import prepare

        analysis, _, notes, totals = prepare(teacher, input_size=input_size, leaf_modules=leaf_modules,
                                             stages=[])
        if not analysis.graph_mode:
            raise UsageError(f"Block search needs the residual blocks of {name}, which only an fx graph "
                             f"shows, and the model did not trace. {notes[0] if notes else ''}")
        if not analysis.pairs:
            raise UsageError(f"{name} has no residual-branch conv pairs (conv→norm→act→conv→add), so there "
                             "are no blocks to choose types for.")
        gm = analysis.model
        paths = [p.block for p in analysis.pairs]
        blocks = []
        cache: dict[tuple, tuple[list[Candidate], dict[str, str]]] = {}
        for i, pair in enumerate(analysis.pairs):
            between = [gm.get_submodule(n.target) for n in pair.between if n.op == "call_module"]
            module, node = _branch_output(gm, pair)
            kxk = tuple(s.name for s in (pair.a, pair.b) if _is_kxk(s.conv))
            block = SearchBlock(i, pair.label, pair.block, pair.a.name, pair.b.name, kxk,
                                f"{pair.a.describe()} + {pair.b.describe()}", tuple(pair.a.input_shape),
                                module, node)
            # identical geometry (the inner blocks of a stage) prices identically: build once
            signature = (repr(pair.a.conv), pair.a.input_shape, repr(pair.b.conv), pair.b.input_shape,
                         _module_key(between))
            if signature not in cache:
                cache[signature] = _price(pair, between, specs)
            block.candidates, block.excluded = cache[signature]
            if not block.candidates:
                notes.append(f"{pair.label} can take none of the candidates and is left as it is: "
                             + "; ".join(f"{k}: {v}" for k, v in block.excluded.items()))
                continue
            blocks.append(block)
        if not blocks:
            raise UsageError(f"No block of {name} can take any of the candidates "
                             f"{', '.join(map(str, specs))}.")
        for i, b in enumerate(blocks):
            b.index = i
            b.unique_path = paths.count(b.path) == 1 and not any(c in b.path for c in "*?[]")
        base = {"params": totals["params_before"], "paper": totals["paper_before"],
                "macs": totals["macs_before"]}
        return cls(name, tuple(analysis.input_shape), blocks, base, notes, gm,
                   {p.label: p for p in analysis.pairs})

    # --- costs -------------------------------------------------------------------------------------------
    def cost_key(self, metric: str, convention: str = "paper") -> str:
        if metric == "params":
            return "paper" if convention == "paper" else "params"
        if metric in ("macs", "latency"):
            return metric
        raise UsageError(f"Unknown metric {metric!r}; choose params, macs or latency.")

    def table(self, key: str) -> tuple[float, torch.Tensor]:
        """(teacher cost, B×K float64 tensor of deltas); K is the most candidates of any block, 0-padded."""
        if key == "latency" and "latency" not in self.base:
            raise RuntimeError("latency table not measured; call cheapconv.blockswap.measure_latencies")
        width = max(len(b.candidates) for b in self.blocks)
        t = torch.zeros(len(self.blocks), width, dtype=torch.float64)
        attr = "latency_ms" if key == "latency" else key
        for i, b in enumerate(self.blocks):
            t[i, :len(b.candidates)] = torch.tensor([float(getattr(c, attr)) for c in b.candidates],
                                                    dtype=torch.float64)
        return float(self.base[key]), t

    def cost(self, config: Sequence[int], key: str) -> float:
        """Cost of one configuration: teacher + Σ per-block deltas (exact for parameters and MACs)."""
        attr = "latency_ms" if key == "latency" else key
        return self.base[key] + sum(getattr(b.candidates[i], attr)
                                    for b, i in zip(self.blocks, config, strict=True))

    def costs(self, config: Sequence[int]) -> dict[str, float]:
        out = {k: self.cost(config, k) for k in _COST_KEYS}
        if "latency" in self.base:
            out["latency"] = self.cost(config, "latency")
        return out

    def cost_range(self, key: str) -> tuple[float, float]:
        """The cheapest and the dearest configuration's cost."""
        attr = "latency_ms" if key == "latency" else key
        lo = sum(min(getattr(c, attr) for c in b.candidates) for b in self.blocks)
        hi = sum(max(getattr(c, attr) for c in b.candidates) for b in self.blocks)
        return self.base[key] + lo, self.base[key] + hi

    @property
    def counts(self) -> torch.Tensor:
        return torch.tensor([len(b.candidates) for b in self.blocks], dtype=torch.int64)

    @property
    def size(self) -> int:
        """Number of configurations (candidate names; structurally equal ones counted separately)."""
        n = 1
        for b in self.blocks:
            n *= len(b.candidates)
        return n

    # --- configurations ----------------------------------------------------------------------------------
    def key(self, config: Sequence[int]) -> tuple[str, ...]:
        """Structural identity: configurations with equal keys build the same student."""
        return tuple(b.candidates[i].key for b, i in zip(self.blocks, config, strict=True))

    def choice(self, config: Sequence[int]) -> tuple[str, ...]:
        return tuple(b.candidates[i].text for b, i in zip(self.blocks, config, strict=True))

    def index_of(self, choice: Sequence[str | BlockSpec]) -> tuple[int, ...]:
        """The configuration that gives block i the spec ``choice[i]`` (for tests and for re-scoring)."""
        if len(choice) != len(self.blocks):
            raise UsageError(f"A configuration of {self.model_name} has {len(self.blocks)} entries, got "
                             f"{len(choice)}.")
        out = []
        for b, c in zip(self.blocks, choice, strict=True):
            spec = c if isinstance(c, BlockSpec) else parse_block(c)
            texts = [x.spec for x in b.candidates]
            if spec not in texts:
                raise UsageError(f"{b.label} cannot take {spec}: "
                                 f"{b.excluded.get(str(spec), 'not among the candidates')}.")
            out.append(texts.index(spec))
        return tuple(out)

    def rules(self, config: Sequence[int]) -> list[str]:
        """One policy line per block (conv-level and S: a rule per conv; block-level: one for the pair)."""
        lines = []
        for b, i in zip(self.blocks, config, strict=True):
            c = b.candidates[i]
            spec = c.text
            if c.level == "block":
                if b.unique_path:
                    selector = b.path  # plan matches a pair through the block that holds it
                else:
                    selector = f"re:(?:{re.escape(b.conv_a)}|{re.escape(b.conv_b)})"
                lines.append(f"{selector}={spec}")
            else:
                names = (b.conv_a, b.conv_b) if c.level == "keep" else b.kxk
                lines.append("; ".join(f"{_selector(n)}={spec}" for n in names))
        return lines

    def policy(self, config: Sequence[int]) -> Policy:
        """The configuration as a policy: only the searched blocks are named; everything else stays."""
        return parse_policy("\n".join(self.rules(config)))

    def check_plan(self, config: Sequence[int], plan) -> None:
        """Raise if ``plan`` (of the policy of ``config``) does not do exactly what ``config`` says."""
        expected: dict[str, str] = {}
        for b, i in zip(self.blocks, config, strict=True):
            c = b.candidates[i]
            if c.level == "block":
                expected[b.label] = c.text
            elif c.level == "conv":
                expected.update(dict.fromkeys(b.kxk, c.text))
        done = {e.layer: e.block for e in plan.replaced}
        if done != expected:
            wrong = sorted(set(done.items()) ^ set(expected.items()))
            raise RuntimeError(f"cheapconv bug: the policy of a searched configuration was applied "
                               f"differently than searched ({wrong[:4]}); policy: {plan.policy}")
        for key in ("params", "paper", "macs"):
            if plan.totals[f"{key}_after"] != self.cost(config, key):
                raise RuntimeError(f"cheapconv bug: the plan prices the configuration at "
                                   f"{plan.totals[key + '_after']} {key}, the search at "
                                   f"{self.cost(config, key)}")


def _is_kxk(conv: nn.Conv2d) -> bool:
    return min(conv.kernel_size) > 1


def _price(pair: PairSite, between: list[nn.Module], specs: list[BlockSpec]
           ) -> tuple[list[Candidate], dict[str, str]]:
    a, b = pair.a, pair.b
    pair_before = modules_cost([a.conv, b.conv, *between], [a.input_shape, b.input_shape, *[None] * len(between)])
    targets = [s for s in (a, b) if _is_kxk(s.conv)]   # conv-level blocks replace k×k convs only
    candidates, excluded = [], {}
    for spec in specs:
        if spec.level == "keep":
            candidates.append(Candidate(spec, "S", 0, 0, 0))
            continue
        if spec.level == "block":
            reason = spec.pair_reason(a.conv, b.conv)
            if reason is None:
                module = spec.build_pair(a.conv, b.conv)
                delta = _sub(module_cost(module, a.input_shape), pair_before)
                candidates.append(Candidate(spec, "block: " + _module_key([module]), *delta))
        else:
            reason = next((r for r in (spec.conv_reason(s.conv) for s in targets) if r), None)
            if not targets:
                reason = "the pair has no k×k conv for a conv-level block"
            if reason is None:
                new = [spec.build_conv(s.conv) for s in targets]
                shapes = [s.input_shape for s in targets]
                before, after = modules_cost([s.conv for s in targets], shapes), modules_cost(new, shapes)
                candidates.append(Candidate(spec, "conv: " + _module_key(new), *_sub(after, before)))
        if reason is not None:
            excluded[str(spec)] = reason
    return candidates, excluded
