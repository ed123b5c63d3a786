"""The search space: the teacher's replaceable convs, the candidate types each can take, and their cost tables.

A *block* (a site of the search) is either

* a residual-branch conv pair as :mod:`cheapconv.fx.analysis` finds it (``conv_a -> norm -> act -> conv_b ->
  ... -> add``): ``S`` keeps both convs, a block-level spec (``B(2)``) collapses the pair into a bottleneck,
  a conv-level spec replaces the convs of the pair it applies to (both 3×3 convs of a basic block; the 3×3
  alone where the pair ends in a 1×1, as in bottleneck ResNets, under a k×k block such as ``G(4)``; the
  1×1 too under a structured block such as ``LRp(0.5)``; the 1×1 alone after a depthwise conv, as in
  EfficientNet); or
* any other conv (not the stem, called once) that some candidate other than ``S`` can replace: the 1×1
  convs and the convs of blocks without a residual add (MobileNet, EfficientNet), a ResNet-D's deep stem.

A conv that only ``S`` fits (a depthwise conv, a 1×1 conv under k×k candidates) is no site: there is
nothing to choose, and it stays as it is. So on a WRN under the default candidates (which replace dense
k×k convs) the blocks are exactly the residual pairs; on a depthwise network the default candidates leave
no choice, and :meth:`SearchSpace.of` says which candidates would (the structured pointwise blocks).
The stem is left alone, as default rules leave it. A *configuration* gives each block one candidate;
configurations are tuples of candidate indices, one per block.

Costs never need a model per configuration: for every block and candidate the replacement is built once and
its change of parameters (both conventions) and MACs is recorded, so a configuration costs
``teacher + Σ deltas`` exactly (the plan prices layers the same way, and the tests compare against counting
the cheapened model). A candidate a block cannot take (groups that do not divide) is left out for that block,
with the reason kept in :attr:`SearchBlock.excluded`. Conv-level candidates are priced by the plan's own
rule (:func:`cheapconv.surgery.planner.price_conv`), so the two cannot disagree.

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
from ..fx.analysis import Analysis, ConvSite, PairSite
from ..fx.ops import is_add, is_passthrough, layers_between, single_user
from ..surgery.advice import nothing_replaced_advice
from ..surgery.planner import Cost, module_cost, modules_cost, outside_scope, prepare, price_conv
from ..surgery.policy import Policy, parse_policy
from ..threads import limited_threads

#: BlockSwap's candidate types (``blockswap-and-structured.md`` section 1, item 1).
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "S", "G(2)", "G(4)", "G(8)", "G(16)", "G(N/2)", "G(N/4)", "G(N/8)", "G(N/16)", "G(N)",
    "B(2)", "B(4)", "BG(2,2)", "BG(2,4)", "BG(2,8)", "BG(2,16)", "BG(2,M/2)", "BG(2,M/4)", "BG(2,M/8)",
    "BG(2,M/16)", "BG(4,M/2)", "BG(4,M/4)", "BG(4,M/8)",
)  # fmt: skip

_COST_KEYS = ("params", "paper", "macs")

#: Blocks the no-choice error may suggest (the first that apply to the network are named).
_SUGGESTIONS: tuple[str, ...] = ("LRp(0.5)", "LRp(0.25)", "ACDC(2)", "Shuffle(4)", "G(4)", "G(N)", "B(2)")


@dataclass(frozen=True)
class Candidate:
    """One type a block can take, with its cost change against the teacher's pair.

    ``key`` describes the structure the spec resolves to in this block (group counts resolved): ``G(N/16)``
    and ``G(2)`` on a 32-channel block build the same network and share a key. ``targets`` are the positions,
    in :attr:`SearchBlock.convs`, of the convs a conv-level candidate replaces (empty for ``S`` and
    block-level candidates)."""

    spec: BlockSpec
    key: str
    params: int          # trainable convention
    paper: int           # paper convention (BN running statistics included)
    macs: int
    latency_ms: float | None = None
    targets: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        return str(self.spec)

    @property
    def level(self) -> str:
        return self.spec.level


@dataclass
class SearchBlock:
    """One site of the search, a residual pair or a single conv (``kind``), and the candidates it can take.

    For a single conv, ``label``, ``path``, ``conv_a`` and ``conv_b`` all name the conv."""

    index: int
    label: str                    # the plan's name for the pair, ``block1.0.conv1+conv2`` (a conv: its name)
    path: str                     # the module that holds the pair, ``block1.0``
    conv_a: str
    conv_b: str
    kxk: tuple[str, ...]          # the block's k×k convs (what k×k candidates such as G(4) replace)
    shape: str
    input_shape: tuple[int, ...]  # (C, H, W) entering conv_a
    #: module whose output enters the residual add when that module is not conv_b itself (a post-activation
    #: block's last norm), else None; ``branch_node`` names the fx node when no module can carry a hook
    branch_module: str | None
    branch_node: str | None
    unique_path: bool = True      # no other block lives in ``path`` (a rule may then name the pair by it)
    candidates: list[Candidate] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    kind: str = "pair"            # "pair" (a residual-branch conv pair) or "conv" (one conv)

    @property
    def convs(self) -> tuple[str, ...]:
        """The convs of the block: (conv_a, conv_b) for a pair, (conv,) for a single conv."""
        return (self.conv_a,) if self.kind == "conv" else (self.conv_a, self.conv_b)

    def targets(self, candidate: Candidate) -> tuple[str, ...]:
        """The convs a conv-level ``candidate`` replaces in this block."""
        return tuple(self.convs[i] for i in candidate.targets)

    def site(self, candidate: Candidate) -> str | None:
        """The module (in a student) whose output is this block's branch output under ``candidate`` (a single
        conv's: its own output); None when only the fx node :attr:`branch_node` marks it."""
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
                 pairs: dict[str, PairSite] | None = None, singles: dict[str, ConvSite] | None = None):
        self.model_name = model_name
        self.input_shape = input_shape
        self.blocks = blocks
        self.base = base                # teacher totals: params, paper, macs (and latency once measured)
        self.notes = notes
        self.graph = graph              # the traced teacher copy the blocks were found in
        self.pairs = pairs or {}        # block label -> PairSite in ``graph`` (per-block latency needs them)
        self.singles = singles or {}    # block label -> ConvSite of a single-conv block

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
        analysis, _, notes, totals = prepare(teacher, input_size=input_size, leaf_modules=leaf_modules,
                                             stages=[])
        if not analysis.graph_mode:
            notes.append(f"{name} did not trace, so its residual pairs are unknown: single convs are searched, "
                         "and block-level candidates (B, BG) apply nowhere")
        gm = analysis.model
        paths = [p.block for p in analysis.pairs]
        in_pairs = {s.name for p in analysis.pairs for s in (p.a, p.b)}
        blocks: list[SearchBlock] = []
        singles: dict[str, ConvSite] = {}
        cache: dict[tuple, tuple[list[Candidate], dict[str, str]]] = {}
        for site in analysis.convs:
            pair = analysis.pair_starting_at(site.name)
            if pair is not None:
                block = cls._pair_block(pair, gm, specs, analysis, cache)
                if not block.candidates:
                    notes.append(f"{pair.label} can take none of the candidates and is left as it is: "
                                 + "; ".join(f"{k}: {v}" for k, v in block.excluded.items()))
                    continue
                block.unique_path = paths.count(block.path) == 1 and not any(c in block.path for c in "*?[]")
            elif site.name in in_pairs or site.is_stem or site.calls != 1 or site.input_shape is None:
                continue  # the second conv of a pair; the stem (left alone, as default rules do); shared or unused
            else:
                block = cls._conv_block(site, specs, analysis, cache)
                if not any(c.level != "keep" for c in block.candidates):
                    continue  # only S fits: nothing to choose
                singles[block.label] = site
            blocks.append(block)  # a pair that only S fits stays a block, as it always has
        if not any(c.level != "keep" for b in blocks for c in b.candidates):
            raise UsageError(_no_choice(name, specs, analysis))
        for i, b in enumerate(blocks):
            b.index = i
        base = {"params": totals["params_before"], "paper": totals["paper_before"],
                "macs": totals["macs_before"]}
        return cls(name, tuple(analysis.input_shape), blocks, base, notes, gm if analysis.graph_mode else None,
                   {p.label: p for p in analysis.pairs}, singles)

    @staticmethod
    def _pair_block(pair: PairSite, gm, specs: list[BlockSpec], analysis: Analysis, cache: dict) -> SearchBlock:
        between = [gm.get_submodule(n.target) for n in pair.between if n.op == "call_module"]
        module, node = _branch_output(gm, pair)
        kxk = tuple(s.name for s in (pair.a, pair.b) if _is_kxk(s.conv))
        block = SearchBlock(0, pair.label, pair.block, pair.a.name, pair.b.name, kxk,
                            f"{pair.a.describe()} + {pair.b.describe()}", tuple(pair.a.input_shape), module, node)
        # identical geometry (the inner blocks of a stage) prices identically: build once
        signature = ("pair", repr(pair.a.conv), pair.a.input_shape, repr(pair.b.conv), pair.b.input_shape,
                     _module_key(between))
        if signature not in cache:
            cache[signature] = _price(pair, between, specs, analysis)
        block.candidates, block.excluded = cache[signature]
        return block

    @staticmethod
    def _conv_block(site: ConvSite, specs: list[BlockSpec], analysis: Analysis, cache: dict) -> SearchBlock:
        kxk = (site.name,) if _is_kxk(site.conv) else ()
        block = SearchBlock(0, site.name, site.name, site.name, site.name, kxk, site.describe(),
                            tuple(site.input_shape), None, None, kind="conv")
        signature = ("conv", repr(site.conv), site.input_shape, type(site.conv).__name__)
        if signature not in cache:
            cache[signature] = _price_conv(site, specs, analysis)
        block.candidates, block.excluded = cache[signature]
        return block

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
        """One policy line per block (S: a rule per conv; conv-level: a rule per conv it replaces; block-level:
        one for the pair)."""
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
                names = b.convs if c.level == "keep" else b.targets(c)
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
                expected.update(dict.fromkeys(b.targets(c), c.text))
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


def _conv_level(sites: Sequence[ConvSite], spec: BlockSpec, analysis: Analysis
                ) -> tuple[Candidate | None, str | None]:
    """``spec`` on the convs of one block, as a rule naming each would plan it: (the candidate, None), or
    (None, why not). It replaces every conv it applies to; a conv outside its scope (a 1×1 conv under a k×k
    block, a depthwise conv) stays, and a conv it refuses for another reason (groups that do not divide)
    rules it out, as it would make the plan ``cannot``."""
    targets, modules, reasons = [], [], []
    delta = (0, 0, 0)
    for i, site in enumerate(sites):
        entry, module = price_conv(site, spec, analysis)
        if entry.action == "replace":
            targets.append(i)
            modules.append(module)
            delta = tuple(d + after - before for d, after, before in zip(
                delta, (entry.params_after, entry.paper_after, entry.macs_after),
                (entry.params_before, entry.paper_before, entry.macs_before), strict=True))
        elif outside_scope(site.conv):
            reasons.append(entry.reason)
        else:
            return None, entry.reason
    if not targets:
        what = "the pair" if len(sites) > 1 else "the conv"
        return None, f"{spec} applies to no conv of {what}: " + "; ".join(dict.fromkeys(reasons))
    return Candidate(spec, "conv: " + _module_key(modules), *delta, targets=tuple(targets)), None


def _price(pair: PairSite, between: list[nn.Module], specs: list[BlockSpec], analysis: Analysis
           ) -> tuple[list[Candidate], dict[str, str]]:
    a, b = pair.a, pair.b
    pair_before = modules_cost([a.conv, b.conv, *between], [a.input_shape, b.input_shape, *[None] * len(between)])
    candidates, excluded = [], {}
    for spec in specs:
        if spec.level == "keep":
            candidates.append(Candidate(spec, "S", 0, 0, 0))
            continue
        if spec.level == "block":
            layers = layers_between(analysis.model, pair.between)
            reason = spec.pair_reason_with(a.conv, b.conv, layers)
            if reason is None:
                module = spec.build_pair_with(a.conv, b.conv, layers)
                delta = _sub(module_cost(module, a.input_shape), pair_before)
                candidates.append(Candidate(spec, "block: " + _module_key([module]), *delta))
        else:
            candidate, reason = _conv_level((a, b), spec, analysis)
            if candidate is not None:
                candidates.append(candidate)
        if reason is not None:
            excluded[str(spec)] = reason
    return candidates, excluded


def _price_conv(site: ConvSite, specs: list[BlockSpec], analysis: Analysis
                ) -> tuple[list[Candidate], dict[str, str]]:
    candidates, excluded = [], {}
    for spec in specs:
        if spec.level == "keep":
            candidates.append(Candidate(spec, "S", 0, 0, 0))
        elif spec.level == "block":
            excluded[str(spec)] = f"{spec} collapses residual-branch conv pairs, and this conv is in none"
        else:
            candidate, reason = _conv_level((site,), spec, analysis)
            if candidate is not None:
                candidates.append(candidate)
            else:
                excluded[str(spec)] = reason
    return candidates, excluded


def _applies(spec: BlockSpec, analysis: Analysis) -> bool:
    """Whether ``spec`` can replace some conv (not the stem) or residual pair of the analysed model."""
    if spec.level == "block":
        return any(spec.pair_reason_with(p.a.conv, p.b.conv, layers_between(analysis.model, p.between)) is None
                   for p in analysis.pairs)
    return any(spec.conv_reason(s.conv) is None for s in analysis.convs if not s.is_stem and s.calls == 1)


def _no_choice(name: str, specs: list[BlockSpec], analysis: Analysis) -> str:
    """The error when no conv of the model can take a candidate other than S: why, and what to use instead."""
    default = [parse_block(t) for t in DEFAULT_CANDIDATES]
    asked = "the default candidates (the paper's S, G, B and BG types)" if specs == default else \
        "the candidates " + ", ".join(map(str, specs))
    usable = [t for t in _SUGGESTIONS if parse_block(t) not in specs and _applies(parse_block(t), analysis)]
    text = (f"The search has no choice to make on {name}: none of its convs can take any of {asked} other "
            f"than S. {nothing_replaced_advice(analysis)}")
    if usable:
        text += (f" Search among blocks that apply here instead, e.g. --candidates 'S, {', '.join(usable[:3])}' "
                 f"(candidates= in Python), or cheapen it with one of them directly: cheapconv cheapen {name} "
                 f"--policy '{usable[0]}'.")
    else:
        text += " No block cheapconv knows applies to it outside its stem, so there is nothing to search."
    return text
