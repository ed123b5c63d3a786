"""The training loop: distil a student from a fixed teacher, or train from scratch with no teacher.

:func:`distill` shows the whole loop top to bottom: for each epoch, for each batch: teacher forward under
``inference_mode`` -> student forward -> loss terms -> backward -> (clip) -> step -> schedule -> bookkeeping,
with the logging, checkpoint and stop points after each step and the epoch's record (validation,
checkpoint) after each epoch. Everything around the steps lives in small single-purpose modules:
:mod:`cheapconv.train.run` (set-up, records, checkpoints, tear-down: the :class:`~cheapconv.train.run.Run`),
:mod:`cheapconv.train.config` (the settings), :mod:`cheapconv.train.losses` (the objectives),
:mod:`cheapconv.surgery.taps` (stage outputs), :mod:`cheapconv.train.metrics`, :mod:`cheapconv.train.checkpoint`,
:mod:`cheapconv.train.lineage`, :mod:`cheapconv.train.resume`, :mod:`cheapconv.train.finite`,
:mod:`cheapconv.train.stopping`, :mod:`cheapconv.train.checks`, :mod:`cheapconv.train.callbacks` and
:mod:`cheapconv.train.distributed`.

Before the first step, a student that starts from its teacher is evaluated on the validation data, and after
the last its figures are compared with that start (:mod:`cheapconv.train.start_end`): a run that ends worse
than it began says so.

What the spec (``moonshine.md`` sections 5-6) asks and where it happens:

- The teacher runs in eval mode under ``torch.inference_mode`` and is never updated: no autograd graph is
  built for it, its BatchNorm statistics are never touched (eval mode), and its modules' own training flags
  are restored when the run ends. (It is moved to the run's device and memory format; values unchanged.)
- Taps are matched teacher-to-student by name (the objective's ``taps``, or the stages both networks have:
  :func:`cheapconv.surgery.taps.match_taps`), by position where the names have nothing in common; different
  counts or spatial sizes are a
  :class:`~cheapconv.errors.UsageError` naming both sides' stages and sizes, raised on the first batch
  before any weight changes (:mod:`cheapconv.train.checks`).
- Checkpoints (:mod:`cheapconv.train.checkpoint`) are written atomically at the configured interval, at the end,
  and on Ctrl-C (SIGINT) or SIGTERM (:mod:`cheapconv.train.stopping`); ``resume=True`` continues exactly: on
  CPU with in-memory data an interrupted and resumed run ends with the same weights as an uninterrupted one.
  Resuming a finished run's final checkpoint trains no further step (it only hands back the trained
  student). A resume must use the same settings, data and teacher (fingerprints in the checkpoint), except
  ``lr`` and ``grad_clip``, which may be changed deliberately (a warning and a ``resume`` record in the
  metrics say so: :mod:`cheapconv.train.resume`).
- Run safety: every output path is checked before any work; a new run refuses to overwrite an unfinished
  run's checkpoint unless ``overwrite=True``; on resume the metrics file is cut back to the checkpoint's
  step (each step is logged once); the metrics file is created only by the run's first record.
- A non-finite loss stops the run with :class:`NonFiniteLossError` naming the step and the loss term
  (:mod:`cheapconv.train.finite`). A checkpoint is never written after a non-finite loss nor with non-finite
  weights, and the run goes back to the checkpoint before the last one (the last may already hold diverging
  weights), which it keeps (:mod:`cheapconv.train.lineage`).

Outputs: a model may return its logits, a dict (``out``, and ``aux`` for an auxiliary head, as torchvision's
segmentation models) or a tuple (logits first); :func:`cheapconv.train.losses.split_output` picks the
prediction, and the auxiliary head's loss is added when present. Segmentation data (masks as labels) gets
per-pixel losses and mIoU / pixel accuracy in place of top-k (:mod:`cheapconv.train.metrics`).

Per step the loop does no host sync on a GPU (loss checks and metric sums stay on the device until a
logging point), measures each batch's metrics once for both the logging window and the epoch, and calls
only the callbacks that implement ``on_step``.

Example (scratch training of a teacher, then AT distillation of its cheap student)::

    from cheapconv import DistillConfig, cheapen, create_model, distill
    from cheapconv.data import get_dataset

    train = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    test = get_dataset("fashion-mnist", "test", in_chans=3, image_size=32)
    teacher = create_model("wrn_16_2")
    distill(None, teacher, train, val_data=test, config=DistillConfig(epochs=3))
    student = cheapen(teacher, "G(4)")
    result = distill(teacher, student, train, val_data=test, config=DistillConfig(epochs=3, loss="at"))
    print(result.last["val_top1"])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import UsageError
from .callbacks import Callback
from .checks import check_inputs, check_taps
from .config import DistillConfig
from .dense import split_output
from .fine_tuning import check_start
from .finite import NonFiniteLossError
from .metrics import Meters, batch_stats
from .run import start_run
from .start_end import check_end, start_end_line, worse_than_start
from .stopping import Interrupted, StopNow, interrupted_message, stopped_message

__all__ = ["DistillResult", "Interrupted", "NonFiniteLossError", "distill"]


@dataclass
class DistillResult:
    """What :func:`distill` returns. ``last`` is the final record (validation figures included when
    ``val_data`` was given); ``history`` holds one record per epoch of this call.

    ``start`` and ``end`` are the validation figures before the first step and after the last (``{"top1",
    "top5", "loss", "n"}``, or ``miou``/``pixel_acc`` for segmentation; fractions): ``start`` is None unless
    the start was evaluated (a student that starts from its teacher, or ``eval_start=True``: see
    :mod:`cheapconv.train.start_end`), ``end`` None without ``val_data``. ``start_end`` says both
    (``"val top-1 78.80 % → 77.40 %"``); ``worse_than_start`` is True when training lost ground."""

    student: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    checkpoint: Path | None = None
    rank: int = 0
    world_size: int = 1
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None

    @property
    def start_end(self) -> str | None:
        """``"val top-1 78.80 % → 77.40 %"`` (mIoU for segmentation); None without both figures."""
        return start_end_line(self.start, self.end)

    @property
    def worse_than_start(self) -> bool | None:
        """Whether the end's headline figure (top-1, or mIoU) is below the start's; None without both."""
        return worse_than_start(self.start, self.end)


def distill(
    teacher: nn.Module | None,
    student: nn.Module,
    train_data: Dataset,
    *,
    val_data: Dataset | None = None,
    config: DistillConfig = DistillConfig(),
    callbacks: Sequence[Callback] = (),
    checkpoint: str | Path | None = None,
    resume: bool | str | Path = False,
    metrics_file: str | Path | None = None,
    overwrite: bool = False,
) -> DistillResult:
    """Train ``student`` on ``train_data``, distilling from ``teacher`` (None: from scratch).

    - ``config``: a :class:`~cheapconv.train.config.DistillConfig`; its defaults are the paper's recipe. The loss
      is ``config.loss``, an objective of :data:`~cheapconv.train.objectives.LOSSES` with its settings, by
      default ``"at"`` with a teacher and ``"ce"`` without.
    - ``train_data`` / ``val_data``: datasets yielding ``(image, label)`` (see :mod:`cheapconv.data`);
      batches are drawn as :mod:`cheapconv.train.distributed` describes (the last partial training batch of an
      epoch is dropped).
    - ``checkpoint``: the resume checkpoint to write (see :mod:`cheapconv.train.checkpoint`); None writes none.
      Metrics go, as JSON lines, to ``metrics_file`` (default: beside the checkpoint,
      ``NAME.metrics.jsonl``).
    - ``resume``: True continues from ``checkpoint``; a path continues from that file. The configuration
      must match the checkpoint's (except where/how verbosely to run: device, logging, workers,
      checkpoint interval; and ``lr`` / ``grad_clip``, which a resume may change on purpose), and so must
      the training data and the teacher; otherwise :class:`~cheapconv.errors.UsageError` lists the
      differences. Resuming a finished run trains no further step.
    - ``overwrite``: without ``resume``, an existing checkpoint of an *unfinished* run at ``checkpoint`` is
      refused (:class:`~cheapconv.errors.UsageError`) rather than silently overwritten with its metrics;
      ``overwrite=True`` starts over. A finished run's checkpoint is simply replaced.
    - The start is never lost silently: a student that starts from its teacher (``init="teacher"``,
      :func:`cheapconv.reconstruct`) is evaluated on ``val_data`` before the first step (``config.eval_start``
      chooses otherwise); the result's ``start`` / ``end`` / ``start_end`` hold the figures before and after,
      and a :class:`~cheapconv.train.start_end.StartLostWarning` says when training ended worse than it began.
    - ``callbacks``: :class:`~cheapconv.train.callbacks.Callback` objects (rank 0 only), after the built-in
      JSON-lines logger, progress bar (``config.progress``) and TensorBoard writer (``config.tensorboard``).

    ``student`` is trained in place (moved to the device) and returned in the result. Under ``torchrun``
    every process calls this function; it wraps the student in DistributedDataParallel, splits each global
    batch between the processes, and only rank 0 logs and writes the checkpoint. Raises
    :class:`NonFiniteLossError` on a NaN/inf loss and :class:`Interrupted` (a ``KeyboardInterrupt``) after
    writing a checkpoint on Ctrl-C.
    """
    if not resume:
        check_start(student, config)
    r = start_run(teacher, student, train_data, val_data=val_data, config=config, callbacks=callbacks,
                  checkpoint=checkpoint, resume=resume, metrics_file=metrics_file, overwrite=overwrite)
    cfg, info, guard, optimizer, scheduler, scaler = r.cfg, r.info, r.guard, r.optimizer, r.scheduler, r.scaler
    model, teacher_fwd, loss_fn, amp = r.model, r.teacher_fwd, r.loss_fn, r.autocast()
    step, total_steps, first_batch = info.step, info.total_steps, True
    lr = optimizer.param_groups[0]["lr"]   # the lr of the latest step, for the records
    try:
        with r.running() as (stop, s_acts, t_acts):   # Ctrl-C handler, stage-output taps, teacher in eval mode
            r.evaluate_start()   # a teacher-initialised student's figures before any step (start_end)
            for epoch in range(r.first_epoch, info.epochs):
                info.epoch = epoch
                epoch_meters, window = Meters(r.device), Meters(r.device)
                epoch_start = window_start = time.perf_counter()
                for x, y in r.batches(epoch):
                    if first_batch:
                        check_inputs(x, y, student, r.teacher, train_data)
                    with amp:
                        t_logits, t_taps = None, []
                        if teacher_fwd is not None:
                            with torch.inference_mode():   # no graph, no BN updates (eval mode)
                                t_logits, t_taps = teacher_fwd(x), t_acts
                            if not isinstance(t_logits, Tensor):   # a dict or tuple: its prediction
                                t_logits = split_output(t_logits)[0]
                        s_logits, s_aux = model(x), None
                        if not isinstance(s_logits, Tensor):   # (plain tensors pay for this test only)
                            s_logits, s_aux = split_output(s_logits)
                        if first_batch:
                            _check_prediction(s_logits, y, train_data)
                            if loss_fn.needs_taps:
                                check_taps(student, r.teacher, s_acts, t_taps)
                        loss, terms = loss_fn(s_logits, y, teacher_logits=t_logits, student_acts=s_acts,
                                              teacher_acts=t_taps, student_aux=s_aux)
                    first_batch = False
                    guard.add(step + 1, epoch, terms)   # on CPU in one process: checked now, before the step
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(r.params, cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    lr = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                    step += 1
                    info.step = step
                    stats = batch_stats(terms, s_logits, y)   # on the device, measured once for both meters
                    epoch_meters.add(stats)
                    window.add(stats)
                    for on_step in r.step_hooks:
                        on_step(info)

                    if step % cfg.log_every == 0:
                        r.log_window(epoch, step, lr, window, window_start)
                        window_start = time.perf_counter()
                    # (at the last step, the end-of-epoch checkpoint follows at once, marked finished; a stop
                    # request there lets the run finish rather than leave a finished-but-unmarked checkpoint)
                    if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and step < total_steps:
                        guard.check()
                        r.save(step)
                    if (step < total_steps and step % r.sync_every == 0
                            and r.ctx.any(stop.requested or info.stop_requested)):
                        guard.check()
                        raise StopNow()
                    if step >= total_steps:
                        break
                r.end_epoch(epoch, step, lr, epoch_meters, epoch_start)   # record, validation, checkpoint
            last = r.finish(step)
    except StopNow:
        if r.lineage.last_saved != step:
            r.save(step)
        raise Interrupted(stopped_message(step, total_steps, r.checkpoint), r.checkpoint, step) from None
    except KeyboardInterrupt:   # not at a step boundary: the last checkpoint written stays the one to resume from
        message = interrupted_message(step, total_steps, r.checkpoint, r.lineage.last_saved)
        raise Interrupted(message, r.checkpoint, step) from None
    finally:
        r.close()
    end = {k[4:]: v for k, v in last.items() if k.startswith("val_")} or None
    if r.ctx.is_main:
        check_end(r.start, end, cfg)   # a warning when training ended worse than it started
    return DistillResult(student=student, history=r.history, last=last, steps=step, checkpoint=r.checkpoint,
                         rank=r.ctx.rank, world_size=r.ctx.world_size, start=r.start, end=end)


def _check_prediction(logits: Tensor, labels: Tensor, data: Dataset) -> None:
    """Segmentation masks need a per-pixel prediction of the masks' size with a score for every class."""
    if labels.dim() < 2:
        return
    classes = getattr(getattr(data, "info", None), "num_classes", None)
    if logits.dim() != labels.dim() + 1 or logits.shape[-2:] != labels.shape[-2:]:
        raise UsageError(f"The data are segmentation masks of size {tuple(labels.shape[-2:])} but the student "
                         f"predicts a tensor of shape {tuple(logits.shape)}; a segmentation model must return "
                         "B×classes×H×W logits at the input's resolution (or a dict with them under 'out').")
    if classes is not None and logits.shape[1] != classes:
        raise UsageError(f"The student predicts {logits.shape[1]} classes per pixel but the dataset has {classes}; "
                         f"build it with num_classes={classes} (--num-classes {classes}).")
