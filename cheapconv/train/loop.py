"""The training loop: distil a student from a fixed teacher, or train from scratch with no teacher.

One function, :func:`distill`, reads top to bottom: set up (device, process group, optimiser, schedule,
resume) -> for each epoch, for each batch: teacher forward under ``inference_mode`` -> student forward ->
loss -> backward -> step -> bookkeeping -> validate, log, checkpoint. Everything it needs from elsewhere is
small and single-purpose: :mod:`cheapconv.train.config` (the settings), :mod:`cheapconv.train.losses` (the objectives),
:mod:`cheapconv.surgery.taps` (stage outputs), :mod:`cheapconv.train.metrics`, :mod:`cheapconv.train.checkpoint`,
:mod:`cheapconv.train.callbacks` and :mod:`cheapconv.train.distributed`.

What the spec (``moonshine.md`` sections 5-6) asks and where it happens here:

- The teacher runs in eval mode under ``torch.inference_mode`` and is never updated: no autograd graph is
  built for it, its BatchNorm statistics are never touched (eval mode), and its modules' own training flags
  are restored when the run ends. (It is moved to the run's device and memory format; values unchanged.)
- Taps are matched teacher-to-student by position; different counts or spatial sizes are a
  :class:`~cheapconv.errors.UsageError` naming both sides' stages and sizes, raised on the first batch
  before any weight changes.
- Checkpoints (:mod:`cheapconv.train.checkpoint`) are written atomically at the configured interval, at the end,
  and on Ctrl-C (SIGINT) or SIGTERM; ``resume=True`` continues exactly: on CPU with in-memory data an
  interrupted and resumed run ends with the same weights as an uninterrupted one. Resuming a finished run's
  final checkpoint trains no further step (it only hands back the trained student). A resume must use the
  same settings, data and teacher (fingerprints in the checkpoint), except ``lr`` and ``grad_clip``, which
  may be changed deliberately (a warning and a ``resume`` record in the metrics say so).
- Run safety: every output path is checked before any work; a new run refuses to overwrite an unfinished
  run's checkpoint unless ``overwrite=True``; on resume the metrics file is cut back to the checkpoint's
  step (each step is logged once); the metrics file is created only by the run's first record.
- A non-finite loss stops the run with :class:`NonFiniteLossError` naming the step and the loss term. A
  checkpoint is never written after a non-finite loss nor with non-finite weights, and the run goes back
  to the checkpoint before the last one (the last may already hold diverging weights), which it keeps.

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

import math
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..counting import eval_mode
from ..errors import CheapconvError, UsageError
from ..surgery.taps import find_stages, record, taps_of
from .callbacks import Callback, JsonlLogger, RichProgress, RunInfo, TensorBoardLogger
from .checkpoint import (
    capture_rng,
    check_run_paths,
    data_fingerprint,
    discard_previous,
    fingerprint_differences,
    keep_previous,
    load_checkpoint,
    model_fingerprint,
    non_finite_entries,
    previous_checkpoint,
    refuse_fresh_start,
    restore_previous,
    restore_rng,
    save_checkpoint,
)
from .config import DistillConfig
from .distributed import (
    DistContext,
    EpochBatchSampler,
    default_workers,
    make_train_loader,
    setup,
    teardown,
    train_batches,
)
from .metrics import Meters, autocast, evaluate, peak_memory_mb

__all__ = ["DistillResult", "Interrupted", "NonFiniteLossError", "distill"]


class NonFiniteLossError(CheapconvError):
    """The loss became NaN or infinite; the message names the step and the term."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, or a callback's ``request_stop``) stopped the run; ``checkpoint`` was written."""

    def __init__(self, message: str, checkpoint: Path | None, step: int) -> None:
        super().__init__(message)
        self.checkpoint, self.step = checkpoint, step

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class DistillResult:
    """What :func:`distill` returns. ``last`` is the final record (validation figures included when
    ``val_data`` was given); ``history`` holds one record per epoch of this call."""

    student: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    checkpoint: Path | None = None
    rank: int = 0
    world_size: int = 1


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
      is ``config.loss`` (``"at"``, ``"kd"``, ``"at+kd"``, ``"ce"``), by default ``"at"`` with a teacher and
      ``"ce"`` without.
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
    - ``callbacks``: :class:`~cheapconv.train.callbacks.Callback` objects (rank 0 only), after the built-in
      JSON-lines logger, progress bar (``config.progress``) and TensorBoard writer (``config.tensorboard``).

    ``student`` is trained in place (moved to the device) and returned in the result. Under ``torchrun``
    every process calls this function; it wraps the student in DistributedDataParallel, splits each global
    batch between the processes, and only rank 0 logs and writes the checkpoint. Raises
    :class:`NonFiniteLossError` on a NaN/inf loss and :class:`Interrupted` (a ``KeyboardInterrupt``) after
    writing a checkpoint on Ctrl-C.
    """
    cfg = config
    loss_fn = cfg.loss_fn(teacher=teacher is not None)
    if loss_fn.needs_teacher and teacher is None:
        raise UsageError(f"The {loss_fn.kind!r} loss distils from a teacher, but none was given. Pass a teacher, "
                         "or use loss='ce' (training from scratch).")
    if not loss_fn.needs_teacher:
        teacher = None  # the 'ce' objective never looks at it, so do not spend time running it
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if isinstance(data, DataLoader):
            raise UsageError(f"{name} must be a dataset, not a DataLoader: distill builds its own batches from "
                             "config.batch_size (split across processes under torchrun).")
    if resume and checkpoint is None and not isinstance(resume, (str, Path)):
        raise UsageError("resume=True needs the checkpoint path (checkpoint=...).")
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and metrics_file is None:
        metrics_file = ckpt_path.with_suffix(".metrics.jsonl")
    check_run_paths(ckpt_path, metrics_file)          # before any work, not at the first save
    if not resume and not overwrite and ckpt_path is not None:
        refuse_fresh_start(ckpt_path)

    # fingerprints of what the run trains on, recorded in the checkpoint and compared on resume
    data_fp = data_fingerprint(train_data) if ckpt_path is not None or resume else None
    teacher_fp = model_fingerprint(teacher) if ckpt_path is not None or resume else None

    # ------------------------------------------------------------------------------ set up
    ctx = setup(cfg.device)
    dev = ctx.device
    if cfg.precision == "fp16" and dev.type != "cuda":
        teardown(ctx)
        raise UsageError("precision='fp16' needs a CUDA GPU (it relies on a gradient scaler); use 'bf16' "
                         "on CPU.")
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed + ctx.rank)  # augmentation and dropout; a resume restores the saved state
    student.to(dev, memory_format=fmt).train()
    if teacher is not None:
        teacher.to(dev, memory_format=fmt)
    model = ctx.wrap(student)
    if cfg.compile:
        model = torch.compile(model)
        teacher_fwd = torch.compile(teacher) if teacher is not None else None
    else:
        teacher_fwd = teacher
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    sampler = EpochBatchSampler(len(train_data), cfg.batch_size, seed=cfg.seed, rank=ctx.rank,
                                world_size=ctx.world_size)
    steps_per_epoch = sampler.steps_per_epoch()
    total_steps = cfg.total_steps(steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cfg.lr_factor(s, steps_per_epoch))
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(train_data, dev)
    loader = make_train_loader(train_data, sampler, workers, dev)

    step, resumed, changes = 0, {}, {}
    own_lineage = False   # is the checkpoint file at ckpt_path the one this run continues?
    if resume:
        source = Path(resume) if isinstance(resume, (str, Path)) else ckpt_path
        assert source is not None
        try:
            step, resumed, changes = _resume(source, cfg, ctx, student, optimizer, scheduler, scaler,
                                             steps_per_epoch, data_fp, teacher_fp)
        except BaseException:
            teardown(ctx)
            raise
        ckpt_path = ckpt_path or source
        own_lineage = ckpt_path == source

    run = RunInfo(epoch=min(step // steps_per_epoch, epochs - 1), step=step, total_steps=total_steps,
                  steps_per_epoch=steps_per_epoch, epochs=epochs, loss=loss_fn.kind)
    cbs: list[Callback] = []
    if ctx.is_main:  # one process logs
        cbs = _builtin_callbacks(cfg, loss_fn.kind, metrics_file, resume_step=step if resume else None)
        cbs += list(callbacks)
    result = DistillResult(student=student, steps=step, checkpoint=ckpt_path, rank=ctx.rank,
                           world_size=ctx.world_size)
    guard = _FiniteGuard(immediate=dev.type == "cpu" and not ctx.distributed)
    sync_every = 1 if not ctx.distributed else cfg.log_every   # stop flags: free in one process
    last_saved = {"step": step if own_lineage else None}
    # the steps of the checkpoint at ckpt_path and of the one kept before it (checkpoint.previous_checkpoint)
    lineage: dict[str, int | None] = {"current": step if own_lineage else None, "prev": None}
    if own_lineage and ckpt_path is not None and previous_checkpoint(ckpt_path).is_file():
        lineage["prev"] = resumed.get("previous_step")

    def fall_back() -> str:
        """At a non-finite stop: go back to the checkpoint before the last one (the last may already hold
        diverging weights; it was written closest to the blow-up). Returns what the error should say."""
        cur, prev = lineage["current"], lineage["prev"]
        if ckpt_path is None or cur is None:
            return "No checkpoint had been written yet."
        if prev is not None and prev != cur and (not ctx.is_main or restore_previous(ckpt_path)):
            lineage["current"], lineage["prev"] = prev, None
            last_saved["step"] = prev
            return (f"The checkpoint {ckpt_path} was set back to step {prev}, the one before the last (the "
                    f"step-{cur} checkpoint, written closer to the blow-up, was discarded): resume from it with "
                    "a lower lr (--lr), gradient clipping (--grad-clip) or fp32.")
        return (f"The last good checkpoint, {ckpt_path} (step {cur}), is kept: resume from it with a lower lr "
                "(--lr), gradient clipping (--grad-clip) or fp32.")

    def save(at_step: int, *, finished: bool = False) -> None:
        """Write the resume checkpoint (every rank takes part: RNG states are gathered to rank 0). Never
        writes non-finite weights; keeps the checkpoint it replaces as the previous one."""
        rng = ctx.gather(capture_rng())
        if ckpt_path is None:
            return
        bad = non_finite_entries(student.state_dict())
        if ctx.any(bool(bad)):
            where = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else " on another process"
            raise NonFiniteLossError(f"The weights became non-finite at step {at_step}{where}; the run stopped "
                                     f"without writing them to a checkpoint. {fall_back()}")
        rotate = lineage["current"] is not None and lineage["current"] != at_step
        if rotate:
            lineage["prev"] = lineage["current"]
        elif lineage["current"] is None:
            lineage["prev"] = None
        lineage["current"] = at_step
        if not ctx.is_main:
            return
        if rotate:
            keep_previous(ckpt_path)
        elif lineage["prev"] is None:
            discard_previous(ckpt_path)    # left by another run: never fall back to it
        info = {"loss": loss_fn.kind, "last": run.last, "world_size": ctx.world_size, "finished": finished,
                "total_steps": total_steps, "data": data_fp, "teacher": teacher_fp,
                "previous_step": lineage["prev"]}
        save_checkpoint(ckpt_path, config_json=_json(cfg.to_dict()), epoch=at_step // steps_per_epoch,
                        step=at_step, batch_in_epoch=at_step % steps_per_epoch, model=student.state_dict(),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict() if scaler.is_enabled() else None, rng=rng, info=info)
        last_saved["step"] = at_step
        for cb in cbs:
            cb.on_checkpoint(ckpt_path, run)

    # ------------------------------------------------------------------------------ the loop
    stopper = _StopSignal()
    first_batch = True
    lr_used = optimizer.param_groups[0]["lr"]
    try:
        with ExitStack() as stack:
            stack.enter_context(stopper)
            s_acts = stack.enter_context(record(model)) if loss_fn.needs_taps else []
            t_acts = stack.enter_context(record(teacher)) if loss_fn.needs_taps and teacher is not None else []
            stack.enter_context(eval_mode(teacher) if teacher is not None else nullcontext())
            for cb in cbs:
                cb.on_start(run)
            if changes:
                _emit_resume_record(step, changes, cbs)
            first_epoch = step // steps_per_epoch
            if step >= total_steps:   # a finished run's final checkpoint: no step is left to train
                first_epoch = epochs
                if (resumed.get("last") or {}).get("kind") == "epoch":
                    result.history.append(dict(resumed["last"]))
            for epoch in range(first_epoch, epochs):
                run.epoch = epoch
                sampler.set_epoch(epoch, start=step - epoch * steps_per_epoch)
                epoch_meters, window = Meters(dev), Meters(dev)
                epoch_start = window_start = time.perf_counter()
                for x, y in train_batches(train_data, sampler, loader):
                    if dev.type == "cuda" and not x.is_pinned():
                        x, y = x.pin_memory(), y.pin_memory()  # else the copy waits for the queued step
                    x = x.to(dev, non_blocking=True).contiguous(memory_format=fmt)
                    y = y.to(dev, non_blocking=True)
                    if first_batch:
                        _check_inputs(x, y, student, teacher, train_data)
                    with autocast(dev, cfg.precision):
                        t_logits, t_taps = None, []
                        if teacher_fwd is not None:
                            with torch.inference_mode():   # no graph, no BN updates (eval mode)
                                t_logits = teacher_fwd(x)
                                t_taps = list(t_acts)
                        s_logits = model(x)
                        s_taps = list(s_acts)
                        if first_batch and loss_fn.needs_taps:
                            _check_taps(student, teacher, s_taps, t_taps)
                        loss, terms = loss_fn(s_logits, y, teacher_logits=t_logits, student_acts=s_taps,
                                              teacher_acts=t_taps)
                    first_batch = False
                    guard.add(step + 1, epoch, terms)
                    if guard.immediate:
                        guard.check(ctx, fall_back)   # before the weights change
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    lr_used = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                    step += 1
                    run.step = step
                    epoch_meters.update(terms, s_logits, y)
                    window.update(terms, s_logits, y)
                    for cb in cbs:
                        cb.on_step(run)

                    if step % cfg.log_every == 0:
                        guard.check(ctx, fall_back)
                        now = time.perf_counter()
                        rec = _record("step", epoch, step, lr_used, window.summary(reduce=True), "train_")
                        rec["images_per_s"] = rec.pop("train_n") / max(now - window_start, 1e-9)
                        _emit(rec, run, cbs)
                        window, window_start = Meters(dev), time.perf_counter()
                    # (at the last step, the end-of-epoch checkpoint follows at once, marked finished; a stop
                    # request there lets the run finish rather than leave a finished-but-unmarked checkpoint)
                    if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and step < total_steps:
                        guard.check(ctx, fall_back)
                        save(step)
                    if (step < total_steps and step % sync_every == 0
                            and ctx.any(stopper.requested or run.stop_requested)):
                        guard.check(ctx, fall_back)
                        raise _StopNow()
                    if step >= total_steps:
                        break

                # ---------------------------------------------------------------- end of epoch
                guard.check(ctx, fall_back)
                summary = epoch_meters.summary(reduce=True)
                elapsed = time.perf_counter() - epoch_start
                rec = _record("epoch", epoch, step, lr_used, summary, "train_")
                rec["images_per_s"] = rec.pop("train_n") / max(elapsed, 1e-9)
                rec["epoch_time_s"] = round(elapsed, 3)
                last_epoch = epoch == epochs - 1
                if val_data is not None and ((epoch + 1) % cfg.eval_every == 0 or last_epoch):
                    val = evaluate(student, val_data, batch_size=max(256, cfg.batch_size), device=dev,
                                   precision=cfg.precision, channels_last=cfg.channels_last,
                                   num_workers=cfg.num_workers,
                                   shard=(ctx.rank, ctx.world_size) if ctx.distributed else None)
                    rec.update({f"val_{k}": v for k, v in val.items() if k != "n"})
                rec["peak_mem_mb"] = round(peak_memory_mb(dev), 1)
                result.history.append(rec)
                _emit(rec, run, cbs)
                if (epoch + 1) % cfg.checkpoint_every == 0 or last_epoch:
                    save(step, finished=last_epoch and step >= total_steps)

            end = {"kind": "end", "step": step, "epochs": epochs, "loss_kind": loss_fn.kind,
                   "time_s": round(time.time() - run.started, 3)}
            end.update({k: v for k, v in (result.history[-1] if result.history else {}).items()
                        if k.startswith(("val_", "train_"))})
            result.last, result.steps = end, step
            _emit(end, run, cbs)
            if ckpt_path is not None and ctx.is_main:
                discard_previous(ckpt_path)   # the run finished: no going back needed
    except _StopNow:
        if last_saved["step"] != step:
            save(step)
        where = f"; checkpoint written to {ckpt_path} (resume with --resume)" if ckpt_path else ""
        raise Interrupted(f"Interrupted at step {step} of {total_steps}{where}.", ckpt_path, step) from None
    except KeyboardInterrupt:
        # Not raised at a step boundary by us (a second Ctrl-C, or no signal handler): the state may be
        # mid-step, so the last checkpoint written stays the one to resume from (writes are atomic).
        when = (f"after the last step ({step} of {total_steps}), while validating or writing the final "
                "checkpoint" if step >= total_steps else f"during step {step + 1}")
        if ckpt_path and last_saved["step"] is not None:
            kept = (f"; the last checkpoint ({ckpt_path}, step {last_saved['step']}) is kept: rerun with --resume "
                    "(resume=True) to continue from it")
            if last_saved["step"] >= total_steps:
                kept += " (no training step is repeated; only the final results are written)"
        else:
            kept = "; no checkpoint had been written, so a new run starts over"
        raise Interrupted(f"Interrupted {when}{kept}.", ckpt_path, step) from None
    finally:
        for cb in cbs:
            cb.on_end(run)
        teardown(ctx)
    return result


# ------------------------------------------------------------------------------------------ helpers


def _json(data: dict) -> str:
    import json

    return json.dumps(data, sort_keys=True)


def _builtin_callbacks(cfg: DistillConfig, kind: str, metrics_file: str | Path | None,
                       resume_step: int | None) -> list[Callback]:
    cbs: list[Callback] = []
    if metrics_file is not None:
        # created at the first record; a fresh run starts it anew, a resumed one cuts it back to the
        # checkpoint's step and appends
        cbs.append(JsonlLogger(Path(metrics_file), fresh=resume_step is None, resume_step=resume_step))
    if cfg.progress:
        cbs.append(RichProgress(f"distil ({kind})" if kind != "ce" else "train"))
    if cfg.tensorboard:
        try:
            cbs.append(TensorBoardLogger(Path(metrics_file).with_suffix("") if metrics_file else "runs"))
        except ImportError:
            import warnings

            warnings.warn("tensorboard=True but the tensorboard package is not installed "
                          "(pip install 'cheapconv[tensorboard]'); skipping it.",
                          stacklevel=3)
    return cbs


def _record(kind: str, epoch: int, step: int, lr: float, summary: dict[str, float], prefix: str) -> dict[str, Any]:
    """A metrics record: loss terms by name (``loss`` is the total), accuracies as fractions; ``lr`` is the
    learning rate of the record's last step."""
    rec: dict[str, Any] = {"kind": kind, "epoch": epoch + 1, "step": step, "lr": lr,
                           "time": round(time.time(), 3)}
    for key, value in summary.items():
        if key == "total":
            rec["loss"] = value
        elif key.startswith("top") or key == "n":
            rec[prefix + key] = value
        else:
            rec[key] = value
    return rec


def _emit(rec: dict[str, Any], run: RunInfo, cbs: Sequence[Callback]) -> None:
    run.last = rec
    for cb in cbs:
        cb.on_record(rec)


def _emit_resume_record(step: int, changes: dict[str, tuple[Any, Any]], cbs: Sequence[Callback]) -> None:
    """A ``resume`` record in the metrics: the settings this resumed run changed (``lr``, ``grad_clip``)."""
    rec = {"kind": "resume", "step": step, "time": round(time.time(), 3),
           "changed": {k: {"checkpoint": old, "now": new} for k, (new, old) in changes.items()}}
    for cb in cbs:
        cb.on_record(rec)


def _resume(path: Path, cfg: DistillConfig, ctx: DistContext, student: nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, steps_per_epoch: int,
            data_fp: dict | None, teacher_fp: dict | None) -> tuple[int, dict[str, Any], dict[str, tuple]]:
    """Load a checkpoint into the run's objects; returns the step to continue from, the checkpoint's info
    and the resume-adjustable settings that changed (``{name: (now, checkpoint)}``)."""
    payload = load_checkpoint(path)
    saved = DistillConfig.from_dict(__import__("json").loads(payload["config_json"]))
    info = payload.get("info") or {}
    problems = []
    diff = cfg.trajectory_diff(saved)
    if diff:
        listed = "; ".join(f"{k}: checkpoint {a_b[1]!r}, now {a_b[0]!r}" for k, a_b in sorted(diff.items()))
        problems.append(f"the training settings differ ({listed})")
    problems += fingerprint_differences(info, data_fp, teacher_fp)
    if problems:
        raise UsageError(f"Cannot resume from {str(path)!r} exactly: {'; '.join(problems)}. Resume with the "
                         "data, teacher and settings of the interrupted run (only --lr and --grad-clip may change "
                         "on a resume), or start a new run with --overwrite (overwrite=True) instead of --resume.")
    step = int(payload["step"])
    try:
        student.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise UsageError(f"The checkpoint {str(path)!r} does not fit this student: "
                         f"{str(e).strip().splitlines()[0]}") from None
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if payload.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(payload["scaler"])
    rng = payload["rng"]
    if len(rng) == ctx.world_size:
        restore_rng(rng[ctx.rank])
    else:  # a different number of processes: the data order is the same, the augmentation draws are not
        import warnings

        warnings.warn(f"The checkpoint was written by {len(rng)} process(es), this run has {ctx.world_size}: "
                      "resuming with fresh augmentation randomness (the run continues, not bit-exactly).",
                      stacklevel=3)
        torch.manual_seed(cfg.seed + ctx.rank + 7919 * payload["step"])
    changes = cfg.resume_changes(saved)
    if "lr" in changes:   # the schedule continues from the new base lr
        scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.lr
            group["lr"] = cfg.lr * cfg.lr_factor(step, steps_per_epoch)
    if changes and ctx.is_main:
        import warnings

        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (new, old) in changes.items())
        warnings.warn(f"Resuming from {str(path)!r} at step {step} with changed settings: {listed} (recorded in the "
                      "metrics file and the new checkpoints).", stacklevel=3)
    return step, info, changes


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _check_inputs(x: Tensor, y: Tensor, student: nn.Module, teacher: nn.Module | None, data: Any) -> None:
    """Channel and class-count mismatches between data and models, as errors that say how to fix them."""
    for role, m in (("student", student), ("teacher", teacher)):
        conv = _first_conv(m) if m is not None else None
        if conv is not None and conv.in_channels != x.shape[1]:
            raise UsageError(
                f"The {role} expects {conv.in_channels}-channel images but the data has {x.shape[1]} channel(s). "
                f"For grayscale data and an RGB model, load the data with in_chans={conv.in_channels} "
                f"(--in-chans {conv.in_channels}), which repeats the channel; or build the model for "
                f"{x.shape[1]}-channel input (e.g. create_model('wrn_16_2', in_chans={x.shape[1]})).")
    info = getattr(data, "info", None)
    head = next((m for m in reversed(list(student.modules())) if isinstance(m, nn.Linear)), None)
    classes = getattr(info, "num_classes", None)
    if head is not None and classes is not None and head.out_features != classes:
        raise UsageError(f"The student has {head.out_features} outputs but the dataset has {classes} classes; "
                         f"build it with num_classes={classes} (--num-classes {classes}).")
    if head is not None and int(y.max()) >= head.out_features:
        raise UsageError(f"A label ({int(y.max())}) is out of range for the student's {head.out_features} outputs.")


def _stage_names(model: nn.Module | None) -> list[str]:
    if model is None:
        return []
    taps = taps_of(model)
    if taps:
        return [t.stage for t in taps]
    inner = getattr(model, "module", model)
    try:
        return find_stages(inner)
    except Exception:  # noqa: BLE001 - only used to name stages in an error message
        return []


def _check_taps(student: nn.Module, teacher: nn.Module | None, s_taps: list[Tensor],
                t_taps: list[Tensor]) -> None:
    """Teacher and student stage outputs must pair up by position with equal spatial sizes."""
    sizes_s = [tuple(a.shape[-2:]) for a in s_taps]
    sizes_t = [tuple(a.shape[-2:]) for a in t_taps]
    if len(s_taps) == len(t_taps) and sizes_s == sizes_t and s_taps:
        return

    def describe(names: list[str], sizes: list[tuple]) -> str:
        names = names if len(names) == len(sizes) else [f"#{i}" for i in range(len(sizes))]
        return ", ".join(f"{n} ({'×'.join(map(str, s))})" for n, s in zip(names, sizes, strict=True)) or "none"

    raise UsageError(
        "Attention transfer matches teacher and student stage outputs by position, and they do not match: "
        f"student {len(s_taps)} tap(s): {describe(_stage_names(student), sizes_s)}; teacher {len(t_taps)} "
        f"tap(s): {describe(_stage_names(teacher), sizes_t)}. Both need the same number of stages with the "
        "same spatial sizes (channels may differ): cheapen the teacher itself to get a matching student, "
        "feed both the same image size, or use the 'kd' loss, which needs no taps.")


class _FiniteGuard:
    """Checks loss terms for NaN/inf: immediately (CPU, one process: a sync is free) or in batches at the
    logging points (GPU/distributed: no sync per step; the error still names the first bad step)."""

    def __init__(self, immediate: bool) -> None:
        self.immediate = immediate
        self.pending: list[tuple[int, int, dict[str, Tensor]]] = []

    def add(self, step: int, epoch: int, terms: dict[str, Tensor]) -> None:
        self.pending.append((step, epoch, terms))

    def check(self, ctx: DistContext, fall_back: Any) -> None:
        """Raise :class:`NonFiniteLossError` if a pending loss is not finite; ``fall_back()`` picks the
        checkpoint to keep and returns what the message says about it."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        names = [k for k in ("ce", "kd", "at", "total") if k in pending[0][2]]
        values = torch.stack([torch.stack([t[k].float() for k in names]) for _, _, t in pending])
        bad = ~torch.isfinite(values)
        if not ctx.any(bool(bad.any())):
            return
        kept = fall_back()
        if not bool(bad.any()):
            raise NonFiniteLossError(f"Another process saw a non-finite loss; the run stopped. {kept}")
        row = int(bad.any(dim=1).nonzero()[0])
        step, epoch, _ = pending[row]
        term = next(n for n, b in zip(names, bad[row].tolist(), strict=True) if b)
        value = values[row, names.index(term)].item()
        raise NonFiniteLossError(f"The loss term {term!r} became non-finite ({value}) at step {step} "
                                 f"(epoch {epoch + 1}); the run stopped. {kept}")


class _StopNow(Exception):
    """Internal: every rank agreed to stop at this step boundary."""


class _StopSignal:
    """While active, the first SIGINT/SIGTERM only sets ``requested`` (the loop stops at the end of the
    step and writes a checkpoint); a second one interrupts at once. Main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        import sys

        print("\nStopping after this step and writing a checkpoint (press Ctrl-C again to abort at once)...",
              file=sys.stderr, flush=True)

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
