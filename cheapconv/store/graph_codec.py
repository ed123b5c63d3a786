"""A data-only description of an fx GraphModule, so a student loads without unpickling any code.

The description is JSON: the graph's nodes (op, target, arguments, and the dotted paths of the modules each ran
inside, which taps read to find a stage such as ``layers.7`` in the hollow module tree) and, for every leaf
module the graph calls, its type (from an allow-list: ``torch.nn`` layers, cheapconv's blocks, and a few
torchvision and timm layers that are fully determined by their constructor arguments) and constructor arguments.
Tensors (weights, buffers, ``get_attr`` parameters) travel separately in the state dict; the few that are not in
it (non-persistent buffers such as blur filters and position indices, constants captured by tracing) are
written into the description as raw bytes of a declared dtype and shape.

Decoding trusts nothing in the description (see the README's "Security model"):

* every name that torch.fx pastes into generated source (node names, placeholder, attribute and module
  targets, keyword names) must be a plain identifier or a dotted path of identifiers, and so must each module
  path (at most 64 per node; they are only compared as strings, never imported);
* functions, tensor methods and ``getattr`` attributes come from the closed vocabulary of pure tensor
  computations in :mod:`cheapconv.store.graph_vocab`; module types from the allow-list in
  :mod:`cheapconv.store.module_codec`;
* before anything real is allocated, the modules are built on the meta device and their size is checked
  against a cap, and the graph is run on a meta input of its recorded size with every value checked
  (:mod:`cheapconv.store.graph_limits`).

Anything the encoder cannot describe this way raises :class:`NotDescribable`; the caller then falls back to
another storage kind. The same checks run when saving, so whatever is saved as a graph loads again.
"""

from __future__ import annotations

import base64
import builtins
import math
from typing import Any

import torch
from torch import fx, nn

from ..fx.tracer import module_path_of
from ..models.weights import mismatch
from . import graph_limits
from .graph_vocab import (
    GETATTR_NAMES,
    METHODS,
    NotDescribable,
    check_dotted,
    check_identifier,
    function_name,
    resolve_function,
)
from .module_codec import JSON_SCALARS, build_module, describe_module
from .module_codec import module_types as _module_types  # noqa: F401 - tests call it here (no timm on import)

#: 2 records the input size the graph was checked at; 1 (wave 1) is read with the recipe's input size
FORMAT = 2
READABLE_FORMATS = (1, 2)


class WeightsMismatch(NotDescribable):
    """The layers a description builds do not hold exactly the weights of its file (found on the meta device)."""


# --- functions ----------------------------------------------------------------------------------------------
def encode_function(fn: Any) -> str:
    """The allow-listed qualified name of ``fn`` (raises :class:`NotDescribable` for anything else)."""
    name = function_name(fn)
    if name is None:
        raise NotDescribable(f"function {getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', fn)} is "
                             "outside the allow-list of pure tensor computations")
    return name


# --- arguments ----------------------------------------------------------------------------------------------
_MAX_NODES = 100_000
_MAX_PATH_DEPTH = 64   # modules nested in one another around one node
_MAX_ARG_DEPTH = 16
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}
_MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
                   "preserve_format": torch.preserve_format}


def _encode_arg(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, JSON_SCALARS):
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


def _decode_arg(a: Any, env: dict[str, fx.Node], depth: int = 0) -> Any:
    """Decode one argument. Only data comes out: nodes defined earlier, scalars, containers of them, slices,
    and dtypes / devices / memory formats by name; never a callable or an arbitrary object."""
    if depth > _MAX_ARG_DEPTH:
        raise NotDescribable("graph arguments nested too deeply")
    if isinstance(a, list):
        return [_decode_arg(v, env, depth + 1) for v in a]
    if isinstance(a, str) and len(a) > 1000:
        raise NotDescribable("a graph argument string longer than 1000 characters")
    if not isinstance(a, dict):
        if not isinstance(a, JSON_SCALARS):
            raise NotDescribable(f"graph argument of type {type(a).__name__}")
        return a
    if len(a) != 1:
        raise NotDescribable("malformed graph argument")
    (kind, value), = a.items()
    if kind == "node":
        if value not in env:
            raise NotDescribable(f"argument names node {value!r}, which is not defined before it")
        return env[value]
    if kind in ("tuple", "slice") and isinstance(value, list):
        items = [_decode_arg(v, env, depth + 1) for v in value]
        if kind == "tuple":
            return tuple(items)
        if len(items) == 3 and all(v is None or isinstance(v, int | fx.Node) for v in items):
            return slice(*items)
    if kind == "dict" and isinstance(value, list):
        pairs = [(k, v) for k, v in (p if isinstance(p, list) and len(p) == 2 else (None, None) for p in value)]
        return {check_identifier(k, "dictionary key"): _decode_arg(v, env, depth + 1) for k, v in pairs}
    if kind == "ellipsis" and value is True:
        return Ellipsis
    if kind == "float" and value in ("inf", "-inf", "nan"):
        return float(value)
    if kind == "dtype" and value in _DTYPES:
        return _DTYPES[value]
    if kind == "memory_format" and value in _MEMORY_FORMATS:
        return _MEMORY_FORMATS[value]
    if kind == "device" and isinstance(value, str) and len(value) < 20:
        try:
            return torch.device(value)
        except RuntimeError:
            pass
    raise NotDescribable(f"malformed graph argument of kind {str(kind)[:40]!r}")


def _node_refs(a: Any) -> bool:
    if isinstance(a, fx.Node):
        return True
    if isinstance(a, tuple | list):
        return any(_node_refs(v) for v in a)
    if isinstance(a, dict):
        return any(_node_refs(v) for v in a.values())
    if isinstance(a, slice):
        return any(_node_refs(v) for v in (a.start, a.stop, a.step))
    return False


def _check_node(op: str, target: Any, name: Any, args: Any, kwargs: Any, desc: dict[str, Any]) -> Any:
    """Check one node of a description; return the target fx gets (a callable for call_function)."""
    check_identifier(name, "node name")
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise NotDescribable(f"node {name!r} has malformed arguments")
    if op == "placeholder":
        return check_identifier(target, "input name")
    if op == "output":
        if target != "output":
            raise NotDescribable("the output node's target must be 'output'")
        return target
    if op == "get_attr":
        if check_dotted(target, "attribute") not in desc["attrs"]:
            raise NotDescribable(f"attribute {target!r} is not described")
        return target
    if op == "call_module":
        if check_dotted(target, "module") not in desc["modules"]:
            raise NotDescribable(f"module {target!r} is not described")
        return target
    # calls must read something the graph computed: a call on constants alone is never traced by fx
    if not _node_refs(args) and not _node_refs(kwargs):
        raise NotDescribable(f"node {name!r} computes on constants only")
    if op == "call_method":
        if not isinstance(target, str) or target not in METHODS:
            raise NotDescribable(f"method {str(target)[:80]!r} is not an allowed tensor method")
        return target
    if op == "call_function":
        fn = resolve_function(target)
        if fn is builtins.getattr and (len(args) != 2 or kwargs or args[1] not in GETATTR_NAMES):
            raise NotDescribable(f"getattr may read only {', '.join(sorted(GETATTR_NAMES))} (node {name!r})")
        return fn
    raise NotDescribable(f"unknown node op {str(op)[:40]!r}")


# --- whole graphs -------------------------------------------------------------------------------------------
def describe_graph_module(gm: fx.GraphModule, input_size: tuple[int, ...] | None = None) -> dict[str, Any]:
    """JSON-able description of ``gm`` (raises :class:`NotDescribable`).

    ``input_size`` (C, H, W) is recorded and the description is checked exactly as :func:`build_graph_module`
    will check it, so a description this returns always builds again.
    """
    if input_size is None:
        raise NotDescribable("no input size to check the graph at")
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
        nodes.append({"name": node.name, "op": node.op, "target": target,
                      "args": _encode_arg(node.args), "kwargs": _encode_arg(node.kwargs)})
        path = module_path_of(node)
        if path:   # the modules the node ran inside: how taps find a stage (layers.7) in a graph's hollow tree
            nodes[-1]["path"] = list(path)
    desc = {"format": FORMAT, "class_name": type(gm).__name__, "input_size": [int(d) for d in input_size],
            "modules": modules, "attrs": attrs, "nodes": nodes}
    # the user's own model: its declared sizes are real (a file's are counted by file_checks.real_size)
    weights = (graph_limits.tensor_bytes(state.values()), sum(t.numel() for t in state.values()))
    _check_description(desc, max_bytes=max_bytes_for(weights[0]), input_size=None, weights=weights)
    return desc


def max_bytes_for(state_bytes: int) -> int:
    """What a description may allocate: the weights it brings plus room for non-persistent buffers."""
    return state_bytes + _MAX_INLINE_BYTES + 64 * 2**20


def _check_description(desc: Any, *, max_bytes: int, input_size: tuple[int, ...] | None,
                       weights: tuple[int, int] | None = None,
                       expected: dict[str, torch.Tensor] | None = None) -> tuple[int, ...]:
    """Every check of :func:`build_graph_module`, on the meta device; returns the input size checked at."""
    if not isinstance(desc, dict) or desc.get("format") not in READABLE_FORMATS:
        got = desc.get("format") if isinstance(desc, dict) else None
        raise NotDescribable(f"graph description format {str(got)[:20]!r} (this cheapconv reads "
                             f"{', '.join(map(str, READABLE_FORMATS))})")
    if not all(isinstance(desc.get(k), t) for k, t in (("modules", dict), ("attrs", dict), ("nodes", list))):
        raise NotDescribable("malformed graph description")
    input_size = _input_size(desc.get("input_size", input_size))
    with torch.device("meta"):
        meta = _build(desc, max_bytes=max_bytes)
    if expected is not None:   # the weights must fit the layers before a single real layer is built
        differences = mismatch(expected, meta.state_dict())
        if differences:
            raise WeightsMismatch(differences)
    if weights is None:   # no file: what the (already capped) description itself declares
        tensors = [*meta.parameters(), *meta.buffers()]
        weights = (graph_limits.tensor_bytes(tensors), sum(t.numel() for t in tensors))
    graph_limits.dry_run(meta, input_size, weight_bytes=weights[0], weight_elements=weights[1])
    return input_size


def _check_all_used(desc: dict[str, Any]) -> None:
    """Refuse modules and attributes that no node calls or reads: they would be built for nothing (an unused
    32768×32768 Linear is 4 GiB), and the encoder never writes one."""
    used = {(n.get("op"), n.get("target")) for n in desc["nodes"]
            if isinstance(n, dict) and isinstance(n.get("target"), str)}
    for kind, op, names in (("module", "call_module", desc["modules"]), ("attribute", "get_attr", desc["attrs"])):
        unused = next((name for name in names if (op, name) not in used), None)
        if unused is not None:
            raise NotDescribable(f"the {kind} {str(unused)[:80]!r} is described but no node uses it")


def _input_size(size: Any) -> tuple[int, ...]:
    if not isinstance(size, list | tuple) or not 1 <= len(size) <= 4 or \
            not all(isinstance(d, int) and 0 < d <= 8192 for d in size) or math.prod(size) > 2**26:
        raise NotDescribable(f"no usable input size recorded ({str(size)[:40]}); expected C, H, W")
    return tuple(size)


def _build(desc: dict[str, Any], *, max_bytes: int | None) -> fx.GraphModule:
    if len(desc["nodes"]) > _MAX_NODES or len(desc["modules"]) > _MAX_NODES or len(desc["attrs"]) > _MAX_NODES:
        raise NotDescribable(f"more than {_MAX_NODES} nodes, modules or attributes")
    _check_all_used(desc)
    root: dict[str, Any] = {check_dotted(name, "module"): build_module(spec) for name, spec in desc["modules"].items()}
    inline, attrs = [], {}
    for name, a in desc["attrs"].items():
        check_dotted(name, "attribute")
        if not isinstance(a, dict) or a.get("dtype") not in _DTYPES:
            raise NotDescribable(f"attribute {name!r} has an unknown dtype")
        shape, dtype = _shape(a.get("shape")), _DTYPES[a["dtype"]]
        if "data" in a:
            t = _decode_tensor(a["data"], shape, dtype)
            inline.append(name)
        else:
            t = torch.zeros(shape, dtype=dtype) if max_bytes is None else torch.empty(shape, dtype=dtype)
        attrs[name] = nn.Parameter(t, requires_grad=bool(a.get("requires_grad"))) if a.get("parameter") else t
    if max_bytes is not None:
        graph_limits.check_module_sizes(root, attrs, max_bytes)
    root.update(attrs)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    placeholders = 0
    for n in desc["nodes"]:
        if not isinstance(n, dict):
            raise NotDescribable("malformed graph node")
        op, name = n.get("op"), n.get("name")
        args, kwargs = _decode_arg(n.get("args"), env), _decode_arg(n.get("kwargs"), env)
        args = tuple(args) if isinstance(args, list) else args
        target = _check_node(op, n.get("target"), name, args, kwargs, desc)
        placeholders += op == "placeholder"
        if name in env:
            raise NotDescribable(f"node name {name!r} is used twice")
        node = graph.create_node(op, target, args, kwargs, name=name)
        if node.name != name:  # fx renamed it (a clash with a reserved name): the description is not ours
            raise NotDescribable(f"node name {name!r} is reserved")
        env[name] = node
    if placeholders != 1:
        raise NotDescribable(f"the graph takes {placeholders} inputs; cheapconv stores models of one input")
    try:
        graph.lint()
    except RuntimeError as e:
        raise NotDescribable(f"inconsistent graph ({str(e)[:200]})") from None
    class_name = str(desc.get("class_name", "Student"))[:100]
    class_name = "".join(ch for ch in class_name if ch.isalnum() or ch == "_").lstrip("0123456789_")
    gm = fx.GraphModule(root, graph, class_name or "Student")
    _restore_module_paths(gm, desc["nodes"])
    for name in inline:  # values travel in the description, not the state dict: keep them out of it
        parent_name, _, leaf = name.rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        parent.register_buffer(leaf, getattr(parent, leaf), persistent=False)
    return gm


def build_graph_module(desc: Any, *, max_bytes: int | None = None, input_size: tuple[int, ...] | None = None,
                       expected: dict[str, torch.Tensor] | None = None,
                       weights: tuple[int, int] | None = None) -> fx.GraphModule:
    """Rebuild a GraphModule from a description (random weights: load the state dict afterwards).

    Everything is checked first on the meta device, where nothing is allocated: the vocabulary, that every
    described module and attribute is used by a node, the size of the modules against ``max_bytes``
    (default: what the description itself brings plus 80 MiB; :func:`load` passes the size of the file's
    weights), that the layers have exactly the tensors of ``expected`` (the file's state dict), and a checked
    dry run at the recorded input size (``input_size`` is used for wave-1 descriptions that did not record
    one) within budgets derived from ``weights`` (the file's real ``(bytes, elements)``; default: what the
    description declares). Raises :class:`NotDescribable`.
    """
    if max_bytes is None:
        max_bytes = max_bytes_for(0)
    try:
        _check_description(desc, max_bytes=max_bytes, input_size=input_size, weights=weights, expected=expected)
        return _build(desc, max_bytes=None)
    except NotDescribable:
        raise
    except RecursionError:
        raise NotDescribable("the description is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - a crafted graph can make torch raise anything while checked
        raise NotDescribable(f"the graph does not run on meta tensors at its input size "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None


#: tensors outside the state dict (non-persistent buffers, traced constants) are written into the
#: description itself, up to this many bytes in all
_MAX_INLINE_BYTES = 16 * 2**20


def _restore_module_paths(gm: fx.GraphModule, nodes: list[dict[str, Any]]) -> None:
    """Each node's recorded module path (``"path"``: the dotted names of the modules it ran inside, outermost
    first) back into its ``nn_module_stack`` meta, as tracing records it, so that stages are found by name in a
    loaded graph as in the traced one. A path is data: dotted module paths only, never imported."""
    paths = {n["name"]: n["path"] for n in nodes if "path" in n}
    for node in gm.graph.nodes:
        path = paths.get(node.name)
        if path is None:
            continue
        if not isinstance(path, list) or len(path) > _MAX_PATH_DEPTH:
            raise NotDescribable(f"node {node.name!r} has a malformed module path")
        stack = {}
        for p in path:
            check_dotted(p, "module path")
            try:
                kind: type = type(gm.get_submodule(p))
            except AttributeError:   # a container the graph never calls directly
                kind = nn.Module
            stack[p] = (p, kind)
        node.meta["nn_module_stack"] = stack


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > 8 or \
            not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
        raise NotDescribable(f"malformed tensor shape {str(shape)[:60]}")
    return tuple(shape)


def _tensor_attr(gm: nn.Module, target: str) -> torch.Tensor | None:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) and not isinstance(obj, nn.Parameter) else None


def _decode_tensor(data: Any, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(data, str) or len(data) > 2 * _MAX_INLINE_BYTES:
        raise NotDescribable("malformed inline tensor")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as e:
        raise NotDescribable(f"malformed inline tensor ({e})") from None
    count = math.prod(shape)
    if count * torch.empty((), dtype=dtype, device="cpu").element_size() != len(raw):
        raise NotDescribable("inline tensor data does not match its shape and dtype")
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()
