"""Measured latency: the median of repeated timed forward passes after warm-up, never an estimate.

Used by :mod:`cheapconv.measure.profiler` (whole models and per-layer comparisons) and by the block search
(latency budgets). On CPU the clock is ``time.perf_counter``; on CUDA, CUDA events around each pass. The
thread count and dtype are part of the result, because both change CPU convolution speed several-fold.

Models compared with each other are timed side by side (:func:`measure_side_by_side`: one pass of each in
turn, repeated), so that load on a shared machine hits all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..counting import eval_mode
from ..errors import UsageError
from ..threads import limited_threads

#: a block counts as slower (or faster) than what it replaced only beyond this relative margin, so that
#: timing noise alone does not flag it (here, not in the profiler, because the tables print it too)
SLOWER_MARGIN = 0.05


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
    with limited_threads(threads):
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
            synchronize(device)
            start_all = time.perf_counter()
            while len(times) < repeats or (time.perf_counter() - start_all) < min_time_s:
                times.append(timed_forward(model, x, device))
        return _summary(times, int(input_shape[0]), device, dtype, channels_last)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forward(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
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


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16`` (likewise fp32, fp16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise UsageError(f"Unknown dtype {dtype!r}; valid: fp32, bf16, fp16.") from None


def default_device() -> torch.device:
    """The device at hand: the current CUDA device when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# --- timing -------------------------------------------------------------------------------------------------
def prepared_copy(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """A copy on ``device`` (channels_last if asked): measuring never moves or converts the caller's model."""
    work = copy.deepcopy(model).to(device)
    if channels_last:
        work = work.to(memory_format=torch.channels_last)
    return work


def timing_input(shape: tuple[int, ...], device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(tuple(shape), device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _summary(times: list[float], batch: int, device: torch.device, dtype: torch.dtype, channels_last: bool,
             ) -> Latency:
    """Median, quartiles and minimum of per-pass times (ms) as a :class:`Latency`."""
    times = sorted(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Latency(median_ms=statistics.median(times), q1_ms=q[0], q3_ms=q[2], min_ms=times[0],
                   repeats=len(times), batch=batch, device=str(device),
                   dtype=str(dtype).removeprefix("torch."), channels_last=channels_last,
                   threads=torch.get_num_threads())


def measure_side_by_side(models: Sequence[nn.Module], input_shape: tuple[int, ...], *,
                         device: str | torch.device | None = None, dtype: str | torch.dtype = torch.float32,
                         channels_last: bool = False, warmup: int = 3, repeats: int = 10,
                         threads: int | None = None) -> list[Latency]:
    """Time several models on the same input shape (batch included), one pass of each in turn.

    The same conventions as :func:`measure_latency` (eval mode, inference mode, autocast for
    non-fp32 dtypes, CUDA events on GPU), but interleaved: every round times each model once, starting with a
    different one each round, so drifting machine load biases none of them. Models are copied, never moved.

    >>> from cheapconv.models import WideResNet
    >>> a, b = measure_side_by_side([WideResNet(10, 1), WideResNet(10, 2)], (1, 3, 32, 32), repeats=3)
    >>> a.median_ms > 0 and b.median_ms > 0
    True
    """
    if repeats < 1 or warmup < 0:
        raise UsageError(f"repeats must be at least 1 and warmup at least 0 (got {repeats}, {warmup}).")
    device = torch.device(device) if device is not None else default_device()
    dtype = parse_dtype(dtype)
    with limited_threads(threads):
        work = [prepared_copy(m, device, channels_last) for m in models]
        x = timing_input(input_shape, device, channels_last)
        times: list[list[float]] = [[] for _ in work]
        with contextlib.ExitStack() as stack:
            for m in work:
                stack.enter_context(eval_mode(m))
            stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32))
            n = len(work)
            i = 0
            try:
                for i in range(n):
                    for _ in range(warmup):
                        work[i](x)
                synchronize(device)
                for r in range(repeats):
                    for k in range(n):
                        i = (r + k) % n
                        times[i].append(timed_forward(work[i], x, device))
            except RuntimeError as e:  # wrong input size or channels for this model: the user's to fix
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UsageError(f"Model {i + 1} ({type(models[i]).__name__}) cannot run on an input of "
                                 f"shape {tuple(input_shape)}: {first}. Give the input size it expects "
                                 "(--input-size C,H,W).") from e
        return [_summary(t, int(input_shape[0]), device, dtype, channels_last) for t in times]
