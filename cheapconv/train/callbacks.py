"""Callbacks: what a training run tells the outside world, as a tiny no-op base class and three loggers.

:func:`cheapconv.distill` calls, on rank 0 only:

- ``on_start(run)`` once, before the first step (after a resume: before the first new step);
- ``on_step(run)`` after every optimiser step (keep it cheap: no host syncs);
- ``on_record(record)`` for every metrics record: ``{"kind": "step", ...}`` every ``log_every`` steps,
  ``{"kind": "epoch", ...}`` at the end of each epoch (losses by term, lr, train/val top-1/top-5,
  images/s, peak memory), ``{"kind": "end", ...}`` once;
- ``on_checkpoint(path, run)`` after each checkpoint write;
- ``on_end(run)`` when the loop finishes, is interrupted or fails.

``run`` is the live :class:`RunInfo`. Example: a callback that stops a run early::

    class StopAt(Callback):
        def on_step(self, run):
            if run.step == 100:
                run.request_stop()       # stops after this step, writing a checkpoint
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..progress import ProgressReport
from ..store.files import DiskFullError, atomic_write, is_disk_full
from .start_end import start_line

__all__ = ["Callback", "JsonlLogger", "RichProgress", "RunInfo", "TensorBoardLogger", "truncate_jsonl"]


@dataclass
class RunInfo:
    """The state of a run that callbacks may read."""

    epoch: int = 0                 # 0-based epoch in progress
    step: int = 0                  # optimiser steps done so far
    total_steps: int = 0
    steps_per_epoch: int = 0
    epochs: int = 0
    loss: str = "ce"
    last: dict[str, Any] = field(default_factory=dict)   # the latest record
    started: float = field(default_factory=time.time)
    stop_requested: bool = False

    def request_stop(self) -> None:
        """Stop at the end of the current step; a checkpoint is written, then ``KeyboardInterrupt`` raised."""
        self.stop_requested = True


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_start(self, run: RunInfo) -> None: ...

    def on_step(self, run: RunInfo) -> None: ...

    def on_record(self, record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, path: Path, run: RunInfo) -> None: ...

    def on_end(self, run: RunInfo) -> None: ...


class JsonlLogger(Callback):
    """Appends every record to a JSON-lines file (one object per line, written at once).

    The file is opened at the first record, so a run that fails before it starts (a usage error on the
    first batch) leaves no file behind and an existing file untouched. ``fresh=True`` starts the file anew
    at that point; ``resume_step=N`` first cuts it back to the records of steps up to N (the resumed
    checkpoint's step: see :func:`truncate_jsonl`), so a resumed run logs every step once.

    A write that fails (a full disk: :class:`~cheapconv.store.files.DiskFullError`) leaves no half line: a file
    this logger created or started anew is removed, one it appended to is cut back to its last whole record;
    later records are dropped.
    """

    def __init__(self, path: str | Path, *, fresh: bool = False, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.fresh, self.resume_step = fresh, resume_step
        self._file = None
        self._created = False   # this run made the file (or started it anew): a failed write removes it
        self._failed = False

    def _open(self) -> None:
        self._created = self.fresh or not self.path.exists()
        if self.fresh:
            mode = "wb"
        else:
            mode = "ab"
            if self.resume_step is not None and self.path.exists():
                truncate_jsonl(self.path, self.resume_step)
        # unbuffered: a failed write is undone at once by the size before it, never flushed again on close
        self._file = self.path.open(mode, buffering=0)
        self.fresh, self.resume_step = False, None   # later opens (after on_end) append

    def on_record(self, record: dict[str, Any]) -> None:
        if self._failed:
            return
        if self._file is None:
            self._open()
        data = (json.dumps(record) + "\n").encode("utf-8")
        fd = self._file.fileno()
        size = os.fstat(fd).st_size   # appends go to the end: the whole records written so far
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            self._undo(size)
            if is_disk_full(e):
                raise DiskFullError(f"No space left for the metrics file {str(self.path)!r}: "
                                    f"{e.strerror or e}. " + ("It was removed. " if self._created else
                                                              "Its records up to the last whole one are kept. ")
                                    + "Free some space there, or write the run's files to another disk, "
                                    "and run again.") from e
            raise

    def _undo(self, size: int) -> None:
        """After a failed write: no half line, and no file this run created (see the class docstring)."""
        self._failed = True
        file, self._file = self._file, None
        try:
            if not self._created:
                os.ftruncate(file.fileno(), size)
        except OSError:
            pass
        finally:
            file.close()
        if self._created:
            self.path.unlink(missing_ok=True)

    def on_end(self, run: RunInfo) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def truncate_jsonl(path: str | Path, step: int) -> int:
    """Cut a metrics file back to what a run resumed at ``step`` has already logged: whole, parseable records
    of steps up to ``step`` (a line cut off by a kill and records of steps after the checkpoint are dropped,
    and so is an ``end`` record, which the resumed run writes again). Returns how many lines were dropped;
    the file is rewritten atomically, and only when something is dropped."""
    path = Path(path)
    raw = path.read_bytes()
    kept, dropped = [], 0
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or rec.get("kind") == "end" or (
                isinstance(rec.get("step"), (int, float)) and rec["step"] > step):
            dropped += bool(line.strip())
            continue
        kept.append(line)
    if dropped or (raw and not raw.endswith(b"\n")):
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return dropped


class RichProgress(Callback):
    """A progress bar with ETA on stderr; the losses and accuracies of the latest record beside it.

    When stderr is not a terminal (a pipe, a log file), where a bar would print nothing until the run ends, it
    writes a line at the start, at every ~10 % of the steps (with the time left and the latest figures) and
    for each epoch and the start's evaluation instead (:class:`cheapconv.progress.ProgressReport`)."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self._progress = None
        self._task = None
        self._epoch: int | None = None
        self._lines: ProgressReport | None = None
        self._info = ""

    def on_start(self, run: RunInfo) -> None:
        console = Console(stderr=True)
        if not console.is_terminal or console.is_dumb_terminal:
            self._lines = ProgressReport({"steps": self.description}, console=console, unit="steps")
            self._lines.start("steps", run.step, run.total_steps, self._epoch_info(run))
            return

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=run.total_steps, completed=run.step,
                                             info="")
        self._epoch = None

    @staticmethod
    def _epoch_info(run: RunInfo) -> str:
        return f"epoch {run.epoch + 1}/{run.epochs}"

    def on_step(self, run: RunInfo) -> None:
        if self._lines is not None:   # a line per ~10 % of the steps
            info = self._epoch_info(run) + (f", {self._info}" if self._info else "")
            self._lines.tick("steps", run.step, run.total_steps, info)
            return
        if self._progress is None:
            return
        if run.epoch != self._epoch:   # the description changes once an epoch, not every step
            self._epoch = run.epoch
            self._progress.update(self._task, description=f"{self.description} epoch {run.epoch + 1}/{run.epochs}")
        self._progress.update(self._task, completed=run.step)

    def on_record(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "start":   # the validation figures before the first step
            self._print(start_line(record))
            return
        if self._progress is None and self._lines is None:
            return
        parts = [f"loss {record['loss']:.3f}"] if "loss" in record else []
        for split in ("train", "val"):   # mIoU for segmentation, top-1 for classification
            if f"{split}_miou" in record:
                parts.append(f"{split} mIoU {100 * record[f'{split}_miou']:.1f}%")
            elif f"{split}_top1" in record:
                parts.append(f"{split} {100 * record[f'{split}_top1']:.1f}%")
        if "images_per_s" in record:
            parts.append(f"{record['images_per_s']:.0f} img/s")
        if self._lines is not None:
            self._info = ", ".join(parts)
        else:
            self._progress.update(self._task, info="  ".join(parts))
        if record.get("kind") == "epoch":
            self._print(_epoch_line(record))

    def _print(self, line: str) -> None:
        console = self._progress.console if self._progress is not None else \
            self._lines.console if self._lines is not None else None
        if console is not None:
            console.print(line, highlight=False, markup=False, soft_wrap=True)

    def on_end(self, run: RunInfo) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._lines = None


def _epoch_line(r: dict[str, Any]) -> str:
    terms = " ".join(f"{k}={r[k]:.4f}" for k in ("loss", "ce", "at", "kd") if k in r)
    if "train_miou" in r or "val_miou" in r:   # segmentation: mIoU and pixel accuracy, no top-k
        train = f" train mIoU={100 * r['train_miou']:.2f}%" if "train_miou" in r else ""
        val = (f" val mIoU={100 * r['val_miou']:.2f}% pixel acc={100 * r.get('val_pixel_acc', 0):.2f}%"
               if "val_miou" in r else "")
    else:
        train = f" train top1={100 * r['train_top1']:.2f}%" if "train_top1" in r else ""
        val = (f" val top1={100 * r['val_top1']:.2f}% top5={100 * r['val_top5']:.2f}%" if "val_top1" in r
               else "")
    return (f"epoch {r['epoch']}: {terms} lr={r['lr']:.4g}{train}{val} {r.get('images_per_s', 0):.0f} img/s "
            f"peak {r.get('peak_mem_mb', 0):.0f} MiB")


class TensorBoardLogger(Callback):
    """Scalars of every record into TensorBoard event files (only if ``tensorboard`` is installed)."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError when tensorboard is missing

        self.writer = SummaryWriter(str(log_dir))

    def on_record(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{kind}/{key}", value, record.get("step", 0))

    def on_end(self, run: RunInfo) -> None:
        self.writer.close()
