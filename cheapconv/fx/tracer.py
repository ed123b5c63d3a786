"""torch.fx tracing with the leaf modules cheapconv needs, and errors that teach how to fix a model.

What is a leaf (traced as one ``call_module`` node, never looked into):

* everything torch.fx already treats as a leaf (``torch.nn`` layers except containers);
* every ``nn.Conv2d`` subclass (timm's ``Conv2dSame``, weight-standardised convs, ...): cheapconv replaces
  convs as modules, so it must see them as modules;
* normalisation layers (``BatchNorm*``, ``GroupNorm``, ``LayerNorm`` and their subclasses such as timm's
  ``BatchNormAct2d``);
* cheapconv's own blocks and taps;
* modules without convs whose ``forward`` branches on ``self.training`` (drop-path, stochastic depth, ...):
  tracing through them would freeze one branch into the graph;
* timm's own registered leaf modules and functions, when timm is imported;
* whatever the caller names in ``leaf_modules`` (classes, or qualified module names).

Models are traced in eval mode: Python control flow on ``self.training`` inside traced-through modules is
frozen to the inference path (e.g. GoogLeNet's auxiliary heads are dropped from the graph). Two repairs
keep the training behaviour where they can:

* functional dropout written ``F.dropout(x, p, training=self.training)`` (timm's classifier heads) would be
  frozen off; such calls become ``nn.Dropout`` modules, which follow the model's train/eval flag;
* the model is traced a second time in train mode and the two graphs are compared; where they still
  differ (auxiliary heads, functional stochastic depth) the GraphModule carries a note saying where
  (``cheapconv_trace_notes``; :func:`cheapconv.cheapen` shows it as a warning).

When fx cannot trace a module, the innermost module whose ``forward`` failed becomes a leaf (by class) and
tracing is retried, so one untraceable block costs only the graph inside that block: its convs are still
found and replaced as modules (see :mod:`cheapconv.fx.analysis`). Only when the failure is in the root's own
``forward`` does :func:`trace` raise :class:`TraceError`. The classes marked this way are listed in
``cheapconv_auto_leaves`` on the result.
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
import re
import sys
import types
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..blocks import BLOCK_MODULES
from ..errors import TraceError
from .attributes import keep_through_copies
from .ops import NORM_TYPES
from .tap import Tap


def _cheapconv_leaf_types() -> tuple[type, ...]:
    return (Tap, *BLOCK_MODULES)


@functools.cache
def _forward_reads_training(cls: type) -> bool:
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "self.training" in src or "training=" in src


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _timm_leaves() -> tuple[tuple[type, ...], tuple]:
    """timm's registered leaf modules and autowrapped functions (only if timm is already imported)."""
    if "timm" not in sys.modules:
        return (), ()
    try:
        from timm.layers import _fx as timm_fx  # private, so guarded: absence just means fewer leaves
    except Exception:  # noqa: BLE001
        return (), ()
    leaves = tuple(getattr(timm_fx, "_leaf_modules", ()) or ())
    funcs = tuple(getattr(timm_fx, "_autowrap_functions", ()) or ())
    return leaves, funcs


class CheapTracer(fx.Tracer):
    """An fx tracer whose leaves are described in the module docstring."""

    def __init__(self, leaf_modules: Iterable[type | str] = ()):
        timm_leaf_types, timm_funcs = _timm_leaves()
        super().__init__(autowrap_functions=timm_funcs)
        leaf_modules = list(leaf_modules)
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type)) + timm_leaf_types
        self.leaf_names = {m for m in leaf_modules if isinstance(m, str)}
        self.builtin_leaves = _cheapconv_leaf_types()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types + self.builtin_leaves):
            return True
        if type(m).__name__ in self.leaf_names:
            return True
        if isinstance(m, (nn.Conv2d, *NORM_TYPES)):
            return True
        if not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and \
                _forward_reads_training(type(m)) and not _has_conv(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, leaf_modules: Iterable[type | str] = ()) -> fx.GraphModule:
    """Symbolically trace ``model`` (which is not modified) into a GraphModule with the same parameters.

    The result keeps the original module tree's names (``layer1.0.conv1``) and the original training flags.
    Modules that fx cannot trace become leaves automatically (see the module docstring). Raises
    :class:`TraceError` with advice when the model's own ``forward`` cannot be traced.
    """
    work = copy.deepcopy(model)
    _trace_instance_forward(work)
    flags = {name: m.training for name, m in work.named_modules()}
    leaves = list(leaf_modules)
    auto: list[type] = []
    # cheapconv calls models as model(x): optional arguments (mask=None, return_dict=None) are fixed at their
    # defaults, or fx would trace them as inputs and follow the branch for a given value
    concrete = _optional_args(work) or None
    while True:
        work.eval()
        tracer = CheapTracer([*leaves, *auto])
        try:
            graph = tracer.trace(work, concrete_args=concrete)
            break
        except Exception as e:  # noqa: BLE001 - fx raises many types; all mean "not traceable as is"
            culprit = _failing_module_type(work, e, tracer)
            if culprit is None or culprit in auto or len(auto) >= _MAX_AUTO_LEAVES:
                raise TraceError(_trace_advice(model, e)) from e
            auto.append(culprit)
    if concrete:
        _drop_fixed_inputs(graph)
    gm = fx.GraphModule(tracer.root, graph, model.__class__.__name__)
    notes = []
    if auto:
        names = ", ".join(c.__name__ for c in auto)
        notes.append(f"fx could not trace inside {names}, so it is called as a leaf module (pass "
                     f"leaf_modules=[{names}] to say so yourself): its convs are still replaced one by one, "
                     "but residual pairs inside it are not found")
    notes += _follow_training_flag(gm, work, [*leaves, *auto], flags, concrete)
    for name, m in gm.named_modules():  # "" is the root; set flags one by one (train() would recurse)
        if name in flags:
            m.training = flags[name]
    gm.cheapconv_auto_leaves = list(auto)
    gm.cheapconv_trace_notes = notes
    keep_through_copies(gm)
    return gm


_MAX_AUTO_LEAVES = 32
_DROPOUTS = {F.dropout: nn.Dropout, F.dropout1d: nn.Dropout1d, F.dropout2d: nn.Dropout2d,
             F.dropout3d: nn.Dropout3d, F.alpha_dropout: nn.AlphaDropout,
             F.feature_alpha_dropout: nn.FeatureAlphaDropout}
_DROPOUT_CONTAINER = "cheapconv_dropout"


def _trace_instance_forward(work: nn.Module) -> None:
    """fx traces ``type(root).forward``; a model whose ``forward`` was replaced on the instance (Cadene's
    pretrainedmodels bind ``forward``/``features``/``logits`` to each model) would be traced with its class's
    forward instead. Give the private copy a subclass whose forward is the instance's."""
    bound = work.__dict__.get("forward")
    if isinstance(bound, types.MethodType) and bound.__self__ is work:
        cls = type(work)
        work.__class__ = type(cls.__name__, (cls,), {"forward": bound.__func__, "__module__": cls.__module__})


def _optional_args(model: nn.Module) -> dict[str, Any]:
    """``forward``'s parameters after the input that have simple defaults (``mask=None``, ...).

    cheapconv calls a model as ``model(x)``, so tracing fixes them at their defaults: traced as inputs, fx
    would follow the branch for a given value (``if mask is not None``) or fail on Python logic over them."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params[1:] if p.kind in kinds and
            p.default is not inspect.Parameter.empty and isinstance(p.default, (bool, int, float, str, type(None)))}


_GUARDS = {torch._assert, operator.eq, operator.ne, getattr(fx._symbolic_trace, "_assert_is_none", None)}


def _drop_fixed_inputs(graph: fx.Graph) -> None:
    """Remove the inputs that tracing fixed, with the guards fx added for them, so the student's
    ``forward`` takes the image only. An input that feeds real computation stays (with its default)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for ph in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        closure, todo = set(), [ph]
        while todo:
            n = todo.pop()
            if n not in closure:
                closure.add(n)
                todo.extend(n.users)
        if any(n is not ph and (n.op != "call_function" or n.target not in _GUARDS) for n in closure):
            continue
        for n in sorted(closure, key=order.get, reverse=True):
            graph.erase_node(n)
    graph.lint()


def _failing_module_type(root: nn.Module, error: Exception, tracer: fx.Tracer) -> type | None:
    """The class of the innermost traced-through module whose code raised ``error`` (not the root)."""
    ids = {id(m) for m in root.modules()}
    tb, found = error.__traceback__, None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and owner is not root and id(owner) in ids and \
                not isinstance(owner, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            found = owner
        tb = tb.tb_next
    if found is None or tracer.is_leaf_module(found, ""):
        return None
    return type(found)


def _dropout_call(node: fx.Node) -> dict | None:
    """``{p, training, inplace}`` of a functional dropout node, or None."""
    if node.op != "call_function" or node.target not in _DROPOUTS:
        return None
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    args = dict(bound.arguments)
    if not all(isinstance(args[k], (bool, int, float)) for k in ("p", "training", "inplace")):
        return None
    return args


def _structure(graph: fx.Graph) -> list[tuple]:
    """What a graph computes, for comparing two traces: ops and targets, without attribute reads (which
    compute nothing) and with fx's numbering of tensor constants removed (it counts per tracer root)."""
    out = []
    for n in graph.nodes:
        if n.op in ("placeholder", "output") or (n.op == "call_function" and n.target is getattr):
            continue
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", repr(n.target))
        if n.op == "get_attr" and re.fullmatch(r"_tensor_constant\d+", target):
            target = "_tensor_constant"
        out.append((n.op, target))
    return out


def _follow_training_flag(gm: fx.GraphModule, work: nn.Module, leaves: list, flags: dict[str, bool],
                          concrete: dict[str, Any] | None = None) -> list[str]:
    """Make dropout calls frozen by eval-mode tracing follow the flag again; say where train mode differs.

    A second trace in train mode tells which functional dropout calls read ``self.training`` (their
    ``training`` argument flips): those become ``nn.Dropout`` modules, which start with the training flag
    of the module that made the call (entered into ``flags``). Explicit ``training=False`` stays."""
    work.train()
    try:
        train_graph = CheapTracer(leaves).trace(work, concrete_args=concrete)
        if concrete:
            _drop_fixed_inputs(train_graph)
    except Exception:  # noqa: BLE001 - the eval graph stands; nothing to compare with
        return []
    finally:
        work.eval()
    eval_drops = [n for n in gm.graph.nodes if _dropout_call(n) is not None]
    train_drops = [n for n in train_graph.nodes if _dropout_call(n) is not None]
    if len(eval_drops) == len(train_drops):
        container = None
        for i, (node, twin) in enumerate(zip(eval_drops, train_drops, strict=True)):
            a, b = _dropout_call(node), _dropout_call(twin)
            if a["training"] or not b["training"] or node.target is not twin.target:
                continue
            if container is None:
                container = nn.ModuleDict()
                gm.add_module(_DROPOUT_CONTAINER, container)
            container[str(i)] = _DROPOUTS[node.target](p=float(a["p"]), inplace=bool(a["inplace"]))
            owner = module_path_of(node)
            flags[_DROPOUT_CONTAINER] = flags[""]
            flags[f"{_DROPOUT_CONTAINER}.{i}"] = flags.get(owner[-1] if owner else "", flags[""])
            for graph, n in ((gm.graph, node), (train_graph, twin)):
                with graph.inserting_after(n):
                    new = graph.call_module(f"{_DROPOUT_CONTAINER}.{i}", (n.args[0] if n.args else
                                                                         n.kwargs["input"],))
                new.meta = dict(n.meta)
                n.replace_all_uses_with(new)
                graph.erase_node(n)
        if container is not None:
            gm.recompile()
    ev, tr = _structure(gm.graph), _structure(train_graph)
    if ev == tr:
        return []
    i = next((k for k, (x, y) in enumerate(zip(ev, tr, strict=False)) if x != y), min(len(ev), len(tr)))
    nodes = [n for n in train_graph.nodes if n.op not in ("placeholder", "output")]
    where = module_path_of(nodes[i]) if i < len(nodes) else ()
    place = f" (first difference in {where[-1]})" if where and where[-1] else ""
    return [f"in train mode {type(work).__name__}'s forward takes another path than in eval mode{place}, "
            "e.g. auxiliary heads or functional stochastic depth; the traced graph follows the eval path in "
            "both modes"]


def _trace_advice(model: nn.Module, error: Exception) -> str:
    where = ""
    tb = error.__traceback__
    while tb is not None:  # the innermost frame inside the user's model code tells where tracing broke
        module = tb.tb_frame.f_globals.get("__name__", "")
        if not module.startswith(("torch", "cheapconv")):
            where = f" (in {tb.tb_frame.f_code.co_name}, {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"torch.fx cannot trace {type(model).__name__}{where}: {first}. This usually means Python control flow "
        "that depends on tensor values. Mark the module that contains it as a leaf, so fx calls it without "
        "looking inside: cheapen(model, policy, leaf_modules=[ThatModuleClass]) or "
        "`--leaf ThatModuleClass` on the command line. Conv-level blocks still work without a graph "
        "(module replacement); block-level blocks (B, BG) need one."
    )


def is_traceable(model: nn.Module, leaf_modules: Iterable[type | str] = ()) -> bool:
    try:
        trace(model, leaf_modules)
    except TraceError:
        return False
    return True


def module_path_of(node: fx.Node) -> tuple[str, ...]:
    """The qualified names of the modules that were executing when ``node`` was recorded (outermost first)."""
    stack = node.meta.get("nn_module_stack") or {}
    return tuple(v[0] if isinstance(v, tuple) else k for k, v in stack.items())
