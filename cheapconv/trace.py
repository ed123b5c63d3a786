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
frozen to the inference path (e.g. GoogLeNet's auxiliary heads are dropped from the graph).
"""

from __future__ import annotations

import copy
import functools
import inspect
import sys
from collections.abc import Iterable

import torch
from torch import fx, nn

from .errors import TraceError

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _cheapconv_leaf_types() -> tuple[type, ...]:
    from .blocks import Bottleneck, GroupedPointwise
    from .taps import Tap

    return (Tap, GroupedPointwise, Bottleneck)


@functools.lru_cache(maxsize=None)
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
        if isinstance(m, (nn.Conv2d, *_NORM_TYPES)):
            return True
        if not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and \
                _forward_reads_training(type(m)) and not _has_conv(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, leaf_modules: Iterable[type | str] = ()) -> fx.GraphModule:
    """Symbolically trace ``model`` (which is not modified) into a GraphModule with the same parameters.

    The result keeps the original module tree's names (``layer1.0.conv1``) and the original training flags.
    Raises :class:`TraceError` with advice when torch.fx cannot trace the model.
    """
    work = copy.deepcopy(model)
    flags = {name: m.training for name, m in work.named_modules()}
    work.eval()
    tracer = CheapTracer(leaf_modules)
    try:
        graph = tracer.trace(work)
    except Exception as e:  # noqa: BLE001 - fx raises many types; all mean "not traceable as is"
        raise TraceError(_trace_advice(model, e)) from e
    gm = fx.GraphModule(tracer.root, graph, model.__class__.__name__)
    for name, m in gm.named_modules():  # "" is the root; set flags one by one (train() would recurse)
        if name in flags:
            m.training = flags[name]
    return gm


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


def example_input_for(model: nn.Module, input_size: tuple[int, ...] | None = None) -> torch.Tensor:
    """A batch-1 zero input at ``input_size`` (C, H, W) or the model's native size."""
    from .models.zoo import default_input_size

    size = tuple(input_size) if input_size else default_input_size(model)
    param = next(iter(model.parameters()), None)
    kw = dict(device=param.device, dtype=param.dtype) if param is not None else {}
    if param is not None and not param.dtype.is_floating_point:
        kw["dtype"] = torch.float32
    return torch.zeros((1, *size), **kw)
