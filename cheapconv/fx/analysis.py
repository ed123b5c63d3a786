"""Where the convs are: graph analysis shared by planning and rewriting.

Finds every conv call (module convs with their spatial sizes, functional convs), the stem, convs called
more than once, and the residual-branch conv pairs ``conv_a -> norm -> act -> conv_b -> ... -> add`` that
block-level specs collapse. Works on an fx GraphModule, or on a plain module (no pairs, no functional convs)
when tracing is impossible.

* Convs inside leaf modules (declared leaves, timm's own, or modules fx could not trace) have no graph node;
  they are still listed, so conv-level specs replace them as modules.
* The stem is the conv that reads the image through no other conv, along every input path (ERFNet's
  downsamplers concatenate a conv with a max-pool of their input, so later convs reach the image through pools
  alone on one path, and through convs on the others: those are no stems).
* Factorised pairs ``k×1 conv -> [activation] -> 1×k conv`` (or 1×k then k×1) on dense convs are one k×k site
  for conv-level blocks (:class:`FactoredSite`): ERFNet's non-bottleneck-1D, Inception's 1×7/7×1 where nothing
  but an activation sits between. The site carries the pair's stride, padding and dilation per axis.
* Between ``conv_b`` and the add may sit norms, activations, parameter-free leaves (drop-path), layer scale
  (a multiply by a parameter) and attention gates ``x * gate(x)`` (squeeze-excitation, ECA); the two convs
  need not share a parent module (timm's ``conv1_kxk.conv`` / ``conv2_kxk.conv``).
* Shapes are recorded on meta tensors where the model allows it, on a throw-away copy
  (:func:`cheapconv.counting.shape_forward`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..counting import shape_forward
from .ops import (
    FUNCTIONAL_CONVS,
    MUL_FUNCTIONS,
    MUL_METHODS,
    is_activation,
    is_add,
    is_passthrough,
    module_of,
    single_user,
)
from .tracer import module_path_of


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
        """The module holding both convs (``layer1.0``; ``stages.0.0`` for timm's ``conv1_kxk.conv``)."""
        a, b = self.a.name.split("."), self.b.name.split(".")
        common = 0
        while common < min(len(a), len(b)) - 1 and a[common] == b[common]:
            common += 1
        return ".".join(a[:common])

    @property
    def label(self) -> str:
        """``layer1.0.conv1+conv2``: the first conv's name, then the second's below the block."""
        rest = self.b.name[len(self.block) + 1:] if self.block else self.b.name
        return f"{self.a.name}+{rest}"


@dataclass
class FactoredSite:
    """A factorised pair ``a -> between... -> b`` (k×1 then 1×k, or 1×k then k×1) that stands for one k×k conv.

    Conv-level blocks replace the pair as they would the k×k conv :meth:`as_conv` describes: the vertical
    conv's stride, padding and dilation on the height axis, the horizontal one's on the width axis."""

    a: ConvSite
    b: ConvSite
    between: list[fx.Node] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``layers.3.conv3x1_1+conv1x3_1``: the first conv's name, then the second's below their module."""
        return PairSite(self.a, self.b).label

    @property
    def block(self) -> str:
        return PairSite(self.a, self.b).block

    def as_conv(self) -> nn.Conv2d:
        """:func:`factored_conv` of the pair's convs."""
        return factored_conv(self.a.conv, self.b.conv)

    def describe(self) -> str:
        """``64→64 3×1+1×3 d2 @16×16``: channels, the two kernels, stride and dilation where not 1, output size."""
        a, b = self.a.conv, self.b.conv
        hw = f" @{self.b.output_shape[1]}×{self.b.output_shape[2]}" if self.b.output_shape else ""
        kernels = "+".join("×".join(map(str, c.kernel_size)) for c in (a, b))
        d, s = max(*a.dilation, *b.dilation), max(*a.stride, *b.stride)
        return (f"{a.in_channels}→{b.out_channels} {kernels}" + (f" s{s}" if s != 1 else "")
                + (f" d{d}" if d != 1 else "") + hw)


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
    factored: list[FactoredSite] = field(default_factory=list)
    #: replacement modules built while planning (keyed by plan entry layer), reused by the rewrite
    replacements: dict[str, nn.Module] = field(default_factory=dict)

    def pair_starting_at(self, name: str) -> PairSite | None:
        return next((p for p in self.pairs if p.a.name == name), None)

    def pair_ending_at(self, name: str) -> PairSite | None:
        return next((p for p in self.pairs if p.b.name == name), None)

    def factored_starting_at(self, name: str) -> FactoredSite | None:
        return next((p for p in self.factored if p.a.name == name), None)


def _is_conv_node(gm, node) -> bool:
    return isinstance(module_of(gm, node), nn.Conv2d)


def _find_pair(gm, a_node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    between = []
    node = single_user(a_node)
    while node is not None and not _is_conv_node(gm, node):
        if not is_passthrough(gm, node) or len(node.args) < 1 or node.args[0] is not (between[-1] if between
                                                                                      else a_node):
            return None
        between.append(node)
        node = single_user(node)
    if node is None or node.args[0] is not (between[-1] if between else a_node):
        return None
    b_node = node
    # b must lead to a residual add through norm/act/identity-like nodes and attention gates (SE, ECA)
    cursor = b_node
    for _ in range(32):
        nxt = single_user(cursor)
        if nxt is None:  # several users: only an attention gate on the branch may follow
            cursor = _gate_of(cursor)
            if cursor is None:
                return None
            continue
        if is_add(nxt):
            return b_node, between
        if not (is_passthrough(gm, nxt) or _is_scale(nxt, cursor)):
            return None
        cursor = nxt
    return None


def _is_scale(node: fx.Node, operand: fx.Node) -> bool:
    """``operand`` times constants or parameters (layer scale); not a gate's side, which multiplies two
    activations."""
    return _is_mul(node) and all(not isinstance(a, fx.Node) or a.op == "get_attr"
                                 for a in (*node.args, *node.kwargs.values()) if a is not operand)


def _is_mul(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in MUL_FUNCTIONS) or \
        (node.op == "call_method" and node.target in MUL_METHODS)


def _gate_of(node: fx.Node, limit: int = 64) -> fx.Node | None:
    """The multiply of an attention gate ``x * gate(x)`` (squeeze-excitation, ECA, CBAM) on ``node``: the one
    node where every path from ``node`` meets again, when it is a multiply and the paths are short."""
    users = list(node.users)
    muls = [u for u in users if _is_mul(u)]
    if len(users) < 2 or len(muls) != 1:
        return None
    gate, seen, todo = muls[0], set(), [u for u in users if u is not muls[0]]
    while todo:
        n = todo.pop()
        if n is gate or n in seen:
            continue
        seen.add(n)
        if n.op == "output" or len(seen) > limit:
            return None
        todo.extend(n.users)
    return gate


def _is_stem_node(gm, node: fx.Node) -> bool:
    """True when the conv reads the network input, and through no other conv on any input path.

    Every input path is followed (not only the first argument), so a stem behind input normalisation,
    ``torch.cat`` of re-scaled channels (torchvision's Inception ``transform_input``) or space-to-depth
    is still found; a path that reaches a conv (or a leaf holding one) makes it no stem, so a conv that also
    reads the image through pools alone (ERFNet's downsamplers) or a skip from the input is not one."""
    seen: set[fx.Node] = set()
    todo = list(node.all_input_nodes)
    reads_input = False
    while todo:
        if len(seen) >= 256:   # far from the input: no stem
            return False
        arg = todo.pop()
        if arg in seen:
            continue
        seen.add(arg)
        if arg.op == "placeholder":
            reads_input = True
            continue
        m = module_of(gm, arg)
        if m is not None and any(isinstance(c, nn.Conv2d) for c in m.modules()):
            return False
        todo.extend(arg.all_input_nodes)
    return reads_input


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
    def forget():
        for record in (inputs, outputs, calls):
            record.clear()

    try:  # shapes only: on meta tensors where the model allows it
        shape_forward(model, tuple(example_input.shape), on_retry=forget)
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
            if node.op == "call_function" and node.target in FUNCTIONAL_CONVS:
                path = module_path_of(node)
                functional.append(FunctionalConv(node.name, path[-1] if path else ""))
            m = module_of(model, node)
            if m is None or node.target in by_name:
                continue
            if isinstance(m, nn.Conv2d):
                site = ConvSite(node.target, m, node, _is_stem_node(model, node), node_calls[node.target],
                                inputs.get(node.target), outputs.get(node.target))
                by_name[node.target] = site
                convs.append(site)
                continue
            # A leaf that holds convs (user- or timm-declared, or marked because fx failed inside it): its
            # convs have no nodes of their own, but can still be replaced as modules.
            stem = _is_stem_node(model, node) and not convs
            for sub, conv in m.named_modules(prefix=node.target):
                if isinstance(conv, nn.Conv2d) and sub not in by_name:
                    site = ConvSite(sub, conv, None, stem, calls[sub], inputs.get(sub), outputs.get(sub))
                    by_name[sub] = site
                    convs.append(site)
                    stem = False
        for site in convs:
            if site.calls != 1 or site.node is None:
                continue
            found = _find_pair(model, site.node)
            if found is None:
                continue
            b_node, between = found
            b = by_name[b_node.target]
            if b.calls == 1:
                pairs.append(PairSite(site, b, between))
        factored = _factored_pairs(model, convs, by_name)
    else:
        factored = []
        first = True
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                convs.append(ConvSite(name, m, None, first, calls[name], inputs.get(name),
                                      outputs.get(name)))
                first = False
    return Analysis(model, graph_mode, tuple(example_input.shape[1:]), convs, pairs, functional, factored=factored)


def _line(conv: nn.Conv2d) -> str | None:
    """"v" for a dense k×1 conv, "h" for a dense 1×k conv (k > 1, numeric padding, zero padding mode), else None.
    The axis the kernel does not span must be plain: stride, padding and dilation 1, 0, 1 there."""
    if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if kh > 1 and kw == 1 and (sw, pw, dw) == (1, 0, 1):
        return "v"
    if kw > 1 and kh == 1 and (sh, ph, dh) == (1, 0, 1):
        return "h"
    return None


def is_factored(a: nn.Conv2d, b: nn.Conv2d) -> bool:
    """Whether ``a`` then ``b`` is a factorised pair: one dense k×1 and one dense 1×k conv (either order), same k,
    ``b`` reading ``a``'s channels."""
    return {_line(a), _line(b)} == {"v", "h"} and max(a.kernel_size) == max(b.kernel_size) and \
        a.out_channels == b.in_channels


def factored_conv(a: nn.Conv2d, b: nn.Conv2d) -> nn.Conv2d:
    """An uninitialised k×k conv with the geometry of the factorised pair ``a`` then ``b``: the vertical conv's
    stride, padding and dilation on the height axis, the horizontal one's on the width axis (on ``a``'s device and
    dtype, with its training flag; a bias where either conv has one). Its weights, where wanted:
    :func:`cheapconv.blocks.factorize.compose_factorised`."""
    v, h = (a, b) if a.kernel_size[1] == 1 else (b, a)
    conv = nn.Conv2d(a.in_channels, b.out_channels, (v.kernel_size[0], h.kernel_size[1]),
                     stride=(v.stride[0], h.stride[1]), padding=(v.padding[0], h.padding[1]),
                     dilation=(v.dilation[0], h.dilation[1]), bias=a.bias is not None or b.bias is not None,
                     device="meta", dtype=a.weight.dtype)
    return conv.to_empty(device=a.weight.device).train(a.training)


def _factored_pairs(gm, convs: list[ConvSite], by_name: dict[str, ConvSite]) -> list[FactoredSite]:
    """Every ``k×1 -> [activation] -> 1×k`` (or the other order) of convs called once, each conv in one pair."""
    found, used = [], set()
    for site in convs:
        if site.node is None or site.calls != 1 or site.name in used or _line(site.conv) is None:
            continue
        between, node = [], single_user(site.node)
        while node is not None and not _is_conv_node(gm, node) and is_activation(gm, node) and \
                node.args and node.args[0] is (between[-1] if between else site.node):
            between.append(node)
            node = single_user(node)
        if node is None or not _is_conv_node(gm, node) or not node.args or \
                node.args[0] is not (between[-1] if between else site.node):
            continue
        b = by_name.get(node.target)
        if b is None or b.calls != 1 or b.name in used or not is_factored(site.conv, b.conv):
            continue
        found.append(FactoredSite(site, b, between))
        used.update((site.name, b.name))
    return found


def shape_mismatch(replacement: nn.Module, input_shape: tuple[int, ...] | None,
                   output_shape: tuple[int, ...] | None) -> str | None:
    """Why ``replacement`` cannot stand in for what was seen mapping ``input_shape`` to ``output_shape``
    (C, H, W), or None when its output shape is the same (or the shapes were never seen).

    Replacements are built from a conv's attributes; a conv whose ``forward`` does more than its attributes
    say (timm's ``Conv2dSame`` pads at run time) would get a replacement of another output size."""
    if input_shape is None or output_shape is None:
        return None
    seen: list[tuple[int, ...]] = []
    handle = replacement.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[1:])))
    try:
        shape_forward(replacement, (1, *input_shape), on_retry=seen.clear)
    finally:
        handle.remove()
    got = seen[-1]
    if got == tuple(output_shape):
        return None
    fmt = "×".join
    return (f"the replacement would output {fmt(map(str, got))} instead of {fmt(map(str, output_shape))}: the "
            "conv computes its geometry in forward (e.g. timm's Conv2dSame pads at run time), which a "
            "replacement built from its attributes does not reproduce")
