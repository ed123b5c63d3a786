"""Measured latency: the median of repeated timed forward passes after warm-up, never an estimate.

Used by :mod:`cheapconv.profile` (whole models and per-layer comparisons) and by the block search (latency
budgets). On CPU the clock is ``time.perf_counter``; on CUDA, CUDA events around each pass. The thread count
and dtype are part of the result, because both change CPU convolution speed several-fold.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .counting import eval_mode


@dataclass(frozen=True)
class Latency:
    """Timing of one model at one input shape. Times in milliseconds per forward pass (whole batch)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    repeats: int
    batch: int
    device: str
    dtype: str
    channels_last: bool
    threads: int

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, channels_last: bool = False, warmup: int = 3,
                    repeats: int = 10, min_time_s: float = 0.0, threads: int | None = None) -> Latency:
    """Time ``model`` on a random input of ``input_shape`` (batch included) in eval mode under inference mode.

    ``dtype`` other than float32 runs under autocast (bf16 on CPU, fp16/bf16 on CUDA), the way such models
    are deployed. ``repeats`` timed passes follow ``warmup`` untimed ones; with ``min_time_s`` the loop
    continues until that much time was measured. ``threads`` sets torch's intra-op threads for the
    measurement (restored afterwards). The model's training flags are restored; it is moved to ``device`` and,
    with ``channels_last``, converted in place (pass a copy if that matters).
    """
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = model.to(device)
        x = torch.randn(tuple(input_shape), device=device)
        if channels_last and x.dim() == 4:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = dtype != torch.float32
        times: list[float] = []
        with eval_mode(model), torch.inference_mode(), \
                torch.autocast(device.type, dtype=dtype, enabled=autocast):
            for _ in range(warmup):
                model(x)
            _sync(device)
            start_all = time.perf_counter()
            while len(times) < repeats or (time.perf_counter() - start_all) < min_time_s:
                times.append(_timed(model, x, device))
        times.sort()
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
        return Latency(median_ms=statistics.median(times), q1_ms=q[0], q3_ms=q[2], min_ms=times[0],
                       repeats=len(times), batch=int(input_shape[0]), device=str(device),
                       dtype=str(dtype).removeprefix("torch."), channels_last=channels_last,
                       threads=torch.get_num_threads())
    finally:
        torch.set_num_threads(old_threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    model(x)
    return (time.perf_counter() - t0) * 1000.0
