"""Where the convs are: graph analysis shared by planning and rewriting.

Finds every conv call (module convs with their spatial sizes, functional convs), the stem, convs called
more than once, and the residual-branch conv pairs ``conv_a -> norm -> act -> conv_b -> ... -> add`` that
block-level specs collapse. Works on an fx GraphModule, or on a plain module (no pairs, no functional convs)
when tracing is impossible.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .counting import eval_mode

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU,
                nn.CELU, nn.SELU, nn.Tanh)
_ACT_FUNCTIONS = {F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.elu, F.mish, torch.relu,
                  torch.relu_, F.relu_}
_ACT_METHODS = {"relu", "relu_"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_FUNCTIONAL_CONVS = {F.conv2d, torch.conv2d}


@dataclass
class ConvSite:
    """One conv module as the forward pass uses it."""

    name: str
    conv: nn.Conv2d
    node: fx.Node | None = None
    is_stem: bool = False
    calls: int = 1
    input_shape: tuple[int, ...] | None = None   # (C, H, W) of its (first) call
    output_shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        c = self.conv
        k = "×".join(str(v) for v in c.kernel_size)
        s = f" s{c.stride[0]}" if c.stride[0] != 1 else ""
        g = f" g{c.groups}" if c.groups != 1 else ""
        hw = f" @{self.output_shape[1]}×{self.output_shape[2]}" if self.output_shape else ""
        return f"{c.in_channels}→{c.out_channels} {k}{s}{g}{hw}"


@dataclass
class PairSite:
    """A residual-branch pair: ``a -> between... -> b``, with ``b`` reaching a residual add."""

    a: ConvSite
    b: ConvSite
    between: list[fx.Node] = field(default_factory=list)

    @property
    def block(self) -> str:
        return self.a.name.rpartition(".")[0]

    @property
    def label(self) -> str:
        return f"{self.a.name}+{self.b.name.rpartition('.')[2]}"


@dataclass
class FunctionalConv:
    node_name: str
    block: str


@dataclass
class Analysis:
    model: nn.Module                 # the GraphModule, or the plain module in module mode
    graph_mode: bool
    input_shape: tuple[int, ...]     # (C, H, W)
    convs: list[ConvSite]
    pairs: list[PairSite]
    functional: list[FunctionalConv]
    #: replacement modules built while planning (keyed by plan entry layer), reused by the rewrite
    replacements: dict[str, nn.Module] = field(default_factory=dict)

    def pair_starting_at(self, name: str) -> PairSite | None:
        return next((p for p in self.pairs if p.a.name == name), None)

    def pair_ending_at(self, name: str) -> PairSite | None:
        return next((p for p in self.pairs if p.b.name == name), None)


def _module(gm: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(node.target)


def _is_passthrough(gm: nn.Module, node: fx.Node) -> bool:
    """A node that may sit between the two convs of a pair (norm, activation, dropout, identity...)."""
    if node.op == "call_module":
        m = _module(gm, node)
        if isinstance(m, nn.Conv2d):
            return False
        from .trace import _NORM_TYPES

        if isinstance(m, (*_NORM_TYPES, *_ACT_MODULES, nn.Identity, nn.Dropout, nn.Dropout2d)):
            return True
        # parameter-free leaves such as drop-path / drop-block
        return next(iter(m.parameters()), None) is None and not any(True for _ in m.children())
    if node.op == "call_function":
        return node.target in _ACT_FUNCTIONS
    if node.op == "call_method":
        return node.target in _ACT_METHODS
    return False


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
        (node.op == "call_method" and node.target in _ADD_METHODS)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_conv_node(gm, node) -> bool:
    return isinstance(_module(gm, node), nn.Conv2d)


def _find_pair(gm, a_node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    between = []
    node = _single_user(a_node)
    while node is not None and not _is_conv_node(gm, node):
        if not _is_passthrough(gm, node) or len(node.args) < 1 or node.args[0] is not (between[-1] if between
                                                                                      else a_node):
            return None
        between.append(node)
        node = _single_user(node)
    if node is None or node.args[0] is not (between[-1] if between else a_node):
        return None
    b_node = node
    # b must lead (through norm/act/identity-like nodes only) to a residual add
    cursor = _single_user(b_node)
    while cursor is not None and not _is_add(cursor):
        if not _is_passthrough(gm, cursor):
            return None
        cursor = _single_user(cursor)
    if cursor is None:
        return None
    return b_node, between


def _is_stem_node(gm, node: fx.Node) -> bool:
    """True when the conv reads the network input (through no other conv)."""
    arg = node.args[0] if node.args else None
    seen = 0
    while isinstance(arg, fx.Node) and seen < 64:
        if arg.op == "placeholder":
            return True
        if _is_conv_node(gm, arg) or not arg.args:
            return False
        arg = arg.args[0]
        seen += 1
    return False


def _record_shapes(model: nn.Module, example_input: torch.Tensor) -> tuple[dict, dict, Counter]:
    inputs, outputs, calls = {}, {}, Counter()
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(mod, args, out, _n=name):
                calls[_n] += 1
                if _n not in inputs:
                    inputs[_n] = tuple(args[0].shape[1:])
                    outputs[_n] = tuple(out.shape[1:])
            handles.append(m.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs, calls


def analyse(model: nn.Module, example_input: torch.Tensor, graph_mode: bool) -> Analysis:
    """Analyse ``model`` (a GraphModule when ``graph_mode``) at ``example_input``'s shape."""
    inputs, outputs, calls = _record_shapes(model, example_input)
    convs: list[ConvSite] = []
    pairs: list[PairSite] = []
    functional: list[FunctionalConv] = []
    if graph_mode:
        assert isinstance(model, fx.GraphModule)
        node_calls = Counter(n.target for n in model.graph.nodes if n.op == "call_module")
        by_name: dict[str, ConvSite] = {}
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target in _FUNCTIONAL_CONVS:
                from .trace import module_path_of

                path = module_path_of(node)
                functional.append(FunctionalConv(node.name, path[-1] if path else ""))
            m = _module(model, node)
            if not isinstance(m, nn.Conv2d) or node.target in by_name:
                continue
            site = ConvSite(node.target, m, node, _is_stem_node(model, node), node_calls[node.target],
                            inputs.get(node.target), outputs.get(node.target))
            by_name[node.target] = site
            convs.append(site)
        for site in convs:
            if site.calls != 1:
                continue
            found = _find_pair(model, site.node)
            if found is None:
                continue
            b_node, between = found
            b = by_name[b_node.target]
            if b.calls == 1 and b.name.rpartition(".")[0] == site.name.rpartition(".")[0]:
                pairs.append(PairSite(site, b, between))
    else:
        first = True
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                convs.append(ConvSite(name, m, None, first, calls[name], inputs.get(name),
                                      outputs.get(name)))
                first = False
    return Analysis(model, graph_mode, tuple(example_input.shape[1:]), convs, pairs, functional)
