"""Preparing a model for deployment: taps stripped, BatchNorm folded into the convs before it, eval mode.

:func:`deployable` is what :func:`cheapconv.export` runs before exporting. It never modifies its input.

BatchNorm folding (``conv -> bn`` becomes one conv with a bias) is exact in eval mode up to float rounding:
``bn(conv(x)) = γ·(W∗x + b − μ)/√(σ²+ε) + β = (γ/√(σ²+ε))·W ∗ x + (γ·(b − μ)/√(σ²+ε) + β)``, with the running
statistics μ, σ². A BN folds only when it is fed by exactly one conv whose output nothing else reads, both are
called once, and the channel counts agree. Pre-activation networks (WRN: ``bn -> relu -> conv``) have BNs
with no conv before them; those stay, and :func:`fold_batchnorm` says which ones.

Only modules whose forward is known fold, since a subclass may compute more than its base class:

* BatchNorms: the plain ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm``, and timm's ``BatchNormAct2d``
  (EfficientNet, MobileNetV3, RegNet, ...), which computes ``act(drop(bn(x)))``: its BatchNorm part folds and
  its activation and dropout stay, as ops of their own, where it was (eval-mode dropout is the identity).
  Any other BatchNorm subclass is kept as it is, with a note naming it.
* convs: the plain ``nn.Conv1d/2d/3d`` and timm's TF-style ``'SAME'`` convs (the plain conv on a padded
  input). A BN after any other conv subclass (a weight-standardised conv, whose forward rescales the weight)
  is kept, with a note.

Folding works on the fx graph, traced *into* cheapconv's blocks (so the BNs inside ``G`` and ``B``/``BG``
blocks fold too). A model that does not trace is exported unfolded, with a note saying so.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..fx.tap import TAPS_ATTR, Tap
from ..fx.tracer import CheapTracer

_ANY_BN = nn.modules.batchnorm._BatchNorm   # every BatchNorm class of torch, and their subclasses
_PLAIN_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: BatchNorm subclasses whose eval-mode forward is the BatchNorm followed by some of their own submodules,
#: by class name (so timm is never imported here): the BatchNorm part folds, those submodules stay, in order.
#: timm's BatchNormAct2d computes ``act(drop(bn(x)))``; folding it like a plain BN would delete ``act``.
_FUSED_BNS = {"timm.layers.norm_act.BatchNormAct2d": ("drop", "act")}
#: conv subclasses whose forward is the plain conv (same weight and bias) on a padded input
_PLAIN_CONV_SUBCLASSES = {"timm.layers.conv2d_same.Conv2dSame", "timm.layers.conv2d_same.Conv2dSameExport"}


@dataclass
class FoldReport:
    """What :func:`deployable` did: the (conv, bn) pairs folded, the BNs kept, and notes.

    ``ops_kept`` names the folded BNs whose fused activation or dropout (timm's ``BatchNormAct2d``) stayed
    as ops of their own; ``enabled`` is False when folding was not asked for (then every BN is in ``kept``).
    """

    folded: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    taps_removed: int = 0
    notes: list[str] = field(default_factory=list)
    ops_kept: list[str] = field(default_factory=list)
    enabled: bool = True

    def summary(self) -> str:
        if not self.enabled:
            text = f"BatchNorm not folded (folding off): {len(self.kept)} kept"
        else:
            text = f"{len(self.folded)} BatchNorm folded into the conv before it"
            if self.ops_kept:
                text += f" ({len(self.ops_kept)} with their fused activation kept as an op of its own)"
            if self.kept:
                text += f", {len(self.kept)} kept (no plain conv feeds them alone, e.g. pre-activation BNs)"
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


def _class_name(cls: type) -> str | None:
    """``module.QualName`` of ``cls``, or None when that name does not lead back to ``cls`` itself (a
    look-alike class defined elsewhere under the same name is not the class the tables above describe)."""
    if getattr(sys.modules.get(cls.__module__), cls.__qualname__, None) is not cls:
        return None
    return f"{cls.__module__}.{cls.__qualname__}"


def _ops_after(bn: nn.Module) -> tuple[str, ...] | None:
    """The names of the submodules ``bn``'s forward applies after normalising, in order: () for a plain
    BatchNorm; None for a subclass whose forward cheapconv does not know (it must not fold)."""
    if type(bn) in _PLAIN_BNS:
        return ()
    names = _FUSED_BNS.get(_class_name(type(bn)) or "")
    if names is None or not all(isinstance(getattr(bn, n, None), nn.Module) for n in names):
        return None
    return names


def _plain_conv(conv: nn.Module | None) -> bool:
    return type(conv) in _PLAIN_CONVS or _class_name(type(conv)) in _PLAIN_CONV_SUBCLASSES


def fold_batchnorm(gm: fx.GraphModule) -> FoldReport:
    """Fold every foldable ``conv -> BatchNorm`` pair of ``gm`` in place (``gm`` must be in eval mode).

    A fused BatchNorm (timm's ``BatchNormAct2d``) folds its BatchNorm part; its activation and dropout take
    its place in the graph. BatchNorm subclasses and conv subclasses of unknown forward never fold: they are
    kept, and the report's notes name them (see the module docstring)."""
    report = FoldReport()
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    unknown_bns: dict[str, list[str]] = {}
    unknown_convs: dict[str, list[str]] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _ANY_BN):
            continue
        bn = gm.get_submodule(node.target)
        src = node.args[0] if node.args else None
        conv = gm.get_submodule(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        ok = (isinstance(conv, _PLAIN_CONVS) and len(src.users) == 1 and calls[src.target] == 1
              and calls[node.target] == 1 and bn.track_running_stats and bn.running_mean is not None
              and conv.out_channels == bn.num_features and not conv.transposed)
        after = _ops_after(bn)
        if after is None:
            unknown_bns.setdefault(type(bn).__name__, []).append(node.target)
        elif ok and not _plain_conv(conv):
            unknown_convs.setdefault(type(conv).__name__, []).append(node.target)
        if not ok or after is None or not _plain_conv(conv):
            report.kept.append(node.target)
            continue
        ops = [(n, getattr(bn, n)) for n in after if not isinstance(getattr(bn, n), nn.Identity)]
        gm.set_submodule(src.target, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        if ops:   # the node now calls the fused ops alone, on the folded conv's output
            gm.set_submodule(node.target, nn.Sequential(OrderedDict(ops)).eval())
            report.ops_kept.append(node.target)
        else:
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
        report.folded.append((src.target, node.target))
    for cls, names in unknown_bns.items():
        report.notes.append(f"{len(names)} {cls} not folded ({_first(names)}): cheapconv folds plain BatchNorms "
                            "and timm's BatchNormAct2d only, since a subclass's forward may compute more than "
                            "a BatchNorm; they are exported as they are")
    for cls, names in unknown_convs.items():
        report.notes.append(f"{len(names)} BatchNorm after a {cls} not folded ({_first(names)}): its forward "
                            "may not be a plain conv (weight standardisation rescales the weight); they are "
                            "exported as they are")
    if report.folded:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return report


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _batchnorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _ANY_BN)]


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
        report.enabled, report.kept = False, _batchnorms(work)
        return work, report
    try:
        gm = _trace_for_deploy(work, leaf_modules)
    except Exception as e:  # noqa: BLE001 - fx raises many types; the model is exported unfolded
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        report.notes.append(f"BatchNorm not folded: torch.fx cannot trace {type(model).__name__} ({first})")
        report.kept = _batchnorms(work)
        return work, report
    gm.eval()
    folded = fold_batchnorm(gm)
    report.folded, report.kept, report.ops_kept = folded.folded, folded.kept, folded.ops_kept
    report.notes += folded.notes
    return gm, report
