"""The leaf modules a data-only graph may call: an allow-list of types and how to rebuild each from data.

A module is described by its type's key (``torch.nn.Conv2d``, ``cheapconv.Grouped``, or a fully qualified name
from :data:`_EXTRA_TYPES`) and its constructor arguments, plus, for a few types, its children and plain
attributes. :func:`describe_module` refuses what it cannot rebuild exactly; :func:`build_module` trusts nothing
in a description (see the README's "Security model"): the type must be allow-listed, argument names plain
identifiers, values short JSON scalars or lists, counts that drive Python loops bounded. The graph around the
modules is :mod:`cheapconv.store.graph_codec`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..blocks import BLOCK_MODULES
from ..fx.tap import Tap
from .graph_vocab import NotDescribable, check_identifier

__all__ = ["JSON_SCALARS", "build_module", "describe_module", "module_types"]

#: the plain values a description holds (constructor arguments, attributes, graph arguments)
JSON_SCALARS = (bool, int, float, str, type(None))

_TORCH_TYPES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm, nn.ReLU, nn.ReLU6,
    nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.Identity, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.MaxPool1d, nn.MaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
    nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Upsample,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.MultiheadAttention, nn.Unfold, nn.Fold,
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


def _conv_args(m: nn.Module, first: str = "in_channels") -> dict[str, Any]:
    """A conv's geometry; ``padding`` as a tuple, so timm's 'SAME' variants take it as is (their run-time
    padding flag, ``same_pad``, is restored as an attribute)."""
    return {first: m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size, "stride": m.stride,
            "padding": m.padding, "dilation": m.dilation, "groups": m.groups, "bias": m.bias is not None}


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
    "timm.layers.std_conv.StdConv2d": _Recipe(lambda m: _conv_args(m, "in_channel"), attrs=("eps",)),
    "timm.layers.std_conv.StdConv2dSame": _Recipe(lambda m: _conv_args(m, "in_channel"), attrs=("eps", "same_pad")),
    "timm.layers.std_conv.ScaledStdConv2d": _Recipe(_conv_args, attrs=("eps", "scale", "gain_init")),
    "timm.layers.std_conv.ScaledStdConv2dSame": _Recipe(_conv_args, attrs=("eps", "scale", "gain_init", "same_pad")),
    "timm.layers.norm_act.LayerNormAct2d": _Recipe(_timm_norm_args, children=("drop", "act"), attrs=("_fast_norm",)),
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


def module_types() -> dict[str, type[nn.Module]]:
    types: dict[str, type[nn.Module]] = {f"torch.nn.{cls.__name__}": cls for cls in _TORCH_TYPES}
    for cls in (*BLOCK_MODULES, Tap):
        types[f"cheapconv.{cls.__name__}"] = cls
    return types


def _key_of(module: nn.Module) -> tuple[str, _Recipe] | None:
    cls = type(module)
    key = next((k for k, c in module_types().items() if cls is c), None)
    if key is not None:
        return key, _TORCH_RECIPES.get(cls, _Recipe())
    key = f"{cls.__module__}.{cls.__qualname__}"
    recipe = _EXTRA_TYPES.get(key)
    # the name must lead back to this very class (a look-alike defined elsewhere does not qualify)
    if recipe is not None and getattr(sys.modules.get(cls.__module__), cls.__qualname__, None) is cls:
        return key, recipe
    return None


def _resolve_type(key: Any) -> tuple[type[nn.Module], _Recipe]:
    types = module_types()
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



def _plain(value: Any) -> Any:
    if isinstance(value, JSON_SCALARS):
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
    """The data-only description of one allow-listed module: its type's key and constructor arguments (raises
    :class:`NotDescribable` for another type, or when the rebuilt module would differ from ``module``)."""
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


#: constructor arguments that set a count of Python-level repetitions (loops in a constructor or forward),
#: bounded far above any real model so that a crafted file cannot make them spin
_ARGUMENT_BOUNDS = {"factors": 256, "num_heads": 4096, "groups": 2**20}


def _plain_arg(value: Any, depth: int = 0) -> Any:
    """A constructor argument from a file: JSON scalars and (nested, short) lists of them only."""
    if isinstance(value, JSON_SCALARS):
        if isinstance(value, str) and len(value) > 200:
            raise NotDescribable("a constructor argument string longer than 200 characters")
        if isinstance(value, int) and abs(value) > 2**40:
            raise NotDescribable("a constructor argument above 2**40")
        return value
    if isinstance(value, list) and depth < 3 and len(value) <= 64:
        return tuple(_plain_arg(v, depth + 1) for v in value)
    raise NotDescribable(f"constructor argument of type {type(value).__name__} (or nested too deeply)")


def build_module(spec: Any, depth: int = 0) -> nn.Module:
    """Build one allow-listed module from its description (weights random: load them afterwards)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("args", {}), dict) or depth > 4:
        raise NotDescribable("malformed module description")
    cls, recipe = _resolve_type(spec.get("type"))
    args = {check_identifier(k, "constructor argument"): _plain_arg(v) for k, v in spec.get("args", {}).items()}
    for key, bound in _ARGUMENT_BOUNDS.items():
        if isinstance(args.get(key), int) and args[key] > bound:
            raise NotDescribable(f"{key}={args[key]} in {spec['type']!r} (at most {bound})")
    children = spec.get("children", {})
    attrs = spec.get("attrs", {})
    if not isinstance(children, dict) or not isinstance(attrs, dict) or \
            set(children) - set(recipe.children) or set(attrs) - set(recipe.attrs):
        raise NotDescribable(f"{spec['type']!r} takes no such children or attributes")
    try:
        module = cls(**args)
    except (TypeError, ValueError, RuntimeError, AssertionError, OverflowError) as e:
        raise NotDescribable(f"{spec['type']!r} cannot be built from its arguments ({e})") from None
    for name, child in children.items():
        setattr(module, name, build_module(child, depth + 1))
    for name, value in attrs.items():
        if not isinstance(value, JSON_SCALARS):
            raise NotDescribable(f"attribute {name!r} of {spec['type']!r} is not a plain value")
        setattr(module, name, value)
    return module
