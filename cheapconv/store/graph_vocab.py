"""What a data-only graph may say: plain identifiers and a closed vocabulary of pure tensor computations.

A cheapconv file describes its architecture as data (:mod:`cheapconv.store.graph_codec`), and torch.fx turns that
description into Python source when the module is built. So every string from the file that reaches the
generated source must be a plain identifier or a dotted path of identifiers, and every callable the graph
names must come from the explicit lists below. The lists hold only *pure tensor computations*: functions
that read their arguments and return new values. Nothing here touches files, processes, threads or global
state (``torch.from_file``, ``torch.set_default_dtype``, ``torch.manual_seed``), calls another callable
(``operator.call``, ``torch.fork``, ``torch.vmap``, ``Tensor.apply_``), or reaches Python internals
(``getattr`` is limited to a few tensor attributes; no dunder is ever allowed). Tensor factories that take
a size (``torch.zeros``, ``torch.ones``, ``torch.empty``) are left out too: a traced model never needs them
and they are the shortest way to an allocation bomb.

The lists were made from what torch.fx records for every torchvision classification model and a sample of
timm families (``benchmarks/coverage/zoo.py``), plus the common pure operations around them. A model whose
graph needs something else is still saved: it falls back to the ``recipe`` storage kind.
"""

from __future__ import annotations

import builtins
import keyword
import math
import operator
import re
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FUNCTIONS", "GETATTR_NAMES", "METHODS", "NUMERIC_OPERATORS", "NotDescribable", "check_dotted",
           "check_identifier", "function_name", "resolve_function"]


class NotDescribable(ValueError):
    """A module, graph or description uses something outside the allow-lists (or beyond the limits)."""


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


def check_identifier(value: Any, what: str) -> str:
    """``value`` if it is a plain Python identifier (not a keyword, not a dunder); else raise."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value) or keyword.iskeyword(value) \
            or value.startswith("__"):
        raise NotDescribable(f"{what} {value!r} is not a plain identifier")
    return value


_PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,199}")


def check_dotted(value: Any, what: str) -> str:
    """``value`` if it is a dotted module path (``layer1.0.conv1``; torchvision's ``block1-0`` too).

    A part that is not an identifier reaches generated source only as a quoted string (torch.fx writes
    ``getattr(self, "block1-0")``), so letters, digits, ``_`` and ``-`` are safe; dunders never are."""
    if not isinstance(value, str) or not value or len(value) > 1000:
        raise NotDescribable(f"{what} {str(value)[:80]!r} is not a dotted module path")
    for part in value.split("."):
        if not _PATH_PART.fullmatch(part) or part.startswith("__") or keyword.iskeyword(part):
            raise NotDescribable(f"{what} {value[:80]!r} is not a dotted module path")
    return value


# --- functions -------------------------------------------------------------------------------------------------
_TORCH = (
    "abs", "add", "addcmul", "addcdiv", "addmm", "amax", "amin", "argmax", "argmin", "baddbmm", "bmm", "cat",
    "ceil", "chunk", "clamp", "clamp_max", "clamp_min", "clip", "concat", "concatenate", "conv2d", "cos", "cumsum",
    "div", "einsum", "eq", "erf", "exp", "flatten", "flip", "floor", "floor_divide", "gather", "ge", "gt",
    "hardswish", "index_select", "layer_norm", "group_norm", "batch_norm", "le", "log", "log_softmax", "logsumexp",
    "lt", "masked_fill", "matmul", "max", "maximum", "mean", "min", "minimum", "mm", "movedim", "mul", "narrow",
    "ne", "neg", "norm", "permute", "pow", "reciprocal", "relu", "reshape", "roll", "round", "rsqrt", "select",
    "sigmoid", "sign", "sin", "softmax", "split", "sqrt", "square", "squeeze", "stack", "std", "sub", "sum",
    "swapaxes", "tanh", "tensor_split", "transpose", "unbind", "unsqueeze", "var", "where", "zeros_like",
    "ones_like", "_assert",
)
_FUNCTIONAL = (
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d", "batch_norm",
    "conv1d", "conv2d", "conv_transpose2d", "dropout", "dropout1d", "dropout2d", "elu", "gelu", "group_norm",
    "hardsigmoid", "hardswish", "hardtanh", "instance_norm", "interpolate", "layer_norm", "leaky_relu", "linear",
    "log_softmax", "max_pool1d", "max_pool2d", "mish", "normalize", "pad", "pixel_shuffle", "pixel_unshuffle",
    "relu", "relu6", "scaled_dot_product_attention", "selu", "sigmoid", "silu", "softmax", "softplus", "tanh",
    "unfold", "fold",
)
#: operators on numbers and tensors; their operands may never be strings or containers (``"a" * 10**12``)
NUMERIC_OPERATORS = frozenset(getattr(operator, n) for n in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "matmul", "iadd", "isub",
    "imul", "itruediv", "ifloordiv", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "invert"))
_OPERATOR = tuple(f.__name__ for f in NUMERIC_OPERATORS) + ("getitem",)
_MATH = ("ceil", "floor", "sqrt", "log", "exp", "trunc", "isqrt")


def _collect() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for prefix, module, names in (("torch", torch, _TORCH), ("torch.nn.functional", F, _FUNCTIONAL),
                                  ("operator", operator, _OPERATOR), ("math", math, _MATH)):
        for name in names:
            fn = getattr(module, name, None)
            if fn is not None:
                table[f"{prefix}.{name}"] = fn
    table["builtins.getattr"] = builtins.getattr
    return table


#: qualified name -> callable, the only functions a data-only graph may call
FUNCTIONS: dict[str, Any] = _collect()
_NAME_OF: dict[int, str] = {}
for _name, _fn in FUNCTIONS.items():  # the first spelling wins: torch.relu before F.relu for the same object
    _NAME_OF.setdefault(id(_fn), _name)

#: the only attributes ``getattr`` may read, all plain tensor metadata
GETATTR_NAMES = frozenset({"shape", "dtype", "device", "ndim", "T", "mT", "is_cuda", "layout"})

#: tensor methods a graph may call (``x.view(...)``): shape changes and arithmetic, never ``apply_``,
#: ``map_``, ``register_hook``, ``backward``, ``storage``, ``numpy`` or anything with a leading underscore
METHODS = frozenset({
    "abs", "add", "add_", "amax", "amin", "argmax", "bmm", "chunk", "clamp", "clamp_", "clamp_min", "clone",
    "contiguous", "cumsum", "detach", "dim", "div", "div_", "exp", "expand", "expand_as", "flatten", "flip",
    "float", "gather", "half", "bfloat16", "index_select", "log", "masked_fill", "matmul", "max", "mean", "min",
    "movedim", "mul", "mul_", "narrow", "neg", "norm", "numel", "permute", "pow", "relu", "relu_", "reshape",
    "reshape_as", "roll", "rsqrt", "sigmoid", "sigmoid_", "size", "softmax", "split", "sqrt", "squeeze", "std",
    "sub", "sub_", "sum", "t", "tanh", "to", "transpose", "type_as", "unbind", "unflatten", "unfold", "unsqueeze",
    "var", "view", "view_as",
})


def function_name(fn: Any) -> str | None:
    """The qualified name under which ``fn`` is allowed, or None."""
    name = _NAME_OF.get(id(fn))
    return name if name is not None and FUNCTIONS[name] is fn else None


def resolve_function(qualified: Any) -> Any:
    """The allowed callable named ``qualified``; raise :class:`NotDescribable` for anything else."""
    fn = FUNCTIONS.get(qualified) if isinstance(qualified, str) else None
    if fn is None:
        raise NotDescribable(f"function {qualified!r} is outside the allow-list of pure tensor computations")
    return fn
