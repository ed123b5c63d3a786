"""Preparing a model for deployment: taps stripped, BatchNorm folded into the convs before it, eval mode.

:func:`deployable` is what :func:`cheapconv.export` runs before exporting. It never modifies its input.

BatchNorm folding (``conv -> bn`` becomes one conv with a bias) is exact in eval mode up to float rounding:
``bn(conv(x)) = γ·(W∗x + b − μ)/√(σ²+ε) + β = (γ/√(σ²+ε))·W ∗ x + (γ·(b − μ)/√(σ²+ε) + β)``, with the running
statistics μ, σ². A BN folds only when it is fed by exactly one conv whose output nothing else reads, both are
called once, and the channel counts agree. Pre-activation networks (WRN: ``bn -> relu -> conv``) have BNs
with no conv before them; those stay, and :func:`fold_batchnorm` says which ones.

Folding works on the fx graph, traced *into* cheapconv's blocks (so the BNs inside ``G`` and ``B``/``BG``
blocks fold too). A model that does not trace is exported unfolded, with a note saying so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..fx.tap import TAPS_ATTR, Tap
from ..fx.tracer import CheapTracer

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class FoldReport:
    """What :func:`deployable` did: the (conv, bn) pairs folded, the BNs kept, and notes."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    taps_removed: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.folded)} BatchNorm folded into the conv before it"
        if self.kept:
            text += f", {len(self.kept)} kept (no conv feeds them alone, e.g. pre-activation BNs)"
        if self.taps_removed:
            text += f"; {self.taps_removed} taps stripped"
        return text


class _DeployTracer(CheapTracer):
    """CheapTracer that looks inside cheapconv's blocks, so their inner conv -> BN pairs can fold."""

    def __init__(self, leaf_modules=()):
        super().__init__(leaf_modules)
        self.builtin_leaves = (Tap,)


def _trace_for_deploy(model: nn.Module, leaf_modules=()) -> fx.GraphModule:
    tracer = _DeployTracer(leaf_modules)
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, getattr(model, "__class__", nn.Module).__name__)


def strip_taps(model: nn.Module) -> int:
    """Remove every :class:`~cheapconv.fx.tap.Tap` from ``model`` in place; returns how many were removed.

    In a GraphModule each Tap node's users read the Tap's input instead; elsewhere a Tap becomes nn.Identity.
    """
    removed = 0
    if isinstance(model, fx.GraphModule):
        for node in list(model.graph.nodes):
            if node.op == "call_module" and isinstance(model.get_submodule(node.target), Tap):
                node.replace_all_uses_with(node.args[0])
                model.graph.erase_node(node)
                removed += 1
        if removed:
            model.graph.lint()
            model.delete_all_unused_submodules()
            model.recompile()
        if hasattr(model, TAPS_ATTR) and not list(getattr(model, TAPS_ATTR).children()):
            delattr(model, TAPS_ATTR)
        return removed
    for name, module in list(model.named_modules()):
        if isinstance(module, Tap):
            model.set_submodule(name, nn.Identity())
            removed += 1
    return removed


def fold_batchnorm(gm: fx.GraphModule) -> FoldReport:
    """Fold every foldable ``conv -> BatchNorm`` pair of ``gm`` in place (``gm`` must be in eval mode)."""
    report = FoldReport()
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BN_TYPES):
            continue
        bn = gm.get_submodule(node.target)
        src = node.args[0] if node.args else None
        conv = gm.get_submodule(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        ok = (isinstance(conv, _CONV_TYPES) and len(src.users) == 1 and calls[src.target] == 1
              and calls[node.target] == 1 and bn.track_running_stats and bn.running_mean is not None
              and conv.out_channels == bn.num_features and not conv.transposed)
        if not ok:
            report.kept.append(node.target)
            continue
        gm.set_submodule(src.target, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        report.folded.append((src.target, node.target))
    if report.folded:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return report


def deployable(model: nn.Module, *, fold: bool = True, leaf_modules=()) -> tuple[nn.Module, FoldReport]:
    """A copy of ``model`` ready to export: eval mode, taps stripped, BatchNorm folded where possible.

    >>> from cheapconv.models import WideResNet
    >>> import cheapconv
    >>> m, report = deployable(cheapconv.cheapen(WideResNet(16, 2), "G(4)"))
    >>> len(report.folded)   # the BN inside each of the 12 grouped blocks, 6 conv1 -> bn2, the stem -> bn1
    19
    """
    work = copy.deepcopy(model).eval()
    report = FoldReport()
    report.taps_removed = strip_taps(work)
    if not fold:
        return work, report
    try:
        gm = _trace_for_deploy(work, leaf_modules)
    except Exception as e:  # noqa: BLE001 - fx raises many types; the model is exported unfolded
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        report.notes.append(f"BatchNorm not folded: torch.fx cannot trace {type(model).__name__} ({first})")
        return work, report
    gm.eval()
    folded = fold_batchnorm(gm)
    report.folded, report.kept = folded.folded, folded.kept
    return gm, report
