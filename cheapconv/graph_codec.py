"""A data-only description of an fx GraphModule, so a student loads without unpickling any code.

The description is JSON: the graph's nodes (op, target, arguments) and, for every leaf module the graph
calls, its type (from an allow-list: ``torch.nn`` layers, cheapconv's blocks, and a few torchvision and timm
layers that are fully determined by their constructor arguments) and constructor arguments.
Tensors (weights, buffers, ``get_attr`` parameters) travel separately in the state dict; the few that are not in
it (non-persistent buffers such as blur filters and position indices, constants captured by tracing) are
written into the description as raw bytes of a declared dtype and shape.

Decoding resolves functions only from an allow-list of modules (``torch``, ``torch.nn.functional``,
``operator``, ``math``, and ``getattr``), and only objects defined there, so a crafted file cannot name
``torch.load``, ``os.system`` or any other callable with side effects. Anything the encoder cannot describe
this way raises :class:`NotDescribable`; the caller then falls back to another storage kind.
"""

from __future__ import annotations

import base64
import builtins
import importlib
import inspect
import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

FORMAT = 1


class NotDescribable(ValueError):
    """The module or graph uses something outside the allow-lists."""


# --- modules ----------------------------------------------------------------------------------------------
_TORCH_TYPES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm, nn.ReLU, nn.ReLU6,
    nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.MaxPool1d, nn.MaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
    nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Upsample,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.MultiheadAttention,
)


def _mha_args(m: nn.MultiheadAttention) -> dict[str, Any]:
    return dict(embed_dim=m.embed_dim, num_heads=m.num_heads, dropout=m.dropout,
                bias=m.in_proj_bias is not None, add_bias_kv=m.bias_k is not None, add_zero_attn=m.add_zero_attn,
                kdim=m.kdim, vdim=m.vdim, batch_first=m.batch_first)


def _timm_norm_args(m: nn.Module) -> dict[str, Any]:  # timm's LayerNorm, LayerNorm2d (num_channels, eps, affine)
    args = dict(num_channels=m.normalized_shape[0], eps=m.eps, affine=m.elementwise_affine)
    if m.elementwise_affine:
        args["bias"] = m.bias is not None
    return args


def _bn_args(m: nn.Module) -> dict[str, Any]:
    return dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                track_running_stats=m.track_running_stats)


@dataclass(frozen=True)
class _Recipe:
    """How to rebuild an allow-listed class: constructor arguments (default: the constructor's parameters
    read from same-named attributes), children replaced by their own descriptions, plain attributes set after
    construction (timm's import-time ``_fast_norm`` flag)."""

    args: Callable[[nn.Module], dict[str, Any]] | None = None
    children: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()


#: Classes outside torch.nn that a data-only graph may name, by defining module and qualified name. Each was
#: read to check that its forward depends only on what its recipe restores. They are resolved lazily:
#: describing needs no import (an instance's class is already imported) and building imports only the
#: module named here, so ``import cheapconv`` never imports torchvision or timm.
_EXTRA_TYPES: dict[str, _Recipe] = {
    "torchvision.ops.stochastic_depth.StochasticDepth": _Recipe(),
    "torchvision.models.convnext.LayerNorm2d": _Recipe(),
    "timm.layers.norm.LayerNorm": _Recipe(_timm_norm_args, attrs=("_fast_norm",)),
    "timm.layers.norm.LayerNorm2d": _Recipe(_timm_norm_args, attrs=("_fast_norm",)),
    "timm.layers.norm.GroupNorm1": _Recipe(lambda m: dict(num_channels=m.num_channels, eps=m.eps, affine=m.affine),
                                          attrs=("_fast_norm",)),
    "timm.layers.norm_act.BatchNormAct2d": _Recipe(_bn_args, children=("drop", "act")),
    "timm.layers.drop.DropPath": _Recipe(),
    # VGG's conv head: built small, then every child replaced by its own description (fc1 may be cheap)
    "timm.models.vgg.ConvMlp": _Recipe(lambda m: dict(in_features=1, out_features=1, kernel_size=m.input_kernel_size),
                                       children=("fc1", "act1", "drop", "fc2", "act2")),
    "timm.layers.conv2d_same.Conv2dSame": _Recipe(),
    "timm.layers.activations.Swish": _Recipe(),
    "timm.layers.activations.Mish": _Recipe(),
    "timm.layers.activations.Sigmoid": _Recipe(),
    "timm.layers.activations.Tanh": _Recipe(),
    "timm.layers.activations.HardSwish": _Recipe(),
    "timm.layers.activations.HardSigmoid": _Recipe(),
    "timm.layers.activations.GELU": _Recipe(),
    "timm.layers.activations.GELUTanh": _Recipe(),
    "timm.layers.activations.QuickGELU": _Recipe(),
}
_TORCH_RECIPES: dict[type, _Recipe] = {nn.MultiheadAttention: _Recipe(_mha_args)}


def _module_types() -> dict[str, type[nn.Module]]:
    from .blocks import BLOCK_MODULES
    from .taps import Tap

    types: dict[str, type[nn.Module]] = {f"torch.nn.{cls.__name__}": cls for cls in _TORCH_TYPES}
    for cls in (*BLOCK_MODULES, Tap):
        types[f"cheapconv.{cls.__name__}"] = cls
    return types


def _key_of(module: nn.Module) -> tuple[str, _Recipe] | None:
    cls = type(module)
    key = next((k for k, c in _module_types().items() if cls is c), None)
    if key is not None:
        return key, _TORCH_RECIPES.get(cls, _Recipe())
    key = f"{cls.__module__}.{cls.__qualname__}"
    recipe = _EXTRA_TYPES.get(key)
    # the name must lead back to this very class (a look-alike defined elsewhere does not qualify)
    if recipe is not None and getattr(sys.modules.get(cls.__module__), cls.__qualname__, None) is cls:
        return key, recipe
    return None


def _resolve_type(key: Any) -> tuple[type[nn.Module], _Recipe]:
    types = _module_types()
    if key in types:
        return types[key], _TORCH_RECIPES.get(types[key], _Recipe())
    recipe = _EXTRA_TYPES.get(key) if isinstance(key, str) else None
    if recipe is None:
        raise NotDescribable(f"unknown module type {key!r}")
    mod_name, _, name = key.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod_name), name, None)
    except ImportError as e:
        raise NotDescribable(f"module type {key!r} needs {mod_name.split('.')[0]}, which cannot be imported "
                             f"here ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise NotDescribable(f"{key!r} is not a module class in the installed {mod_name.split('.')[0]}")
    return cls, recipe


_JSON_SCALARS = (bool, int, float, str, type(None))


def _plain(value: Any) -> Any:
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, (tuple, list, torch.Size)):
        return [_plain(v) for v in value]
    raise NotDescribable(f"constructor value of type {type(value).__name__}")


def _constructor_args(module: nn.Module, recipe: _Recipe = _Recipe()) -> dict[str, Any]:
    if hasattr(module, "init_args"):  # cheapconv blocks record their own
        return {k: _plain(v) for k, v in module.init_args.items()}
    if recipe.args is not None:
        return {k: _plain(v) for k, v in recipe.args(module).items()}
    args = {}
    for name, param in inspect.signature(type(module).__init__).parameters.items():
        if name in ("self", "device", "dtype") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and (getattr(module, "bias", None) is None or isinstance(module.bias, torch.Tensor)):
            args[name] = getattr(module, "bias", None) is not None
        elif hasattr(module, name):
            args[name] = _plain(getattr(module, name))
    return args


def describe_module(module: nn.Module) -> dict[str, Any]:
    found = _key_of(module)
    if found is None:
        raise NotDescribable(f"module type {type(module).__module__}.{type(module).__qualname__}")
    key, recipe = found
    spec: dict[str, Any] = {"type": key, "args": _constructor_args(module, recipe)}
    if recipe.children:
        spec["children"] = {name: describe_module(getattr(module, name)) for name in recipe.children}
    if recipe.attrs:
        spec["attrs"] = {name: _plain(getattr(module, name)) for name in recipe.attrs}
    rebuilt = build_module(spec)
    # The rebuilt module must be indistinguishable: same repr (children included) and the same tensors by
    # name and shape.
    same_tensors = {k: v.shape for k, v in rebuilt.state_dict().items()} == \
                   {k: v.shape for k, v in module.state_dict().items()}
    if repr(rebuilt) != repr(module) or not same_tensors or \
            any(getattr(rebuilt, a) != getattr(module, a) for a in recipe.attrs):
        raise NotDescribable(f"module {key} cannot be rebuilt from its constructor arguments")
    return spec


def build_module(spec: dict[str, Any]) -> nn.Module:
    cls, recipe = _resolve_type(spec.get("type"))
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["args"].items()}
    module = cls(**args)
    children = spec.get("children", {})
    if set(children) - set(recipe.children) or set(spec.get("attrs", {})) - set(recipe.attrs):
        raise NotDescribable(f"{spec['type']!r} takes no such children or attributes")
    for name, child in children.items():
        setattr(module, name, build_module(child))
    for name, value in spec.get("attrs", {}).items():
        if not isinstance(value, _JSON_SCALARS):
            raise NotDescribable(f"attribute {name!r} of {spec['type']!r} is not a plain value")
        setattr(module, name, value)
    return module


# --- functions ----------------------------------------------------------------------------------------------
_FUNCTION_MODULES = {"torch", "torch.nn.functional", "operator", "math", "torch._C._nn", "torch.functional",
                     "torch._C._VariableFunctions", "torch._C._fft", "torch._C._linalg", "torch._C._special"}
_OBJECT_MODULES = _FUNCTION_MODULES | {"torch._C", "_operator", None}
_BUILTINS = {"getattr": builtins.getattr}


def encode_function(fn: Any) -> str:
    if fn is builtins.getattr:
        return "builtins.getattr"
    name = getattr(fn, "__name__", None)
    for mod_name in ("operator", "math", "torch.nn.functional", "torch"):
        mod = {"operator": operator, "math": math, "torch": torch,
               "torch.nn.functional": torch.nn.functional}[mod_name]
        if name and getattr(mod, name, None) is fn:
            return f"{mod_name}.{name}"
    qual = fx.node._get_qualified_name(fn)
    resolve_function(qual)  # raises NotDescribable if it would not decode
    return qual


def resolve_function(qualified: str) -> Any:
    mod_name, _, attr = qualified.rpartition(".")
    if mod_name == "builtins":
        if attr not in _BUILTINS:
            raise NotDescribable(f"builtin {attr!r} is not allowed")
        return _BUILTINS[attr]
    if mod_name not in _FUNCTION_MODULES or attr.startswith("__"):
        raise NotDescribable(f"function {qualified!r} is outside the allow-list")
    obj = getattr(importlib.import_module(mod_name), attr, None)
    if obj is None or not callable(obj) or isinstance(obj, type) or inspect.ismodule(obj):
        raise NotDescribable(f"{qualified!r} is not an allowed function")
    if getattr(obj, "__module__", None) not in _OBJECT_MODULES:
        raise NotDescribable(f"{qualified!r} is defined in {obj.__module__!r}, outside the allow-list")
    return obj


# --- arguments ----------------------------------------------------------------------------------------------
def _encode_arg(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, _JSON_SCALARS):
        return a if not (isinstance(a, float) and not math.isfinite(a)) else {"float": repr(a)}
    if isinstance(a, tuple):
        return {"tuple": [_encode_arg(v) for v in a]}
    if isinstance(a, list):
        return [_encode_arg(v) for v in a]
    if isinstance(a, dict):
        return {"dict": [[k, _encode_arg(v)] for k, v in a.items()]}
    if isinstance(a, slice):
        return {"slice": [_encode_arg(a.start), _encode_arg(a.stop), _encode_arg(a.step)]}
    if a is Ellipsis:
        return {"ellipsis": True}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).removeprefix("torch.")}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    if isinstance(a, torch.memory_format):
        return {"memory_format": str(a).removeprefix("torch.")}
    raise NotDescribable(f"graph argument of type {type(a).__name__}")


def _decode_arg(a: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(a, list):
        return [_decode_arg(v, env) for v in a]
    if not isinstance(a, dict):
        return a
    (kind, value), = a.items()
    if kind == "node":
        return env[value]
    if kind == "tuple":
        return tuple(_decode_arg(v, env) for v in value)
    if kind == "dict":
        return {k: _decode_arg(v, env) for k, v in value}
    if kind == "slice":
        return slice(*(_decode_arg(v, env) for v in value))
    if kind == "ellipsis":
        return Ellipsis
    if kind == "float":
        return float(value)
    if kind in ("dtype", "memory_format"):
        obj = getattr(torch, value, None)
        if not isinstance(obj, (torch.dtype, torch.memory_format)):
            raise NotDescribable(f"unknown {kind} {value!r}")
        return obj
    if kind == "device":
        return torch.device(value)
    raise NotDescribable(f"unknown argument kind {kind!r}")


# --- whole graphs -------------------------------------------------------------------------------------------
def describe_graph_module(gm: fx.GraphModule) -> dict[str, Any]:
    """JSON-able description of ``gm`` (raises :class:`NotDescribable`)."""
    state = gm.state_dict(keep_vars=True)
    modules, attrs, nodes = {}, {}, []
    inlined = 0
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_module":
            if target not in modules:
                modules[target] = describe_module(gm.get_submodule(target))
        elif node.op == "call_function":
            target = encode_function(target)
        elif node.op == "get_attr":
            value = state.get(target)
            inline = value is None
            if inline:  # a non-persistent buffer (blur filters, position indices) or a traced constant
                value = _tensor_attr(gm, target)
                if value is None:
                    raise NotDescribable(f"get_attr {target!r} is not a tensor")
            attrs[target] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                             "parameter": isinstance(value, nn.Parameter), "requires_grad": value.requires_grad}
            if inline:
                inlined += value.numel() * value.element_size()
                if inlined > _MAX_INLINE_BYTES:
                    raise NotDescribable(f"tensors outside the state dict exceed {_MAX_INLINE_BYTES} bytes")
                raw = value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                attrs[target]["data"] = base64.b64encode(raw).decode("ascii")
        elif node.op == "call_method" and (not isinstance(target, str) or target.startswith("_")):
            raise NotDescribable(f"method {target!r}")
        nodes.append({"name": node.name, "op": node.op, "target": target,
                      "args": _encode_arg(node.args), "kwargs": _encode_arg(node.kwargs)})
    return {"format": FORMAT, "class_name": type(gm).__name__, "modules": modules, "attrs": attrs, "nodes": nodes}


def build_graph_module(desc: dict[str, Any]) -> fx.GraphModule:
    """Rebuild a GraphModule (random weights: load the state dict afterwards)."""
    if desc.get("format") != FORMAT:
        raise NotDescribable(f"graph description format {desc.get('format')!r} (this cheapconv reads {FORMAT})")
    root: dict[str, Any] = {name: build_module(spec) for name, spec in desc["modules"].items()}
    inline = []
    for name, a in desc["attrs"].items():
        dtype = getattr(torch, a["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise NotDescribable(f"unknown dtype {a['dtype']!r}")
        if "data" in a:
            t = _decode_tensor(a["data"], a["shape"], dtype)
            inline.append(name)
        else:
            t = torch.zeros(a["shape"], dtype=dtype)
        root[name] = nn.Parameter(t, requires_grad=a["requires_grad"]) if a["parameter"] else t
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for n in desc["nodes"]:
        op, target = n["op"], n["target"]
        if op not in ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output"):
            raise NotDescribable(f"unknown node op {op!r}")
        if op == "call_function":
            target = resolve_function(target)
        if op == "call_method" and (not isinstance(target, str) or target.startswith("_")
                                    or not hasattr(torch.Tensor, target)):
            raise NotDescribable(f"method {target!r} is not a tensor method")
        args = _decode_arg(n["args"], env)
        kwargs = _decode_arg(n["kwargs"], env)
        node = graph.create_node(op, target, tuple(args) if isinstance(args, list) else args, kwargs,
                                 name=n["name"])
        env[n["name"]] = node
    graph.lint()
    class_name = "".join(ch for ch in str(desc.get("class_name", "Student")) if ch.isalnum() or ch == "_")
    gm = fx.GraphModule(root, graph, class_name or "Student")
    for name in inline:  # values travel in the description, not the state dict: keep them out of it
        parent_name, _, leaf = name.rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        parent.register_buffer(leaf, getattr(parent, leaf), persistent=False)
    return gm


#: tensors outside the state dict (non-persistent buffers, traced constants) are written into the
#: description itself, up to this many bytes in all
_MAX_INLINE_BYTES = 16 * 2**20


def _tensor_attr(gm: nn.Module, target: str) -> torch.Tensor | None:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) and not isinstance(obj, nn.Parameter) else None


def _decode_tensor(data: Any, shape: Any, dtype: torch.dtype) -> torch.Tensor:
    try:
        raw = base64.b64decode(data, validate=True)
        count = math.prod(int(d) for d in shape)
    except (ValueError, TypeError) as e:
        raise NotDescribable(f"malformed inline tensor ({e})") from None
    if count * torch.empty((), dtype=dtype).element_size() != len(raw):
        raise NotDescribable("inline tensor data does not match its shape and dtype")
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(tuple(int(d) for d in shape)).clone()
