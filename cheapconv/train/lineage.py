"""Which checkpoints a run has at its checkpoint path, and going back one after a blow-up.

A run keeps two checkpoints: the current one at ``path`` and the one before it beside it
(:func:`~cheapconv.train.checkpoint.previous_checkpoint`). When the loss or the weights become non-finite,
the current checkpoint, written closest to the blow-up, may already hold diverging weights, so the run goes
back to the previous one (:meth:`Lineage.fall_back`). A previous checkpoint left by *another* run is never
gone back to: it is discarded at this run's first write.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import discard_previous, keep_previous, previous_checkpoint, restore_previous

__all__ = ["Lineage"]


class Lineage:
    """The steps of the checkpoint at ``path`` (``current``), of the one kept before it (``prev``) and of the
    last one this process wrote or went back to (``last_saved``); None where there is none."""

    def __init__(self, path: Path | None, *, current: int | None = None, prev: int | None = None) -> None:
        self.path, self.current, self.prev = path, current, prev
        self.last_saved = current

    @classmethod
    def of_run(cls, path: Path | None, *, resumed_from: Path | None, step: int, info: dict) -> Lineage:
        """The lineage a run starts with: a resume from the checkpoint at ``path`` continues its lineage
        (``info`` is that checkpoint's info); anything else starts a new one."""
        if path is None or resumed_from is None or path != resumed_from:
            return cls(path)
        prev = info.get("previous_step") if previous_checkpoint(path).is_file() else None
        return cls(path, current=step, prev=prev)

    def advance(self, step: int, *, write_files: bool) -> int | None:
        """Before the checkpoint of ``step`` is written: the current one becomes the previous one (kept on
        disk when ``write_files``, i.e. on rank 0). Returns the step of the previous checkpoint."""
        rotate = self.current is not None and self.current != step
        if rotate:
            self.prev = self.current
        elif self.current is None:
            self.prev = None
        self.current = step
        if write_files and self.path is not None:
            if rotate:
                keep_previous(self.path)
            elif self.prev is None:
                discard_previous(self.path)    # left by another run: never fall back to it
        return self.prev

    def fall_back(self, *, is_main: bool) -> str:
        """At a non-finite stop: go back to the checkpoint before the last one (the last may already hold
        diverging weights; it was written closest to the blow-up). Returns what the error should say."""
        cur, prev = self.current, self.prev
        if self.path is None or cur is None:
            return "No checkpoint had been written yet."
        if prev is not None and prev != cur and (not is_main or restore_previous(self.path)):
            self.current, self.prev = prev, None
            self.last_saved = prev
            return (f"The checkpoint {self.path} was set back to step {prev}, the one before the last (the "
                    f"step-{cur} checkpoint, written closer to the blow-up, was discarded): resume from it with "
                    "a lower lr (--lr), gradient clipping (--grad-clip) or fp32.")
        return (f"The last good checkpoint, {self.path} (step {cur}), is kept: resume from it with a lower lr "
                "(--lr), gradient clipping (--grad-clip) or fp32.")
