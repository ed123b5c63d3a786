"""A training run's state, and everything around its steps: set-up, records, validation, checkpoints, tear-down.

:func:`start_run` does what :func:`cheapconv.train.loop.distill` needs before its first step, in this order:
argument checks, output-path checks (before any work), fingerprints of the data and teacher, the process
group and device, models in the run's memory format (compiled if asked), optimiser, schedule, gradient
scaler, batches, resume, callbacks. The :class:`Run` it returns holds all of it and does the work between
steps (a ``step`` record every ``log_every`` steps, the end of an epoch, checkpoints, the ``end`` record),
so that the loop itself shows only the steps.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..counting import eval_mode
from ..data import cap_workers, check_finite, default_workers
from ..errors import UsageError
from ..surgery.taps import match_taps, record
from .callbacks import Callback, JsonlLogger, RichProgress, RunInfo, TensorBoardLogger
from .checkpoint import (
    capture_rng,
    check_run_paths,
    data_fingerprint,
    discard_previous,
    model_fingerprint,
    non_finite_entries,
    refuse_fresh_start,
    save_checkpoint,
)
from .config import DistillConfig
from .distributed import (
    DistContext,
    EpochBatchSampler,
    make_train_loader,
    setup,
    teardown,
    train_batches,
)
from .finite import FiniteGuard, NonFiniteLossError
from .lineage import Lineage
from .losses import DistillationLoss
from .metrics import Meters, autocast, evaluate, peak_memory_mb
from .param_groups import parameter_groups
from .resume import emit_resume_record, resume_from
from .start_end import wants_start
from .stopping import StopSignal

__all__ = ["Run", "start_run"]


@dataclass(eq=False)
class Run:
    """What a training run holds between :func:`start_run` and :meth:`close`. ``model`` is the student as
    trained (DDP-wrapped and/or compiled), ``student`` the module itself; ``teacher`` is None when the
    objective does not use it, ``teacher_fwd`` its (compiled) forward."""

    cfg: DistillConfig
    ctx: DistContext
    loss_fn: DistillationLoss
    student: nn.Module
    model: nn.Module
    teacher: nn.Module | None
    teacher_fwd: nn.Module | None
    train_data: Dataset
    val_data: Dataset | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: EpochBatchSampler
    loader: DataLoader | None
    checkpoint: Path | None
    fingerprints: tuple[dict | None, dict | None]
    info: RunInfo = field(default_factory=RunInfo)
    lineage: Lineage = field(default_factory=lambda: Lineage(None))
    callbacks: list[Callback] = field(default_factory=list)
    step_hooks: list[Callable[[RunInfo], None]] = field(default_factory=list)   # callbacks' own on_step
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)             # settings a resume changed
    history: list[dict[str, Any]] = field(default_factory=list)                  # the epoch records
    start: dict[str, Any] | None = None   # validation figures before the first step (start_end), kept on resume

    def __post_init__(self) -> None:
        self.device = self.ctx.device
        self.fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        self.params = list(self.student.parameters())          # what gradient clipping clips
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        # stop requests are agreed on every step in one process (free), every log_every steps under torchrun
        self.sync_every = 1 if not self.ctx.distributed else self.cfg.log_every
        # a host sync is free on CPU in one process: check each loss before the weights change
        self.guard = FiniteGuard(self.ctx, self.fall_back, immediate=self.device.type == "cpu"
                                 and not self.ctx.distributed)

    # ------------------------------------------------------------------------------------ the steps

    @property
    def first_epoch(self) -> int:
        """The epoch the loop starts in; ``epochs`` (nothing left) when resuming a finished run."""
        if self.info.step >= self.info.total_steps:
            return self.info.epochs
        return self.info.step // self.steps_per_epoch

    def autocast(self):
        """The precision's autocast context (a no-op for fp32), made once and entered every step."""
        return autocast(self.device, self.cfg.precision)

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of each global batch of ``epoch`` (after the steps already done), on the device
        in the run's memory format."""
        self.sampler.set_epoch(epoch, start=self.info.step - epoch * self.steps_per_epoch)
        return self._on_device(train_batches(self.train_data, self.sampler, self.loader))

    def _on_device(self, batches: Iterator[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        dev, fmt, pin = self.device, self.fmt, self.device.type == "cuda"
        for x, y in batches:
            if x.device.type == "cpu":   # checked where it costs no device sync; the loss guard covers the rest
                step = self.info.step + 1   # the generator runs when the loop asks for this step's batch
                in_epoch = step - self.info.epoch * self.steps_per_epoch
                check_finite(x, what=f"the training batch of step {step} (batch {in_epoch} of epoch "
                                     f"{self.info.epoch + 1})")
            if pin and not x.is_pinned():
                x, y = x.pin_memory(), y.pin_memory()  # else the copy waits for the queued step
            yield x.to(dev, non_blocking=True).contiguous(memory_format=fmt), y.to(dev, non_blocking=True)

    @contextmanager
    def running(self) -> Iterator[tuple[StopSignal, list[Tensor], list[Tensor]]]:
        """Around the loop: the Ctrl-C handler, the stage outputs of both networks (lists refilled by every
        forward; empty when the objective needs none), the teacher in eval mode (its own flags restored at the
        end); callbacks told the run starts, and a resumed run's changed settings recorded."""
        with ExitStack() as stack:
            stop = stack.enter_context(StopSignal())
            taps = self.loss_fn.needs_taps
            t_names, s_names = self.tap_names() if taps else ([], [])
            s_acts = stack.enter_context(record(self.model, s_names)) if taps else []
            t_acts = stack.enter_context(record(self.teacher, t_names)) if taps and self.teacher is not None else []
            if self.teacher is not None:
                stack.enter_context(eval_mode(self.teacher))
            for cb in self.callbacks:
                cb.on_start(self.info)
            if self.changes:
                emit_resume_record(self.info.step, self.changes, self.callbacks)
            yield stop, s_acts, t_acts

    def tap_names(self) -> tuple[list[str], list[str]]:
        """The stages AT pairs up, (teacher's, student's): the objective's ``taps`` or matched by name
        (``match_taps``)."""
        taps = self.loss_fn.taps
        if self.teacher is None:
            return list(taps), list(taps)
        return match_taps(self.teacher, self.student, taps)

    # ------------------------------------------------------------------------------- between steps

    def emit(self, rec: dict[str, Any]) -> None:
        """Hand a metrics record to the callbacks; it becomes the run's latest (``info.last``)."""
        self.info.last = rec
        for cb in self.callbacks:
            cb.on_record(rec)

    def log_window(self, epoch: int, step: int, lr: float, window: Meters, started: float) -> None:
        """The ``step`` record of the steps since ``started`` (their losses checked first); resets ``window``."""
        self.guard.check()
        now = time.perf_counter()
        rec = _record("step", epoch, step, lr, window.summary(reduce=True), "train_")
        rec["images_per_s"] = rec.pop("train_n") / max(now - started, 1e-9)
        self.emit(rec)
        window.reset()

    def end_epoch(self, epoch: int, step: int, lr: float, meters: Meters, started: float) -> None:
        """The ``epoch`` record (validation at the configured interval and after the last epoch), and the
        checkpoint at the configured interval (the last epoch's is marked finished)."""
        cfg = self.cfg
        self.guard.check()
        summary = meters.summary(reduce=True)
        elapsed = time.perf_counter() - started
        rec = _record("epoch", epoch, step, lr, summary, "train_")
        rec["images_per_s"] = rec.pop("train_n") / max(elapsed, 1e-9)
        rec["epoch_time_s"] = round(elapsed, 3)
        last_epoch = epoch == self.info.epochs - 1
        if self.val_data is not None and ((epoch + 1) % cfg.eval_every == 0 or last_epoch):
            rec.update({f"val_{k}": v for k, v in self.validate().items() if k not in ("n", "iou")})
        rec["peak_mem_mb"] = round(peak_memory_mb(self.device), 1)
        self.history.append(rec)
        self.emit(rec)
        if (epoch + 1) % cfg.checkpoint_every == 0 or last_epoch:
            self.save(step, finished=last_epoch and step >= self.info.total_steps)

    def validate(self) -> dict[str, Any]:
        """The student's figures on ``val_data`` (every rank takes part under torchrun)."""
        cfg, ctx = self.cfg, self.ctx
        return evaluate(self.student, self.val_data, batch_size=max(256, cfg.batch_size), device=self.device,
                        precision=cfg.precision, channels_last=cfg.channels_last, num_workers=cfg.num_workers,
                        shard=(ctx.rank, ctx.world_size) if ctx.distributed else None)

    def evaluate_start(self) -> None:
        """Before the first step, the validation figures of a student that starts from its teacher (or as
        ``eval_start`` says): a ``start`` record, kept in the checkpoints. Not again on a resume (the checkpoint
        has them; weights past their start cannot give them). The random generators are forked, so the
        trajectory is the same with or without it."""
        if self.start is not None or self.info.step > 0 or self.val_data is None:
            return
        if not wants_start(self.cfg, self.student):
            return
        with torch.random.fork_rng(devices=[]):   # a DataLoader draws its workers' seed from the global generator
            val = self.validate()
        self.start = {k: v for k, v in val.items() if k != "iou"}
        self.emit({"kind": "start", "step": 0, "time": round(time.time(), 3),
                   **{f"val_{k}": v for k, v in self.start.items() if k != "n"}})

    def finish(self, step: int) -> dict[str, Any]:
        """The ``end`` record (the last epoch's train/val figures included); the previous checkpoint kept for
        going back is no longer needed."""
        end = {"kind": "end", "step": step, "epochs": self.info.epochs, "loss_kind": self.loss_fn.kind,
               "time_s": round(time.time() - self.info.started, 3)}
        end.update({k: v for k, v in (self.history[-1] if self.history else {}).items()
                    if k.startswith(("val_", "train_"))})
        if self.start is not None:   # the start's figures beside the end's (start_end)
            end.update({f"start_val_{k}": v for k, v in self.start.items() if k != "n"})
        self.emit(end)
        if self.checkpoint is not None and self.ctx.is_main:
            discard_previous(self.checkpoint)
        return end

    def fall_back(self) -> str:
        """After a non-finite loss or weights: see :meth:`Lineage.fall_back`."""
        return self.lineage.fall_back(is_main=self.ctx.is_main)

    def save(self, step: int, *, finished: bool = False) -> None:
        """Write the resume checkpoint (every rank takes part: RNG states are gathered to rank 0). Never
        writes non-finite weights; keeps the checkpoint it replaces as the previous one."""
        ctx, cfg = self.ctx, self.cfg
        rng = ctx.gather(capture_rng())
        if self.checkpoint is None:
            return
        state = self.student.state_dict()
        bad = non_finite_entries(state)
        if ctx.any(bool(bad)):
            where = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else " on another process"
            raise NonFiniteLossError(f"The weights became non-finite at step {step}{where}; the run stopped "
                                     f"without writing them to a checkpoint. {self.fall_back()}")
        previous = self.lineage.advance(step, write_files=ctx.is_main)
        if not ctx.is_main:
            self.lineage.last_saved = step   # as on rank 0, so that all ranks agree whether a stop must save
            return
        data_fp, teacher_fp = self.fingerprints
        info = {"loss": self.loss_fn.kind, "last": self.info.last, "world_size": ctx.world_size,
                "finished": finished, "total_steps": self.info.total_steps, "data": data_fp, "teacher": teacher_fp,
                "previous_step": previous, "start": self.start}
        spe = self.steps_per_epoch
        save_checkpoint(self.checkpoint, config_json=json.dumps(cfg.to_dict(), sort_keys=True), epoch=step // spe,
                        step=step, batch_in_epoch=step % spe, model=state, optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict(),
                        scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None, rng=rng, info=info)
        self.lineage.last_saved = step
        for cb in self.callbacks:
            cb.on_checkpoint(self.checkpoint, self.info)

    def close(self) -> None:
        """Callbacks told the run ended (however it ended); the process group left if the run joined it."""
        try:
            for cb in self.callbacks:
                cb.on_end(self.info)
        finally:
            teardown(self.ctx)


# ------------------------------------------------------------------------------------------ set-up


def start_run(teacher: nn.Module | None, student: nn.Module, train_data: Dataset, *, val_data: Dataset | None,
              config: DistillConfig, callbacks: Sequence[Callback], checkpoint: str | Path | None,
              resume: bool | str | Path, metrics_file: str | Path | None, overwrite: bool) -> Run:
    """Everything before the first step (see the module docstring); the arguments are
    :func:`~cheapconv.train.loop.distill`'s. Leaves the process group again if anything fails."""
    cfg = config
    loss_fn = DistillationLoss(cfg.objective(teacher=teacher is not None), aux_weight=cfg.aux_weight,
                               ignore_index=cfg.ignore_index)
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
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and metrics_file is None:
        metrics_file = ckpt.with_suffix(".metrics.jsonl")
    check_run_paths(ckpt, metrics_file)          # before any work, not at the first save
    if not resume and not overwrite and ckpt is not None:
        refuse_fresh_start(ckpt)
    # fingerprints of what the run trains on, recorded in the checkpoint and compared on resume
    kept = ckpt is not None or bool(resume)
    fingerprints = (data_fingerprint(train_data) if kept else None, model_fingerprint(teacher) if kept else None)

    ctx = setup(cfg.device)
    try:
        r = _build(cfg, ctx, loss_fn, teacher, student, train_data, val_data, ckpt, fingerprints)
        step, resumed, source = 0, {}, None
        if resume:
            source = Path(resume) if isinstance(resume, (str, Path)) else ckpt
            assert source is not None
            step, resumed, r.changes = resume_from(source, cfg, ctx, student, r.optimizer, r.scheduler, r.scaler,
                                                   r.steps_per_epoch, *fingerprints)
            r.checkpoint = ckpt or source
        r.lineage = Lineage.of_run(r.checkpoint, resumed_from=source, step=step, info=resumed)
        r.start = resumed.get("start")   # evaluated before the run's first step, never again
        spe = r.steps_per_epoch
        total = cfg.total_steps(spe)
        epochs = math.ceil(total / spe)
        r.info = RunInfo(epoch=min(step // spe, epochs - 1), step=step, total_steps=total, steps_per_epoch=spe,
                         epochs=epochs, loss=loss_fn.kind)
        if ctx.is_main:  # one process logs
            r.callbacks = _builtin_callbacks(cfg, loss_fn.kind, metrics_file, resume_step=step if resume else None)
            r.callbacks += list(callbacks)
        # hooks that do something: a no-op call per callback and step is not free
        r.step_hooks = [cb.on_step for cb in r.callbacks
                        if getattr(cb.on_step, "__func__", None) is not Callback.on_step]
        if step >= total and (resumed.get("last") or {}).get("kind") == "epoch":
            r.history.append(dict(resumed["last"]))   # a finished run: its last epoch record, no step to train
    except BaseException:
        teardown(ctx)
        raise
    return r


def _build(cfg: DistillConfig, ctx: DistContext, loss_fn: DistillationLoss, teacher: nn.Module | None,
           student: nn.Module, train_data: Dataset, val_data: Dataset | None, ckpt: Path | None,
           fingerprints: tuple[dict | None, dict | None]) -> Run:
    """Models on the device, optimiser, schedule, scaler and batches of a run starting at step 0."""
    dev = ctx.device
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise UsageError("precision='fp16' needs a CUDA GPU (it relies on a gradient scaler); use 'bf16' "
                         "on CPU.")
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed + ctx.rank)  # augmentation and dropout; a resume restores the saved state
    student.to(dev, memory_format=fmt).train()
    if teacher is not None:
        teacher.to(dev, memory_format=fmt)
    model = ctx.wrap(student)
    teacher_fwd = teacher
    if cfg.compile:
        model = torch.compile(model)
        teacher_fwd = torch.compile(teacher) if teacher is not None else None
    # structured blocks: weight decay scaled by their compression ratio (spec §2; structured_wd=False: plain)
    optimizer = torch.optim.SGD(parameter_groups(student, cfg.weight_decay, structured=cfg.structured_wd),
                                lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    sampler = EpochBatchSampler(len(train_data), cfg.batch_size, seed=cfg.seed, rank=ctx.rank,
                                world_size=ctx.world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_schedule(sampler.steps_per_epoch()))
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
    workers = cap_workers(cfg.num_workers) if cfg.num_workers is not None else default_workers(train_data)
    loader = make_train_loader(train_data, sampler, workers, dev)
    return Run(cfg=cfg, ctx=ctx, loss_fn=loss_fn, student=student, model=model, teacher=teacher,
               teacher_fwd=teacher_fwd, train_data=train_data, val_data=val_data, optimizer=optimizer,
               scheduler=scheduler, scaler=scaler, sampler=sampler, loader=loader, checkpoint=ckpt,
               fingerprints=fingerprints)


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
            warnings.warn("tensorboard=True but the tensorboard package is not installed "
                          "(pip install 'cheapconv[tensorboard]'); skipping it.", stacklevel=4)
    return cbs


def _record(kind: str, epoch: int, step: int, lr: float, summary: dict[str, float], prefix: str) -> dict[str, Any]:
    """A metrics record: loss terms by name (``loss`` is the total), accuracies as fractions; ``lr`` is the
    learning rate of the record's last step."""
    rec: dict[str, Any] = {"kind": kind, "epoch": epoch + 1, "step": step, "lr": lr,
                           "time": round(time.time(), 3)}
    for key, value in summary.items():
        if key == "total":
            rec["loss"] = value
        elif key.startswith("top") or key in ("n", "miou", "pixel_acc"):
            rec[prefix + key] = value
        else:
            rec[key] = value
    return rec
