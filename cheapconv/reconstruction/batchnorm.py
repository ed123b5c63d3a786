"""BatchNorm statistics recomputed from data: a pass in train mode with ``momentum=None`` (a cumulative
average over every batch), without gradients; each layer's momentum and training flag are restored."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["batchnorms", "recalibrate"]


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that track running statistics."""
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibrate(layers: list[nn.modules.batchnorm._BatchNorm], run: Callable[[torch.Tensor], object],
                batches: Iterable[torch.Tensor], *, preserve: bool = False) -> int:
    """Reset ``layers``' running statistics and recompute them as the plain average over ``batches``, each
    passed to ``run`` (a forward of the model or block that holds the layers). Everything else keeps its
    training flag. Returns the number of batches seen.

    ``preserve=True`` also rescales each affine layer's weight and bias so that its eval-mode function is
    unchanged: a block set up in closed form (its norms the identity, say) keeps computing what it did, while
    its statistics become the data's, so that train mode (batch statistics) starts from the same function."""
    if not layers:
        return 0
    old = {id(m): (m.running_mean.clone(), m.running_var.clone()) for m in layers}
    saved = [(m, m.momentum, m.training) for m in layers]
    seen = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in batches:
                run(x)
                seen += 1
    finally:
        for m, momentum, training in saved:
            m.momentum, m.training = momentum, training
    if not seen:   # nothing was read: put the statistics back rather than leave them reset
        for m in layers:
            m.running_mean.copy_(old[id(m)][0])
            m.running_var.copy_(old[id(m)][1])
    elif preserve:
        with torch.no_grad():
            for m in layers:
                if m.affine:
                    mean0, var0 = old[id(m)]
                    std0, std1 = (var0 + m.eps).sqrt(), (m.running_var + m.eps).sqrt()
                    m.bias.add_(m.weight * (m.running_mean - mean0) / std0)
                    m.weight.mul_(std1 / std0)
    return seen
