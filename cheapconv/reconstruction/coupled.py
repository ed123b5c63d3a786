"""Refitting the readers of thinned channel groups by least squares (issue 31 item 2).

After :func:`cheapconv.surgery.coupled.thin_groups` removed channels from a group, every layer that read them (a
conv's input columns, the classifier's input features) reads fewer channels than the teacher's did. Each such
reader is refitted, in the order the student calls them, to reproduce the teacher's same layer: its output rows
that the student keeps (all of them unless the reader also writes a thinned group), minus its bias, from the
student's own input at that layer (so a reader downstream sees the refitted readers upstream). A conv is fitted on
its input patches (:func:`.linear.conv_features`), a Linear on its input vector, with the accumulated second
moments and the ridge-regularised solution the reconstruction uses everywhere (:mod:`.linear`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..fx.groups import ChannelGroup
from .capture import call_order, eval_flags, prefix_input, prefix_output
from .linear import Moments, conv_features, dense_solution

__all__ = ["ReaderFit", "refit_readers"]


@dataclass(frozen=True)
class ReaderFit:
    """One refitted reader: its name and the calibration positions (pixels, or images for a Linear) it saw."""

    name: str
    positions: int


def _fittable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros" and \
        not isinstance(module.padding, str)


def refit_readers(student: nn.Module, teacher: nn.Module, choices: Sequence[tuple[ChannelGroup, torch.Tensor]],
                  batches: Callable[[], Iterable[torch.Tensor]]) -> list[ReaderFit]:
    """Refit, in place, every reader of the groups in ``choices`` (the ``(group, keep)`` pairs ``student`` was
    thinned with) to ``teacher``'s output at the same layer on the images ``batches()`` yields (called once per
    reader). Readers that cannot be written as one matrix (a string padding, another padding mode) are left as
    thinning made them. Returns what was refitted, in the order the student calls it."""
    rows = {name: torch.as_tensor(keep, dtype=torch.long) for group, keep in choices for name in group.writers}
    names = list(dict.fromkeys(n for group, _ in choices for n in group.readers))
    names = [n for n in names if _fittable(student.get_submodule(n))]
    fits: list[ReaderFit] = []
    with eval_flags(student, teacher), torch.no_grad():
        first = next(iter(batches()), None)
        if first is None:
            raise ValueError("the calibration data yielded no batch")
        device = next(student.parameters()).device
        called = call_order(student, [student.get_submodule(n) for n in names], first.to(device))
        for name in (names[i] for i in called):
            layer = student.get_submodule(name)
            moments = Moments()
            for x in batches():
                x = x.to(device)
                f = prefix_input(student, name, x)
                y = prefix_output(teacher, name, x.to(next(teacher.parameters()).device)).to(f)
                if name in rows:
                    y = y[:, rows[name].to(y.device)]
                if isinstance(layer, nn.Linear):
                    f, y = f.reshape(len(f), -1, 1, 1), y.reshape(len(y), -1, 1, 1)
                else:
                    f = conv_features(f, layer)
                if layer.bias is not None:
                    y = y - layer.bias.reshape(1, -1, 1, 1)
                moments.add(f, y)
            if moments.count:
                layer.weight.copy_(dense_solution(moments).reshape_as(layer.weight).to(layer.weight))
                fits.append(ReaderFit(name, moments.count))
    return fits
