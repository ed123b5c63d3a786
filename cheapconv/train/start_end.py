"""Distillation never silently loses the start: a student that starts from its teacher is evaluated before the
first step and after the last, and a result worse than the start is said.

A teacher-initialised student (``cheapen(..., init="teacher")``, :func:`cheapconv.reconstruct`) can begin
close to its teacher; a short distillation at too high an lr can leave it worse than it began (issue 24: a
reconstructed EfficientNet-Lite0 student went from 78.8 % to 76.0 % in one epoch at lr 0.1), and nothing said
so. :func:`cheapconv.distill` therefore evaluates such a student on ``val_data`` before its first step (once:
a resumed run takes the figure from its checkpoint), records it as a ``start`` record in the metrics and in
``DistillResult.start``, and compares it with the figures after the last step (``DistillResult.end``):
:func:`start_end_line` says both (``val top-1 78.80 % → 77.40 %``), and :func:`check_end` warns with
:class:`StartLostWarning` when the end is worse. Neither the start's weights nor the better of the two is
kept behind the caller's back: the trained student is what the run returns.

``DistillConfig(eval_start=...)``: None (default) evaluates the start of teacher-initialised students only,
True of every student, False never. The evaluation runs in eval mode with the random generators forked, so
it changes neither the weights nor the run's trajectory.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .config import DistillConfig
from .fine_tuning import starts_from_teacher

__all__ = ["IN_PLACE", "StartLostWarning", "check_end", "headline", "lost_start_advice", "lost_start_message",
           "start_end_line", "start_line", "wants_start", "worse_than_start"]


class StartLostWarning(UserWarning):
    """Training ended with a worse validation figure than the student had before its first step."""


def wants_start(config: DistillConfig, student: nn.Module) -> bool:
    """Whether the run evaluates ``student`` before its first step: ``config.eval_start``, or (None) whether it
    starts from its teacher."""
    return starts_from_teacher(student) if config.eval_start is None else bool(config.eval_start)


def headline(figures: dict[str, Any]) -> tuple[str, str] | None:
    """The figure that says better or worse, as (key, label): mIoU for segmentation, else top-1; None when the
    figures hold neither."""
    for key, label in (("miou", "mIoU"), ("top1", "top-1")):
        if isinstance(figures.get(key), (int, float)):
            return key, label
    return None


def start_line(record: dict[str, Any]) -> str:
    """The ``start`` record as a line: ``start (before the first step): val top-1 78.80 %, loss 0.6123``."""
    figures = {k[4:]: v for k, v in record.items() if k.startswith("val_")}
    head = headline(figures)
    parts = [f"val {head[1]} {100 * figures[head[0]]:.2f} %"] if head else []
    if isinstance(figures.get("loss"), (int, float)):
        parts.append(f"loss {figures['loss']:.4f}")
    return f"start (before the first step): {', '.join(parts) or 'no validation figures'}"


def start_end_line(start: dict[str, Any] | None, end: dict[str, Any] | None) -> str | None:
    """``val top-1 78.80 % → 77.40 %`` (mIoU for segmentation) from the validation figures before the first step
    and after the last (``DistillResult.start`` / ``.end``); None unless both hold the figure."""
    head = headline(start or {})
    if head is None or headline(end or {}) != head:
        return None
    key, label = head
    return f"val {label} {100 * start[key]:.2f} % → {100 * end[key]:.2f} %"


def worse_than_start(start: dict[str, Any] | None, end: dict[str, Any] | None) -> bool | None:
    """Whether ``end``'s headline figure is below ``start``'s; None when they cannot be compared."""
    head = headline(start or {})
    if head is None or headline(end or {}) != head:
        return None
    return end[head[0]] < start[head[0]]


def lost_start_advice(config: DistillConfig, *, where_start: str) -> str:
    """What to try when training ended below the start, and where the start is (``where_start``: a sentence)."""
    lr = config.lr
    tries = [f"a lower lr (this run's peak lr was {lr:g}; try {lr / 5:g} to {lr / 2:g})",
             "fewer steps"]
    if config.grad_clip is None:
        tries.append("gradient clipping (grad_clip=1, --grad-clip 1)")
    if config.schedule != "cosine":
        tries.append("the cosine schedule, which ends at a low lr")
    return (f"Try {', '.join(tries[:-1])} or {tries[-1]}. Accuracy measured soon after fast-moving steps can also "
            f"dip because the BatchNorm running averages lag behind the weights. {where_start}")


#: where the start is, for a library caller (the command line names the files)
IN_PLACE = ("The student was trained in place; keep a copy before distill() (copy.deepcopy, cheapconv.save) to "
            "go back to its start.")


def lost_start_message(start: dict[str, Any] | None, end: dict[str, Any] | None, config: DistillConfig, *,
                       where_start: str = IN_PLACE) -> str | None:
    """The warning's text when training ended with a worse validation figure than the start (None otherwise,
    or when the two cannot be compared)."""
    if not worse_than_start(start, end):
        return None
    return (f"Training ended worse than it started: {start_end_line(start, end)} (before the first step → after "
            f"the last). {lost_start_advice(config, where_start=where_start)}")


def check_end(start: dict[str, Any] | None, end: dict[str, Any] | None, config: DistillConfig, *,
              stacklevel: int = 3) -> str | None:
    """Warn (:class:`StartLostWarning`) when training ended with a worse validation figure than the start;
    returns the message (None when the end is not worse or cannot be compared)."""
    message = lost_start_message(start, end, config)
    if message is not None:
        warnings.warn(message, StartLostWarning, stacklevel=stacklevel)
    return message
