"""A side head: an identity on the main path that holds a head some training phases read.

ERFNet trains its encoder first, through a 1×1 output conv on the encoder's features, then the whole network;
the full network's forward never calls that conv. A head that forward never calls would be dropped from a
traced student (fx keeps only what forward uses), and the paper counts it. :class:`SideHead` keeps it in the
graph at no cost: its forward returns its input unchanged, and only inside :func:`side_outputs` does it also
compute its 1×1 conv and hand the result over. It is a registered leaf module, so tracing keeps it whole and the
data-only file format stores it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .base import register_module

__all__ = ["SideHead", "SideHeadReached", "side_outputs"]


class SideHeadReached(Exception):
    """Raised by the :class:`SideHead` that :func:`side_outputs` was told to stop at, once its head has run: the
    rest of the forward (a decoder) is not computed. ``output`` is the head's output."""

    def __init__(self, name: str, output: torch.Tensor):
        super().__init__(name)
        self.name, self.output = name, output


@register_module
class SideHead(nn.Module):
    """Identity on ``x``; inside :func:`side_outputs` also records a 1×1 conv of ``x`` (``weight``
    out×in×1×1 and ``bias``) under ``name``."""

    def __init__(self, name: str, in_channels: int, out_channels: int):
        super().__init__()
        # recorded so a saved student can be rebuilt from data alone (cheapconv.store.graph_codec)
        self.init_args = dict(name=name, in_channels=in_channels, out_channels=out_channels)
        self.name = name
        # the conv's weight and bias held directly, not as an nn.Conv2d: a head off the main path must not be
        # taken for the first conv (the one that reads the image; input checks read its channels), whatever
        # order a rebuilt model lists its modules in, nor offered as a site to replace
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.weight, self.bias = conv.weight, conv.bias
        self._sink: dict[str, torch.Tensor] | None = None
        self._stop = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sink is not None:
            self._sink[self.name] = out = F.conv2d(x, self.weight, self.bias)
            if self._stop:
                raise SideHeadReached(self.name, out)
        return x

    def extra_repr(self) -> str:
        return repr(self.name)


@contextlib.contextmanager
def side_outputs(model: nn.Module, *, stop_at: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every :class:`SideHead` of ``model`` writes its head's output into the yielded dict
    (keyed by the head's name) on each forward; nothing stays attached afterwards.

    ``stop_at``: the head of that name raises :class:`SideHeadReached` (holding its output) once it has run, so
    a forward computes only what leads to it (ERFNet's encoder training never runs the decoder).

    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), SideHead("encoder", 8, 5))
    >>> with side_outputs(m) as out:
    ...     _ = m(torch.zeros(1, 3, 8, 8))
    >>> out["encoder"].shape
    torch.Size([1, 5, 6, 6])
    """
    heads = [m for m in model.modules() if isinstance(m, SideHead)]
    sink: dict[str, torch.Tensor] = {}
    for head in heads:
        head._sink, head._stop = sink, head.name == stop_at
    try:
        yield sink
    finally:
        for head in heads:
            head._sink, head._stop = None, False
