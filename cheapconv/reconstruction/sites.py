"""Which parts of a student replace which parts of its teacher: the sites that reconstruction fits.

A site is one plan entry that was applied: the student's block sits at the name of the first teacher conv
it replaced (``entry.convs[0]``; see :func:`cheapconv.surgery.rewrite.apply_plan`); it reads what that conv
read, and must produce what the last conv of the entry produced (the conv itself for conv-level blocks, the
second conv of the residual-branch pair for ``B``/``BG``). Sites are returned in the order the student runs
them, so reconstruction can fit each on inputs already produced by the reconstructed blocks before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from ..surgery.plans import PlanEntry
from ..surgery.teacher_init import replaced_sites
from .capture import call_order

__all__ = ["Site", "execution_order", "fitting_sites"]


@dataclass
class Site:
    """One replaced site: the student's block and the teacher modules whose input / output it must match."""

    name: str                 # the plan's label (``layer1.0.conv1`` or ``layer1.0.conv1+conv2``)
    block: nn.Module          # the student's module at ``student_path``
    student_path: str
    teacher_in: str           # teacher module whose input is the site's input
    teacher_out: str          # teacher module whose output is the site's target
    entry: PlanEntry


def fitting_sites(student: nn.Module, teacher: nn.Module) -> list[Site]:
    """The replaced sites of ``student`` (from its ``cheapconv_plan``, as
    :func:`cheapconv.surgery.teacher_init.replaced_sites` pairs them), with the module paths reconstruction
    hooks. Raises :class:`~cheapconv.errors.UsageError` for a student without a plan or a teacher that lacks a
    conv the plan names. Sites come in plan order; :func:`execution_order` sorts them as the student runs."""
    return [Site(s.name, s.student_block, s.entry.convs[0], s.entry.convs[0], s.entry.convs[-1], s.entry)
            for s in replaced_sites(student, teacher)]


def execution_order(student: nn.Module, sites: list[Site], example: torch.Tensor) -> list[Site]:
    """``sites`` sorted by the order in which ``student`` calls their blocks on ``example`` (one forward)."""
    order = call_order(student, [s.block for s in sites], example)
    called = set(order)
    missing = [s.name for i, s in enumerate(sites) if i not in called]
    if missing:
        raise UsageError(f"The student never calls the blocks of {', '.join(missing)} in forward, so they cannot "
                         "be fitted; was the student changed after cheapen?")
    return [sites[i] for i in order]
