"""Channel groups: the channels of a network that can only shrink together (issue 31 item 2).

A conv's output channels are read by whatever follows it. Where a residual add joins two tensors, the channels of
both operands are the same channels: removing channel c from one writer removes it from every writer into that
add, from every BatchNorm that normalises the sum and from every conv (and the classifier) that reads it.
:func:`channel_groups` finds these sets by a union-find over the traced graph:

* every conv (a plain ``nn.Conv2d`` or timm's ``Conv2dSame``, dense, called once) *writes* a new set of channels
  (its output rows) and *reads* the set of its input (its input columns);
* a residual add joins the sets of its operands, and so does an elementwise multiply of two channel tensors (an
  attention gate ``x * sigmoid(conv(pool(x)))``: the gate's conv writes the same channels);
* per-channel layers pass the set on unchanged: a ``BatchNorm2d`` (timm's ``BatchNormAct2d`` too) and a depthwise
  conv (recorded, they are sliced with the channels), activations, sigmoids, dropout, drop-path, identities, pools,
  spatial means;
* ``flatten``/``nn.Flatten``/``view``/``reshape`` to (batch, features) passes the set on to a ``nn.Linear`` (the
  classifier), which reads it as its input columns when its ``in_features`` equal the channels (a global pool
  before it);
* anything else that touches a set (a concat, a grouped conv, a depthwise conv with a channel multiplier, a
  GroupNorm, a multiply by a parameter, a module holding convs that fx did not look into, the network input or
  output) *fixes* it: we cannot follow how that operation maps channels, so the set keeps its width;
  :attr:`ChannelGroup.fixed` says why. Operands whose channel counts differ (a 1-channel spatial gate) fix the
  joined set too.

In a pre-activation WRN a stage's residual stream is one group: the stem (or the stage's first shortcut and
conv_b) and every block's conv_b write it, each block's bn1 normalises it, each block's conv_a and the next
stage's shortcut read it, and after the last stage the final BatchNorm and the classifier. In a post-activation
ResNet the stream's writers are the stem or the downsample conv and every block's conv2, with their BatchNorms
before the add. The inner width of each residual pair is a group of its own (one writer, one reader): the free
channels ``W(f)`` thins. The analysis only reads the graph.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .ops import is_activation, is_add, module_of

__all__ = ["ChannelGroup", "channel_groups"]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channels that shrinks as one: the module names that write, read and normalise them.

    ``writers``: convs whose output rows are these channels; ``readers``: convs (input columns) and the classifier
    ``nn.Linear`` (input features) that read them; ``norms``: the ``BatchNorm2d`` layers on them; ``depthwise``:
    depthwise convs that map each channel to itself; ``fixed``: why the group cannot be thinned, or None."""

    channels: int
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    norms: tuple[str, ...]
    fixed: str | None = None
    depthwise: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The first writer's name (the first reader's where nothing writes), ``+N`` for the other writers."""
        first = (self.writers or self.readers or self.norms or ("?",))[0]
        return first + (f" (+{len(self.writers) - 1} writers)" if len(self.writers) > 1 else "")

    @property
    def coupled(self) -> bool:
        """Whether several convs write these channels (a residual add joins them): what ``W(f)`` cannot thin."""
        return len(self.writers) > 1

    def modules(self) -> tuple[str, ...]:
        """Every module the group's width touches: writers, norms, depthwise convs, readers."""
        return self.writers + self.norms + self.depthwise + self.readers


#: parameter-free modules that act on each channel alone
_PER_CHANNEL_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
                        nn.modules.pooling._AvgPoolNd,
                        nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                        nn.modules.pooling._AdaptiveMaxPoolNd)
_PER_CHANNEL_FUNCTIONS = {F.dropout, F.dropout2d, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d,
                          F.adaptive_max_pool2d, F.hardtanh, F.sigmoid, F.hardsigmoid, torch.sigmoid, torch.tanh}
_PER_CHANNEL_METHODS = {"sigmoid", "sigmoid_", "tanh"}
_MULS = {operator.mul, operator.imul, torch.mul}
#: reductions that keep the channel axis when they reduce over the spatial axes only
_REDUCTIONS = {"mean", "amax", "sum"}
_FLATTENS_FUNCTIONS = {torch.flatten}
_FLATTENS_METHODS = {"flatten", "view", "reshape"}
#: methods and attributes that read a tensor's size, not its channels
_SIZE_READS = {"size", "dim"}


class _Sets:
    """Union-find over channel sets, each root holding what was recorded on any of its members."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.info: list[dict] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        self.info.append(dict(writers=[], readers=[], norms=[], depthwise=[], counts=[], fixed=[]))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        i, j = self.find(i), self.find(j)
        if i != j:
            low, high = min(i, j), max(i, j)   # the earlier set stays the root: groups list in graph order
            self.parent[high] = low
            for key, values in self.info[high].items():
                self.info[low][key].extend(values)
        return min(i, j)

    def record(self, i: int, key: str, value) -> None:
        self.info[self.find(i)][key].append(value)


#: conv subclasses whose forward depends on the channels only through the weight (timm's ``Conv2dSame`` pads from
#: the kernel, stride and dilation): they are sliced as a plain conv. A weight-standardised conv is not one of them
_PLAIN_CONV_NAMES = {("timm.layers.conv2d_same", "Conv2dSame"), ("timm.models.layers.conv2d_same", "Conv2dSame")}


def _plain_conv(conv: nn.Module) -> bool:
    cls = type(conv)
    return cls is nn.Conv2d or (cls.__module__, cls.__name__) in _PLAIN_CONV_NAMES


def _plain_norm(norm: nn.Module) -> bool:
    """A ``BatchNorm2d`` with affine parameters and running statistics, or a subclass that only adds per-channel
    layers after it (timm's ``BatchNormAct2d``: an activation and a dropout)."""
    if not (isinstance(norm, nn.BatchNorm2d) and norm.affine and norm.track_running_stats):
        return False
    return type(norm) is nn.BatchNorm2d or all(
        isinstance(c, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish,
                       nn.LeakyReLU, nn.Mish, nn.Sigmoid)) for c in norm.children())


def _is_depthwise(conv: nn.Module) -> bool:
    return _plain_conv(conv) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _conv_reason(conv: nn.Module, calls: int) -> str | None:
    if not _plain_conv(conv):
        return f"a {type(conv).__name__} (not a plain nn.Conv2d) reads or writes them"
    if conv.groups != 1 and not _is_depthwise(conv):
        return f"a grouped conv (groups={conv.groups}) reads or writes them"
    if calls != 1:
        return f"a conv called {calls} times reads or writes them"
    return None


def _is_flatten(node: fx.Node) -> bool:
    """``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(x.size(0), -1)``, ``x.reshape(n, -1)``: (N, features)."""
    if node.op == "call_function" and node.target in _FLATTENS_FUNCTIONS:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1 and len(node.args) <= 2
    if node.op == "call_method" and node.target == "flatten":
        return (node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)) == 1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (tuple, list)) else node.args[1]
        return len(shape) == 2 and shape[1] == -1
    return False


def _per_channel(gm: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        m = module_of(gm, node)
        if next(iter(m.parameters()), None) is not None:
            return False
        if isinstance(m, _PER_CHANNEL_MODULES) or is_activation(gm, node):
            return True
        # drop-path and stochastic depth leaves scale whole samples, not channels
        return not list(m.children()) and type(m).__name__.lower().startswith(("drop", "stochastic"))
    if node.op == "call_function" and node.target in _PER_CHANNEL_FUNCTIONS:
        return True
    if node.op == "call_method" and node.target in _PER_CHANNEL_METHODS:
        return True
    return is_activation(gm, node)


def _spatial_reduction(node: fx.Node) -> str | None:
    """``x.mean((2, 3), keepdim=True)`` and the like: "channel" (a 4-d tensor, channels kept), "flat" (N×C), or
    None where the reduction is not over the spatial axes of an N×C×H×W tensor alone."""
    if not ((node.op == "call_method" and node.target in _REDUCTIONS) or
            (node.op == "call_function" and node.target in (torch.mean, torch.amax, torch.sum))):
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    dims = {dims} if isinstance(dims, int) else set(dims) if isinstance(dims, (tuple, list)) else None
    if dims is None or not dims <= {2, 3, -1, -2}:
        return None
    if keep is True:
        return "channel"
    return "flat" if len({d % 4 for d in dims}) == 2 else None


def channel_groups(gm: fx.GraphModule) -> list[ChannelGroup]:
    """Every channel set of ``gm`` (a traced model, :func:`cheapconv.fx.trace`), in graph order, with what writes,
    reads and normalises it and, where it cannot be thinned, why (see the module docstring).

    >>> import cheapconv
    >>> from cheapconv.fx import trace
    >>> groups = channel_groups(trace(cheapconv.create_model("wrn_10_1", num_classes=10)))
    >>> [(g.label, g.channels) for g in groups if g.fixed is None and g.coupled]
    [('conv1 (+1 writers)', 16), ('block2.0.conv2 (+1 writers)', 32), ('block3.0.conv2 (+1 writers)', 64)]
    """
    sets = _Sets()
    channel: dict[fx.Node, int] = {}    # a 4-d tensor's channel set
    flat: dict[fx.Node, int] = {}       # a (batch, features) view of a channel set
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")

    def fix_inputs(node: fx.Node, why: str) -> None:
        for arg in node.all_input_nodes:
            for table in (channel, flat):
                if arg in table:
                    sets.record(table[arg], "fixed", why)

    def fresh_fixed(node: fx.Node, why: str) -> None:
        channel[node] = sets.new()
        sets.record(channel[node], "fixed", why)

    for node in gm.graph.nodes:
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "placeholder":
            fresh_fixed(node, "they are the network's input")
            continue
        if node.op == "get_attr":
            continue
        if node.op == "output":
            fix_inputs(node, "they are the network's output")
            continue
        what = node.target if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
        m = module_of(gm, node)
        if isinstance(m, nn.Conv2d) and first in channel and len(node.all_input_nodes) == 1 and \
                _is_depthwise(m) and _conv_reason(m, calls[node.target]) is None:
            channel[node] = channel[first]   # each channel to itself: sliced with the group, like a BatchNorm
            sets.record(channel[node], "depthwise", node.target)
            sets.record(channel[node], "counts", (node.target, m.out_channels))
            continue
        if isinstance(m, nn.Conv2d) and first in channel and len(node.all_input_nodes) == 1:
            reason = _conv_reason(m, calls[node.target])
            out = sets.new()
            channel[node] = out
            if reason is not None:   # still listed as writer and reader: a fixed group says what touches it
                sets.record(out, "fixed", f"{reason} ({node.target})")
                sets.record(channel[first], "fixed", f"{reason} ({node.target})")
            sets.record(out, "writers", node.target)
            sets.record(out, "counts", (node.target, m.out_channels))
            sets.record(channel[first], "readers", node.target)
            sets.record(channel[first], "counts", (node.target, m.in_channels))
            continue
        if type(m) is nn.Linear and first in flat and len(node.all_input_nodes) == 1 and calls[node.target] == 1:
            sets.record(flat[first], "readers", node.target)
            sets.record(flat[first], "counts", (node.target, m.in_features))
            fresh_fixed(node, f"a Linear's outputs ({node.target})")
            continue
        if _plain_norm(m) and first in channel and len(node.all_input_nodes) == 1 and calls[node.target] == 1:
            channel[node] = channel[first]
            sets.record(channel[node], "norms", node.target)
            sets.record(channel[node], "counts", (node.target, m.num_features))
            continue
        if is_add(node) or (node.op == "call_function" and node.target in _MULS) or \
                (node.op == "call_method" and node.target in ("mul", "mul_")):
            operands = [a for a in node.all_input_nodes if a in channel]
            if operands and len(operands) == len(node.all_input_nodes):
                root = operands[0]
                for other in operands[1:]:
                    sets.union(channel[root], channel[other])
                channel[node] = channel[root]
                continue
        if first is not None and len(node.all_input_nodes) == 1 and _per_channel(gm, node):
            if first in channel:
                channel[node] = channel[first]
                continue
            if first in flat:
                flat[node] = flat[first]
                continue
        reduction = _spatial_reduction(node) if first in channel and len(node.all_input_nodes) == 1 else None
        if reduction is not None:
            (channel if reduction == "channel" else flat)[node] = channel[first]
            continue
        if first in channel and isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1):
            flat[node] = channel[first]
            continue
        if first in channel and _is_flatten(node) and all(a is first or _reads_size(a) for a in node.all_input_nodes):
            flat[node] = channel[first]
            continue
        if _reads_size(node):
            continue
        why = f"{what} mixes or reshapes them in a way the analysis does not follow"
        fix_inputs(node, why)
        fresh_fixed(node, why)
    return [_group(info) for i, info in enumerate(sets.info) if sets.find(i) == i and info["counts"]]


def _reads_size(node: fx.Node) -> bool:
    """A node that reads a tensor's size (``x.size(0)``, ``x.shape``), not its values."""
    return (node.op == "call_method" and node.target in _SIZE_READS) or \
        (node.op == "call_function" and node.target is getattr and node.args[1] == "shape") or \
        (node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node)
         and _reads_size(node.args[0]))


def _group(info: dict) -> ChannelGroup:
    counts = {n for _, n in info["counts"]}
    fixed = info["fixed"][0] if info["fixed"] else None
    if fixed is None and len(counts) > 1:
        fixed = "their layers disagree on the number of channels: " + ", ".join(
            f"{name} {n}" for name, n in info["counts"])
    if fixed is None and not info["writers"]:
        fixed = "no conv writes them"
    return ChannelGroup(min(counts) if counts else 0, tuple(dict.fromkeys(info["writers"])),
                        tuple(dict.fromkeys(info["readers"])), tuple(dict.fromkeys(info["norms"])), fixed,
                        tuple(dict.fromkeys(info["depthwise"])))
