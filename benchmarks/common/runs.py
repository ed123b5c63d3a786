"""Torch-side helpers the studies share: dataset subsets, ``cheapen`` without its notes, a step timer, eval mode
and one intra-op thread for a block of code."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import torch

import cheapconv
from cheapconv import Callback
from cheapconv.data import TensorImageDataset


def subset(data: TensorImageDataset, n: int, *, augment: bool, start: int = 0) -> TensorImageDataset:
    """Images ``start`` to ``start + n`` of ``data`` (the same tensors, not copied), with or without the
    training augmentation."""
    return TensorImageDataset(data.images[start:start + n], data.labels[start:start + n], data.info,
                              augment=augment, repeat=data.repeat)


def quiet_cheapen(model: torch.nn.Module, policy: str, **kw) -> torch.nn.Module:
    """``cheapconv.cheapen`` without its warnings: the plan's "kept: ..." notes are expected for the stem and
    the shortcuts of every network a study cheapens, and would bury its progress lines."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(model, policy, **kw)


class StepTimer(Callback):
    """The wall time of each optimiser step of ``cheapconv.distill`` (data included), in ``times``. On a GPU
    each step is synchronised first, so that a step's time is its GPU work, not its launch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_start(self, run) -> None:
        self._last = time.perf_counter()

    def on_step(self, run) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every submodule in eval mode inside the block; each one's own training flag restored afterwards (a study
    must not change the model it measures)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (the previous count restored afterwards): many tiny
    batch-1 passes, which threads do not speed up and which spinning threads slow down on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
