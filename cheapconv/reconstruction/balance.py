"""Rescaling a fitted block so that training moves it at a normal speed, without changing what it computes.

Why: a block fitted to its teacher in closed form and by a short optimisation lands on *some* point of a
family of equivalent weights, and the one it lands on is badly scaled for SGD. Measured on a WRN-16-2 student
with ``BG(2,M)`` blocks (issue 11): the depthwise convs came out with row norms 0.18-0.39, their BatchNorm
variances at 1e-4 to 3e-3 (near ``eps``), and the final 1×1 expand convs with row norms 13-56. A conv followed
by a BatchNorm is scale-invariant, so its effective learning rate is ``lr / ‖w‖²``: the tiny depthwise rows
moved by tens of per cent in one step at the teacher's lr 0.1, their running statistics lagged far behind the
batch statistics, and the eval-mode accuracy fell from 65 % to 10-30 % within five steps (the train-mode loss
kept falling; with the statistics re-estimated the model was at 60 %). Two exact reparametrisations fix the
scale:

- **conv → BatchNorm**: each output row of the conv is scaled to a target norm (the teacher's conv at that site:
  the norm SGD with weight decay kept it at), and the BatchNorm's running mean and variance with it, so the
  eval-mode function is unchanged (in train mode, too, up to the ``eps`` inside the normalisation);
- **BatchNorm → ReLU → conv**: ReLU is positively homogeneous, so multiplying channel ``c``'s BatchNorm weight
  and bias by ``b_c > 0`` and dividing the next conv's weights that read channel ``c`` by ``b_c`` changes
  nothing; ``b_c`` makes the two norms equal (balanced layers: what gradient descent conserves and what it
  trains best from).

The chains are found by tracing the block with :mod:`torch.fx`; a block that does not trace, or whose layers
are connected otherwise (a channel shuffle in between, a non-homogeneous activation), is left as it is.
"""

from __future__ import annotations

import torch
from torch import fx, nn

__all__ = ["balance_block"]

_HOMOGENEOUS = (nn.ReLU, nn.Identity)   # f(b·x) = b·f(x) for b > 0


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module(gm: fx.GraphModule, node: fx.Node | None) -> nn.Module | None:
    if node is None or node.op != "call_module":
        return None
    return gm.get_submodule(node.target)


def _chains(block: nn.Module) -> tuple[list[tuple[nn.Conv2d, nn.BatchNorm2d]],
                                       list[tuple[nn.BatchNorm2d, nn.Conv2d]]]:
    """(conv → BN pairs, BN → [ReLU] → conv pairs) of ``block``, in forward order; empty if it does not trace."""
    try:
        gm = fx.symbolic_trace(block)
    except Exception:   # any tracing failure: the block keeps its weights, nothing to rescale
        return [], []
    conv_bn, bn_conv = [], []
    for node in gm.graph.nodes:
        mod = _module(gm, node)
        nxt = _only_user(node) if mod is not None else None
        after = _module(gm, nxt)
        if isinstance(mod, nn.Conv2d) and isinstance(after, nn.BatchNorm2d) and after.track_running_stats \
                and after.running_var is not None:
            conv_bn.append((mod, after))
        if isinstance(mod, nn.BatchNorm2d) and mod.affine:
            if isinstance(after, _HOMOGENEOUS):
                nxt = _only_user(nxt)
                after = _module(gm, nxt)
            if isinstance(after, nn.Conv2d) and after.in_channels == mod.num_features:
                bn_conv.append((mod, after))
    return conv_bn, bn_conv


def _input_view(conv: nn.Conv2d) -> torch.Tensor:
    """The conv's weight as (groups, out per group, in per group, kh, kw): input channel c is [c // per, :, c % per]."""
    w = conv.weight
    g = conv.groups
    return w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:])


def _balance_norm_and_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    view = _input_view(conv)
    reads = view.transpose(1, 2).reshape(conv.in_channels, -1).norm(dim=1)       # ‖weights reading channel c‖
    scale = torch.sqrt(bn.weight.pow(2) + bn.bias.pow(2))
    ok = (reads > 0) & (scale > 0)
    b = torch.where(ok, torch.sqrt(reads / scale.clamp_min(1e-30)), torch.ones_like(reads))
    bn.weight.mul_(b)
    bn.bias.mul_(b)
    view.div_(b.view(conv.groups, 1, -1, *([1] * (view.dim() - 3))))


def _normalise_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, target: float) -> None:
    rows = conv.weight.reshape(conv.out_channels, -1).norm(dim=1)
    a = torch.where(rows > 0, target / rows.clamp_min(1e-30), torch.ones_like(rows))
    var = a.pow(2) * (bn.running_var + bn.eps) - bn.eps
    a = torch.where(var > bn.eps, a, torch.ones_like(a))   # never a variance at or below eps: keep that row
    conv.weight.mul_(a.view(-1, *([1] * (conv.weight.dim() - 1))))
    if conv.bias is not None:
        conv.bias.mul_(a)
    bn.running_mean.mul_(a)
    bn.running_var.copy_(a.pow(2) * (bn.running_var + bn.eps) - bn.eps)


@torch.no_grad()
def balance_block(block: nn.Module, target_norm: float) -> int:
    """Rescale ``block`` in place as the module docstring says, exactly preserving its eval-mode function.

    ``target_norm`` is the row norm every conv followed by a BatchNorm gets (a positive number). Returns the
    number of layer pairs rescaled (0: nothing in this block is rescalable)."""
    if not target_norm > 0:
        raise ValueError(f"target_norm must be positive, got {target_norm}")
    conv_bn, bn_conv = _chains(block)
    for bn, conv in bn_conv:        # first the balance between a norm and the conv after it ...
        _balance_norm_and_conv(bn, conv)
    for conv, bn in conv_bn:        # ... then each conv's own scale, which its norm absorbs
        _normalise_conv(conv, bn, target_norm)
    return len(conv_bn) + len(bn_conv)
