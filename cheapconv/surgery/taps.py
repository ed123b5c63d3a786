"""Stage outputs ("taps") for attention transfer: found once, marked once, recorded through scoped hooks.

After fx tracing, container modules are hollow (a hook on ``layer3`` never fires), so :func:`insert_taps`
adds an identity :class:`Tap` module after each stage's output node. Untraced models (a teacher, or a
student rewritten without a graph) are recorded with forward hooks on the stage modules instead.
Either way :func:`record` is a context manager: nothing stays attached after it exits.

Stages are found in this order (first that applies):

0. dense-prediction models (a ``backbone`` child next to a ``classifier``, ``decoder`` or ``decode_head``:
   torchvision's FCN, DeepLabV3, LR-ASPP): the backbone's stages (found by these same rules on the backbone),
   then the head's (see :func:`head_stages`); auxiliary heads (``aux_*``) are left out;
1. ``model.feature_info`` (timm models, cheapconv's WRN): its modules, minus the first when that is the
   stem (timm lists the stem's conv or activation: a module holding at most one conv);
2. children named ``layer<k>`` (torchvision ResNet family);
3. a shape-based fallback: descend into the child that holds most convs (``features``, ``trunk_output``),
   run one forward (on meta tensors where possible), group its children by output resolution and dilation
   in call order (a dilated stage keeps its input's resolution but not its dilation, so DeepLab's
   dilated MobileNet stages stay apart),
   and end each group's stage at its last conv-holding child or the norms and activations right after it
   (so a plain conv trunk is tapped after its ReLU, never after a pool or the head); where the trunk is
   made of blocks, groups without a block (a bare stem conv) are left out.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch
from torch import fx, nn

from ..counting import shape_forward
from ..errors import UsageError
from ..fx.edit import insert_after
from ..fx.ops import ACT_MODULES, NORM_TYPES
from ..fx.tap import TAPS_ATTR, Tap
from ..fx.tracer import module_path_of
from ..models.inputs import example_input_for

__all__ = ["DENSE_HEADS", "find_stages", "head_stages", "insert_taps", "match_taps", "record", "taps_of"]

#: the child names that mark a dense-prediction head next to a ``backbone``
DENSE_HEADS = ("classifier", "decoder", "decode_head")


def _convs_in(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


def _feature_info_stages(model: nn.Module) -> list[str] | None:
    info = getattr(model, "feature_info", None)
    if info is None:
        return None
    entries = info.info if hasattr(info, "info") else info  # timm FeatureInfo or list of dicts
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(e["module"] for e in entries if isinstance(e, dict) and e.get("module") in modules))
    if len(names) > 2 and _convs_in(modules[names[0]]) <= 1:
        names = names[1:]  # the stem (its conv, norm or activation) is no stage
    return names if len(names) >= 2 else None


def _trunk(model: nn.Module) -> nn.Module:
    """Descend while one child holds at least 80 % of the convs and has children of its own."""
    trunk = model
    while True:
        total = _convs_in(trunk)
        children = list(trunk.named_children())
        heavy = [c for _, c in children if total and _convs_in(c) >= 0.8 * total and len(list(c.children())) > 1]
        if len(heavy) != 1 or heavy[0] is trunk:
            return trunk
        trunk = heavy[0]


def _dilation(module: nn.Module) -> int:
    """The largest dilation of the module's k×k convs (k > 1); 0 when it has none (1×1 convs do not dilate)."""
    return max((max(m.dilation) for m in module.modules()
                if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1), default=0)


def _is_dense(model: nn.Module) -> bool:
    children = dict(model.named_children())
    return "backbone" in children and any(h in children for h in DENSE_HEADS)


def head_stages(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """The decoder stages of a dense-prediction model's head children (``classifier`` etc., not ``aux_*``).

    Within each head, in order: every child that holds convs and has children of its own (an ASPP, a
    conv-norm-act block) ends a stage; a bare conv ends one at the norms and activations right after it; a
    bare conv with none after it is the final classifier and no stage. Stages whose output is not a map larger
    than 1×1 (LR-ASPP's global-pool gate) are left out, found with one forward on meta tensors."""
    found = []
    for head_name, head in model.named_children():
        if head_name not in DENSE_HEADS:
            continue
        kids = list(head.named_children())
        for i, (name, child) in enumerate(kids):
            if not _convs_in(child):
                continue
            if list(child.children()):
                found.append(f"{head_name}.{name}")
                continue
            end = i
            while end + 1 < len(kids) and isinstance(kids[end + 1][1], (*ACT_MODULES, *NORM_TYPES)):
                end += 1
            if end > i:
                found.append(f"{head_name}.{kids[end][0]}")
    if not found:
        return found
    if example_input is None:
        example_input = example_input_for(model)

    seen: dict[str, tuple[int, tuple[int, ...]]] = {}
    handles = [model.get_submodule(n).register_forward_hook(_size_hook(seen, n)) for n in found]
    try:
        shape_forward(model, tuple(example_input.shape), on_retry=seen.clear)
    finally:
        for h in handles:
            h.remove()
    return [n for n in found if n in seen and seen[n][1][0] * seen[n][1][1] > 1]


def find_stages(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """Qualified names of the modules whose outputs are the network's stage outputs (see module docstring)."""
    if _is_dense(model):
        backbone = [f"backbone.{n}" for n in find_stages(model.backbone, example_input)]
        return backbone + head_stages(model, example_input)
    names = _feature_info_stages(model)
    if names:
        return names
    layer = re.compile(r"layer\d+$")
    names = [n for n, _ in model.named_children() if layer.fullmatch(n)]
    if len(names) >= 2:
        return names
    if example_input is None:
        example_input = example_input_for(model)

    trunk = _trunk(model)
    prefix = {m: n for n, m in model.named_modules()}
    children = [(prefix[c], c) for _, c in trunk.named_children()]
    seen: dict[str, tuple[int, tuple[int, ...]]] = {}   # name -> (first call, output H×W)
    handles = [c.register_forward_hook(_size_hook(seen, n)) for n, c in children]
    try:  # shapes only, on meta tensors where possible; the model's flags and tensors stay as they are
        shape_forward(model, tuple(example_input.shape), on_retry=seen.clear)
    finally:
        for h in handles:
            h.remove()
    modules = dict(children)
    runs: list[list[str]] = []  # children in call order, grouped by output resolution and dilation
    key, last_dilation = None, 0
    for name in sorted(seen, key=lambda n: seen[n][0]):
        # children without k×k convs (pools, activations, 1×1 projections) keep the dilation before them
        last_dilation = _dilation(modules[name]) or last_dilation
        new_key = (seen[name][1], last_dilation)
        if runs and key == new_key:
            runs[-1].append(name)
        else:
            runs.append([name])
        key = new_key
    runs = [r for r in runs if any(_convs_in(modules[n]) for n in r)]
    # Where the trunk is made of blocks, resolutions without a block (a bare stem conv) are no stage.
    blocks = [r for r in runs if any(_convs_in(modules[n]) and len(list(modules[n].children())) for n in r)]
    return [_stage_end(r, modules) for r in (blocks if len(blocks) >= 2 else runs)]


def _stage_end(run: list[str], modules: dict[str, nn.Module]) -> str:
    """The last conv-holding child of a run, or the norms/activations right after it (not a pool or head)."""
    end = max(i for i, n in enumerate(run) if _convs_in(modules[n]))
    while end + 1 < len(run) and isinstance(modules[run[end + 1]], (*ACT_MODULES, *NORM_TYPES)):
        end += 1
    return run[end]


def _size_hook(seen: dict, name: str):
    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            seen[name] = (seen[name][0] if name in seen else len(seen), tuple(output.shape[-2:]))
    return hook


def insert_taps(gm: fx.GraphModule, stages: Sequence[str]) -> list[str]:
    """Add a :class:`Tap` after the output node of each stage; returns the stages that were marked."""
    gm.add_module(TAPS_ATTR, nn.ModuleDict())  # holds the taps; removed again when no stage is found
    marked = []
    nodes = list(gm.graph.nodes)
    for stage in stages:
        last = None
        for node in nodes:
            if node.op in ("call_module", "call_function", "call_method") and stage in module_path_of(node):
                last = node
        if last is None:
            continue
        insert_after(gm, last, f"{TAPS_ATTR}.{stage.replace('.', '__')}", Tap(stage))
        marked.append(stage)
    if marked:
        gm.recompile()
    else:
        delattr(gm, TAPS_ATTR)
    return marked


def taps_of(model: nn.Module) -> list[Tap]:
    return [m for m in model.modules() if isinstance(m, Tap)]


@contextlib.contextmanager
def record(model: nn.Module, stages: Sequence[str] | None = None,
           example_input: torch.Tensor | None = None) -> Iterator[list[torch.Tensor]]:
    """Collect stage outputs of every forward run inside the block, in stage order.

    >>> with record(model) as acts:   # doctest: +SKIP
    ...     logits = model(x)
    >>> [a.shape for a in acts]       # doctest: +SKIP

    The yielded list is refilled on each forward, in the order of ``stages``. Tapped models (from
    :func:`cheapconv.cheapen`) use their Tap modules; others get forward hooks on ``stages`` (default
    :func:`find_stages`), removed on exit. In a traced student (an ``fx.GraphModule``) a stage without a Tap is
    recorded at the last module call inside it; a stage that ends in a function call (an addition) there is a
    :class:`~cheapconv.errors.UsageError` saying to cheapen the teacher with that stage tapped.
    """
    acts: list[torch.Tensor] = []
    inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    taps = {t.stage: t for t in taps_of(inner)}
    names = list(stages) if stages is not None else (list(taps) or find_stages(inner, example_input))
    sink = _OrderedSink(names, acts)
    handles, tapped = [], [taps[n] for n in names if n in taps]
    for name in names:
        if name in taps:
            continue
        handles.append(_stage_module(inner, name).register_forward_hook(
            lambda m, a, out, _n=name: sink.__setitem__(_n, out)))
    for t in tapped:
        t._sink = sink
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()
        for t in tapped:
            t._sink = None


def _stage_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose forward hook sees stage ``name``'s output."""
    if not isinstance(model, fx.GraphModule):
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise UsageError(f"No module named {name!r} to tap in {type(model).__name__}; name stage outputs by "
                             "their module paths (as cheapen --dry-run and find_stages list them).") from None
    last = None
    for node in model.graph.nodes:   # containers are hollow after tracing: the stage's last module call
        if node.op in ("call_module", "call_function", "call_method") and name in module_path_of(node):
            last = node
    if last is None:
        raise UsageError(f"No stage {name!r} in the traced student: name stage outputs by their module paths in "
                         "the teacher (e.g. backbone.layer2).")
    if last.op != "call_module":
        raise UsageError(f"The stage {name!r} of the traced student ends in a function call ({last.target}), which a "
                         "hook cannot see. Cheapen the teacher with that stage tapped (cheapen(..., stages=[...])) so "
                         "that the student carries a Tap there.")
    return model.get_submodule(str(last.target))


def match_taps(teacher: nn.Module, student: nn.Module, names: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The stages attention transfer pairs up: ``(teacher stages, student stages)``, pair i with pair i.

    ``names`` given: those stages in both networks. Otherwise each network's own stages (a student's Taps,
    else :func:`find_stages`), matched by name: the stages both have, in the teacher's order (a student
    cheapened from the teacher has the teacher's stage names). Networks whose stage names have nothing in
    common are matched by position (the training loop checks that the counts and sizes agree).
    """
    if names:
        return list(names), list(names)
    t_names, s_names = _own_stages(teacher), _own_stages(student)
    common = [n for n in t_names if n in s_names]
    return (common, common) if common else (t_names, s_names)


def _own_stages(model: nn.Module) -> list[str]:
    inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    return [t.stage for t in taps_of(inner)] or find_stages(inner)


class _OrderedSink(dict):
    """Stores tap outputs by stage and mirrors them, in stage order, into the caller's list."""

    def __init__(self, order: Sequence[str], out: list):
        super().__init__()
        self.order = list(order)
        self.out = out

    def __setitem__(self, key, value):
        if key in self:  # a stage seen again: a new forward pass (whatever order the stages were named in)
            super().clear()
        super().__setitem__(key, value)
        self.out[:] = [self[k] for k in self.order if k in self]
