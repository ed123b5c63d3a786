"""The plan: what a policy will do to a model, decided before anything is changed.

:func:`plan` is pure: it traces a copy, matches rules to layers, checks what each block can do and prices
it (parameters in both conventions and MACs, before and after). :func:`cheapconv.cheapen` applies exactly
this plan. Every layer appears with an action:

* ``replace``: the block will replace it;
* ``keep``: a rule said keep (``S``/``keep``), or no rule matched;
* ``skip``: not eligible (the stem under a default rule; 1×1 convs under k×k blocks; depthwise and other
  grouped convs; convs outside residual pairs under B/BG) and not named by the rule that matched it (a
  wildcard or default rule);
* ``cannot``: a rule asked for a block this layer cannot take; the reason says why. ``strict=True``
  turns these into an error.

Factorised pairs (k×1 then 1×k through at most an activation, :class:`~cheapconv.fx.analysis.FactoredSite`) are
one row under conv-level blocks: the block replaces the pair as it would the k×k conv with the pair's geometry.
Convs a model lists in ``cheapconv_stems`` are treated as its stem (ERFNet's downsamplers, which the paper keeps).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..blocks import BlockSpec, SamePadded, pads_at_run_time
from ..counting import count_macs, count_params
from ..errors import PolicyMatchError, TraceError
from ..formatting import human
from ..fx.analysis import Analysis, ConvSite, FactoredSite, PairSite, analyse, shape_mismatch
from ..fx.ops import layers_between
from ..fx.tap import Tap
from ..fx.tracer import trace
from ..models.inputs import as_example_batch, example_input_for
from .advice import nothing_replaced_advice
from .plans import Plan, PlanEntry
from .policy import Policy, Rule, Selector, parse_policy
from .taps import find_stages

# --- costs -------------------------------------------------------------------------------------------------
#: (trainable parameters, paper-convention parameters, MACs per image)
Cost = tuple[int, int, int]


def module_cost(module: nn.Module, input_shape: tuple[int, ...] | None = None) -> Cost:
    """What ``module`` costs: parameters in both conventions and, given the (C, H, W) it reads, MACs per
    image (0 without). The plan prices layers with it and the block search its cost tables, so the two agree
    exactly."""
    params = count_params(module, "trainable")
    paper = count_params(module, "paper")
    macs = count_macs(module, (1, *input_shape)) if input_shape else 0
    return params, paper, macs


def modules_cost(modules: Sequence[nn.Module], shapes: Sequence[tuple[int, ...] | None]) -> Cost:
    """The summed :func:`module_cost` of ``modules``, each at its input shape in ``shapes`` (None: no MACs)."""
    total = [0, 0, 0]
    for m, s in zip(modules, shapes, strict=True):
        for i, v in enumerate(module_cost(m, s)):
            total[i] += v
    return tuple(total)


def _price(entry: PlanEntry, before: Cost, after: Cost) -> PlanEntry:
    entry.params_before, entry.paper_before, entry.macs_before = before
    entry.params_after, entry.paper_after, entry.macs_after = after
    return entry


# --- decisions ---------------------------------------------------------------------------------------------
def _conv_entry(site: ConvSite, rule_match: tuple[int, Rule] | None, analysis: Analysis) -> PlanEntry:
    entry = PlanEntry(site.name, (site.name,), "keep", shape=site.describe())
    before = module_cost(site.conv, site.input_shape)
    if rule_match is None:
        entry.reason = ("the stem (reads the image, or the model lists it in cheapconv_stems); name it in a rule "
                        "to change it") if site.is_stem else "no rule matches"
        entry.action = "skip" if site.is_stem else "keep"
        return _price(entry, before, before)
    _, rule = rule_match
    entry.rule = str(rule)
    spec = rule.block
    if spec.level == "keep":
        entry.reason = f"rule '{rule}'"
        return _price(entry, before, before)
    if site.calls == 0:
        entry.action, entry.reason = "skip", "never called in forward"
        return _price(entry, before, before)
    if site.calls > 1:
        entry.action = "cannot"
        entry.reason = f"the module is called {site.calls} times in forward; a replacement would change every call"
        return _price(entry, before, before)
    if spec.level == "block":
        pair = analysis.pair_ending_at(site.name)
        if pair is not None:
            entry.reason = f"second conv of the pair {pair.label}, which {spec} did not take"
        elif not analysis.graph_mode:
            entry.reason = f"{spec} needs an fx graph to find residual-branch pairs; the model did not trace"
        else:
            entry.reason = (f"{spec} collapses residual-branch pairs conv→norm→act→conv→add; "
                            "this conv is not the first of such a pair")
        # Wildcards and default rules select pairs; a conv outside any pair is simply not eligible.
        entry.action = "cannot" if rule.names_exactly(site.name) else "skip"
        return _price(entry, before, before)
    reason = spec.conv_reason(site.conv)
    if reason is not None:
        # A wildcard or default rule does not aim at convs outside the block's scope (a 1×1 conv under a k×k
        # block, a depthwise or otherwise grouped conv under a block that makes dense convs cheap): those are
        # skipped. Refusing a dense k×k conv (divisibility, ...), or any layer a rule names, is a real conflict.
        entry.action = "cannot" if not outside_scope(site.conv) or rule.names_exactly(site.name) else "skip"
        entry.reason = reason
        return _price(entry, before, before)
    replacement = spec.build_conv(site.conv)
    mismatch = shape_mismatch(replacement, site.input_shape, site.output_shape)
    if mismatch is not None and pads_at_run_time(site.conv):  # timm's Conv2dSame: pad as it does, then the block
        replacement = _same_padded(spec, site.conv)
        mismatch = shape_mismatch(replacement, site.input_shape, site.output_shape)
    if mismatch is not None:
        entry.action, entry.reason = "cannot", mismatch
        return _price(entry, before, before)
    after = module_cost(replacement, site.input_shape)
    if _grows(entry, spec, before, after, named=rule.names_exactly(site.name), what="the conv"):
        return _price(entry, before, before)
    analysis.replacements[entry.layer] = replacement
    entry.action, entry.block, entry.reason = "replace", str(spec), f"rule '{rule}'"
    return _price(entry, before, after)


def _factored_entry(fac: FactoredSite, rule_match: tuple[int, Rule], analysis: Analysis) -> PlanEntry:
    """A conv-level rule on a factorised pair: planned as on the k×k conv with the pair's geometry, priced
    against the two convs it replaces (the activation between them goes too)."""
    composite = ConvSite(fac.label, fac.as_conv(), None, fac.a.is_stem, min(fac.a.calls, fac.b.calls),
                         fac.a.input_shape, fac.b.output_shape)
    rule = rule_match[1]
    named = any(rule.names_exactly(n) for n in (fac.a.name, fac.label))
    # a rule naming the pair's first conv names the site: planned as if it named the site's label
    as_named = (rule_match[0], Rule(rule.block, Selector(fac.label))) if named else rule_match
    entry = _conv_entry(composite, as_named, analysis)
    entry.convs, entry.shape, entry.rule = (fac.a.name, fac.b.name), fac.describe(), str(rule)
    before = modules_cost([fac.a.conv, fac.b.conv], [fac.a.input_shape, fac.b.input_shape])
    if entry.action != "replace":
        return _price(entry, before, before)
    entry.reason = f"rule '{rule}'"
    after = (entry.params_after, entry.paper_after, entry.macs_after)
    if _grows(entry, rule.block, before, after, named=named, what="the factorised pair"):
        analysis.replacements.pop(entry.layer, None)
        entry.block = None
        return _price(entry, before, before)
    return _price(entry, before, after)


def outside_scope(conv: nn.Conv2d) -> bool:
    """Whether a block that refuses ``conv`` merely does not aim at it: a 1×1 conv (k×k blocks leave it) or an
    already grouped conv such as a depthwise one (every block makes a *dense* conv cheaper). A default or
    wildcard rule skips such a conv; a dense k×k conv that a block refuses is a conflict (``cannot``)."""
    return min(conv.kernel_size) == 1 or conv.groups != 1


def price_conv(site: ConvSite, spec: BlockSpec, analysis: Analysis) -> tuple[PlanEntry, nn.Module | None]:
    """How a rule naming ``site`` exactly with the conv-level ``spec`` is planned: the priced entry (``replace``,
    or ``cannot`` with the reason) and the replacement module (None unless replaced). The block search prices
    its candidates with this, so its costs are the plan's by construction; ``analysis`` is left as it was."""
    entry = _conv_entry(site, (0, Rule(spec, Selector(site.name))), analysis)
    return entry, analysis.replacements.pop(entry.layer, None)


def price_pair(pair: PairSite, rule: Rule, analysis: Analysis) -> tuple[PlanEntry, nn.Module | None]:
    """How ``rule`` (a block-level spec whose selector matches ``pair``) is planned on the residual pair: the
    priced entry (``replace``, or ``cannot``/``skip`` with the reason) and the replacement module (None unless
    replaced). The candidate library prices its pair-level options with this, so its costs are the plan's by
    construction; ``analysis`` is left as it was."""
    entry = _pair_entry(pair, rule, analysis)
    return entry, analysis.replacements.pop(entry.layer, None)


def _grows(entry: PlanEntry, spec: BlockSpec, before: Cost, after: Cost, *, named: bool, what: str) -> bool:
    """Wildcard and default rules never make a layer bigger: such a layer is kept (True), with the reason.
    A rule that names the layer exactly still applies the block (False); build_plan warns about it."""
    if after[0] <= before[0] or named:
        return False
    entry.action = "skip"
    entry.reason = (f"{spec} here: {human(after[0])} params > {human(before[0])} of {what}; name the layer "
                    "to force it")
    return True


def _same_padded(spec: BlockSpec, conv: nn.Conv2d) -> nn.Module:
    block = SamePadded(str(spec), conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                       tuple(conv.dilation), bias=False)
    block = block.to(device=conv.weight.device, dtype=conv.weight.dtype)
    return block.train(conv.training)


def _pair_entry(pair: PairSite, rule: Rule, analysis: Analysis) -> PlanEntry:
    spec = rule.block
    gm = analysis.model
    between = [gm.get_submodule(n.target) for n in pair.between if n.op == "call_module"]
    entry = PlanEntry(pair.label, (pair.a.name, pair.b.name), "keep", rule=str(rule),
                      shape=f"{pair.a.describe()} + {pair.b.describe()}")
    before = modules_cost([pair.a.conv, *between, pair.b.conv],
                          [pair.a.input_shape, *[None] * len(between), pair.b.input_shape])
    layers = layers_between(gm, pair.between)
    reason = spec.pair_reason_with(pair.a.conv, pair.b.conv, layers)
    if reason is not None:
        entry.action, entry.reason = "cannot", reason
        return _price(entry, before, before)
    replacement = spec.build_pair_with(pair.a.conv, pair.b.conv, layers)
    if spec.reads_between:   # teacher init takes the rebuilt layers' weights (W's BatchNorm) from these
        entry.between = tuple(str(n.target) for n in pair.between if n.op == "call_module")
    mismatch = shape_mismatch(replacement, pair.a.input_shape, pair.b.output_shape)
    if mismatch is not None:
        entry.action, entry.reason = "cannot", mismatch
        return _price(entry, before, before)
    after = module_cost(replacement, pair.a.input_shape)
    named = rule.names_exactly(pair.a.name) or rule.names_exactly(pair.label)
    if _grows(entry, spec, before, after, named=named, what="the pair"):
        return _price(entry, before, before)
    analysis.replacements[entry.layer] = replacement
    entry.action, entry.block, entry.reason = "replace", str(spec), f"rule '{rule}'"
    return _price(entry, before, after)


def decide(analysis: Analysis, policy: Policy) -> tuple[list[PlanEntry], dict[int, int]]:
    """Entries in graph order, and how many layers each rule matched (by rule index)."""
    entries: list[PlanEntry] = []
    used: dict[int, int] = {i: 0 for i in range(len(policy.rules))}
    consumed: set[str] = set()
    for site in analysis.convs:
        if site.name in consumed:
            continue
        fac = analysis.factored_starting_at(site.name)
        if fac is not None:
            match = policy.first_match(site.name, fac.label, is_stem=site.is_stem)
            b_match = policy.first_match(fac.b.name, fac.label, is_stem=site.is_stem)
            # the pair is one site when its first conv (or its label) takes a conv-level rule that its second
            # conv does not contradict
            if match is not None and match[1].block.level == "conv" and (b_match is None or b_match[0] == match[0]):
                used[match[0]] += 1
                entries.append(_factored_entry(fac, match, analysis))
                consumed.add(fac.b.name)
                continue
        pair = analysis.pair_starting_at(site.name)
        names = (site.name, pair.block) if pair else (site.name,)
        match = policy.first_match(*names, is_stem=site.is_stem)
        if match is not None:
            used[match[0]] += 1
        if match is not None and pair is not None and match[1].block.level == "block" and site.calls == 1:
            b_match = policy.first_match(pair.b.name, pair.block, is_stem=pair.b.is_stem)
            if b_match is not None and b_match[0] == match[0]:
                entries.append(_pair_entry(pair, match[1], analysis))
                consumed.add(pair.b.name)
                continue
            entry = _conv_entry(site, None, analysis)
            entry.rule = str(match[1])
            entry.action = "cannot"
            other = f"rule '{b_match[1]}'" if b_match else "no rule"
            entry.reason = f"{match[1].block} needs the whole pair {pair.label}, but {pair.b.name} matched {other}"
            entries.append(entry)
            continue
        entries.append(_conv_entry(site, match, analysis))
    for fc in analysis.functional:
        entries.append(PlanEntry(fc.node_name, (), "cannot" if policy.changes_anything else "keep",
                                 reason="functional conv (F.conv2d) has no module to replace; make it an "
                                        "nn.Conv2d to let cheapconv replace it"))
    return entries, used


#: how many rules (or layers) an error message quotes: a generated policy may hold 10,000 rules
_QUOTED = 5


def _quoted(policy: Policy) -> str:
    """``policy`` as an error message quotes it: its first few rules in quotes, and how many more there are."""
    rules = policy.rules
    text = "; ".join(str(r) for r in rules[:_QUOTED])
    return f"'{text}'" + (f" (and {len(rules) - _QUOTED:,} more rules)" if len(rules) > _QUOTED else "")


def build_plan(analysis: Analysis, policy: Policy, *, model_name: str, strict: bool,
               totals_before: dict[str, int], stages: list[str], notes: list[str]) -> Plan:
    entries, used = decide(analysis, policy)
    notes = list(notes)
    names = ", ".join(s.name for s in analysis.convs[:4])
    unused = [rule for i, rule in enumerate(policy.rules) if rule.selector is not None and used[i] == 0]
    if unused and strict:
        raise PolicyMatchError(f"Under --strict, every rule must match: rule '{unused[0]}' matches no conv (conv "
                               f"names look like: {names}, ...). Fix the selector, or print the layer names with "
                               "--dry-run.")
    # One note per unused rule, up to a few: a long generated policy must not print thousands of warnings.
    notes += [f"rule '{rule}' matches no conv (conv names look like: {names}, ...)" for rule in unused[:5]]
    if len(unused) > 5:
        notes.append(f"{len(unused) - 5:,} more rules match no conv")
    if policy.changes_anything and not any(used[i] for i, r in enumerate(policy.rules) if r.block.level != "keep"):
        raise PolicyMatchError(
            f"The policy {_quoted(policy)} selects nothing in {model_name}: no rule that changes a block matches a "
            f"conv (conv names look like: {names}, ...). {nothing_replaced_advice(analysis)} Run with --dry-run "
            "to list every layer.")
    if policy.changes_anything and not any(e.action == "replace" for e in entries):
        notes.append(f"nothing was replaced in {model_name}. {nothing_replaced_advice(analysis)}")
    if strict and any(e.action == "cannot" for e in entries):
        cannot = [f"{e.layer}: {e.reason}" for e in entries if e.action == "cannot"]
        rows = "; ".join(cannot[:_QUOTED]) + (f"; and {len(cannot) - _QUOTED:,} more" if len(cannot) > _QUOTED else "")
        raise PolicyMatchError(f"Under --strict, every matched layer must take its block, but: {rows}. Change "
                               "those rules, or drop --strict to keep these layers as they are.")
    totals = dict(totals_before)
    dropped = totals.pop("dropped", {})
    for key, attr in (("params", "params"), ("paper", "paper"), ("macs", "macs")):
        delta = sum(getattr(e, f"{attr}_after") - getattr(e, f"{attr}_before") for e in entries)
        totals[f"{key}_after"] = totals[f"{key}_before"] + delta - dropped.get(key, 0)
    notes += _growth_notes(entries, totals, model_name)
    return Plan(model_name, str(policy), analysis.input_shape, "graph" if analysis.graph_mode else "module",
                entries, totals, stages, notes)


def _growth_notes(entries: list[PlanEntry], totals: dict[str, int], model_name: str) -> list[str]:
    """Say so when a named layer grows, and in one line when the student costs more than the teacher."""
    notes = []
    grown = [e.layer for e in entries if e.action == "replace" and e.params_after > e.params_before]
    if grown:
        notes.append(f"{len(grown)} named layer(s) get more parameters than they had ({', '.join(grown[:4])}"
                     f"{', ...' if len(grown) > 4 else ''}): applied because the rule names them")
    worse = [label for key, label in (("params", "parameters"), ("macs", "MACs"))
             if totals[f"{key}_after"] > totals[f"{key}_before"]]
    if worse:
        notes.append(f"the student has more {' and more '.join(worse)} than {model_name}")
    return notes


def prepare(model: nn.Module, *, example_input: torch.Tensor | list[torch.Tensor] | None = None,
            input_size: tuple[int, ...] | None = None, leaf_modules=(), stages=None):
    """Trace a copy of ``model`` (or fall back to a plain copy) and analyse it. Internal to plan/cheapen.

    ``example_input`` is a batch, a C×H×W image or a list of them
    (:func:`~cheapconv.models.inputs.as_example_batch`)."""
    # a detector's natural input, [image], is measured as the batch it stands for
    # Only the example's shape is read below (every pass is a shape_forward), so one made here lives on the
    # meta device: a large input_size (--input-size 3,9000,9000, even under --dry-run) allocates nothing.
    example_input = example_input_for(model, input_size, device="meta") if example_input is None else \
        as_example_batch(example_input)
    notes = []
    try:
        work = trace(model, leaf_modules)
        graph_mode = True
        # A student loaded from a file already carries taps (a rebuilt graph has lost feature_info and the
        # module paths that place new ones): keep them, and their stage names.
        old_stages = [t.stage for t in work.modules() if isinstance(t, Tap)]
        if old_stages and stages is None:
            stages = old_stages
    except TraceError as e:
        work = copy.deepcopy(model)
        graph_mode = False
        notes.append(f"Falling back to module replacement (no graph): {e}")
    notes += getattr(work, "cheapconv_trace_notes", [])
    analysis = analyse(work, example_input, graph_mode)
    declared = set(getattr(model, "cheapconv_stems", ()) or ())
    for site in analysis.convs:   # what the model itself calls its stem (ERFNet's downsamplers)
        site.is_stem = site.is_stem or site.name in declared
    if stages is None:
        stages = getattr(model, "cheapconv_stages", None) or find_stages(model, example_input)
    totals = {"params_before": count_params(model), "paper_before": count_params(model, "paper"),
              "macs_before": count_macs(model, tuple(example_input.shape[:1]) + tuple(example_input.shape[1:]))}
    # A traced graph keeps only the modules its (eval-mode) forward calls: train-only heads such as
    # GoogLeNet's auxiliary classifiers are not in the student. Their parameters leave with them.
    dropped = {"params": totals["params_before"] - count_params(work),
               "paper": totals["paper_before"] - count_params(work, "paper")}
    if dropped["params"] or dropped["paper"]:
        names = sorted({n for n, _ in model.named_children()} - {n for n, _ in work.named_children()})
        notes.append(f"tracing keeps only what forward uses: {', '.join(names[:4]) or 'some modules'} "
                     f"({dropped['paper']:,} parameters, paper convention) are not in the student")
    totals["dropped"] = dropped
    return analysis, list(stages), notes, totals


def plan(model: nn.Module, policy: str | Policy | BlockSpec, *,
         example_input: torch.Tensor | list[torch.Tensor] | None = None,
         input_size: tuple[int, ...] | None = None, strict: bool = False, leaf_modules=(),
         model_name: str | None = None) -> Plan:
    """Dry run of :func:`cheapconv.cheapen`: what each layer would become, and why, with costs.

    >>> from cheapconv.models import WideResNet
    >>> p = plan(WideResNet(16, 2), "G(4)")
    >>> len(p.replaced), p.totals["paper_before"] > p.totals["paper_after"]
    (11, True)
    """
    policy = parse_policy(policy)
    analysis, stages, notes, totals = prepare(model, example_input=example_input, input_size=input_size,
                                              leaf_modules=leaf_modules)
    result = build_plan(analysis, policy, model_name=model_name or type(model).__name__, strict=strict,
                        totals_before=totals, stages=stages, notes=notes)
    for note in result.notes:
        warnings.warn(note, stacklevel=2)
    return result
