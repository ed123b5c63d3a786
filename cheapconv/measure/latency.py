"""Measured latency: the median of repeated timed forward passes after warm-up, never an estimate.

Used by :mod:`cheapconv.measure.profiler` (whole models and per-layer comparisons) and by the block search
(latency budgets). On CPU the clock is ``time.perf_counter``; on CUDA, CUDA events around each pass. The
thread count and dtype are part of the result, because both change CPU convolution speed several-fold.

Models compared with each other are timed side by side (:func:`measure_side_by_side`: one pass of each in
turn, repeated), so that load on a shared machine hits all of them alike and their ratios stay meaningful.

One loop times every runtime (:func:`time_side_by_side`): it takes *runners*, objects that make a model
runnable in one runtime. :class:`EagerRunner` is torch eager mode (this module); the compiled, exported and
ONNX Runtime runners are in :mod:`cheapconv.measure.runtimes`. A runner offers ``check(x)`` (compare its
output with the eager model's; the loop calls it before any timed or warm-up pass), ``adapt(x)`` (the input
in the form it takes: a numpy array for ONNX Runtime), ``session()`` (the context its passes run in) and
``__call__``.
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
    runtime: str = "torch"

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
    """Time ``model`` in torch eager mode on a random input of ``input_shape`` (batch included), in eval mode
    under inference mode, on a copy (the model is never moved or converted).

    ``dtype`` other than float32 runs under autocast (bf16 on CPU, fp16/bf16 on CUDA), the way such models
    are deployed. ``repeats`` timed passes follow ``warmup`` untimed ones; with ``min_time_s`` the loop
    continues until that much time was measured. ``threads`` sets torch's intra-op threads for the
    measurement (restored afterwards). Other runtimes: :func:`cheapconv.measure.runtimes.measure_in_runtime`.
    """
    device = torch.device(device)
    with limited_threads(threads):
        runner = EagerRunner(model, device, parse_dtype(dtype), channels_last)
    (lat,) = time_side_by_side([runner], input_shape, warmup=warmup, repeats=repeats, min_time_s=min_time_s,
                               threads=threads)
    return lat


class EagerRunner:
    """torch eager mode: a copy of the model on ``device`` (channels_last if asked), run in eval mode under
    inference mode and, for a non-fp32 ``dtype``, autocast. The reference every other runtime is checked
    against, so its :meth:`check` has nothing to do."""

    runtime = "torch"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, label: str | None = None):
        self.model = prepared_copy(model, device, channels_last)
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.label = label or type(model).__name__
        self.checks: dict = {}

    def check(self, x: torch.Tensor) -> None:
        """Nothing to compare: eager mode is the reference."""

    def adapt(self, x: torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    @contextlib.contextmanager
    def session(self):
        with eval_mode(self.model), torch.inference_mode(), \
                torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            yield

    def __call__(self, x):
        return self.model(x)

    def close(self) -> None:
        """Release what the runner holds (compiled code, sessions, temporary files); eager holds nothing."""


def time_side_by_side(runners: Sequence, input_shape: tuple[int, ...], *, warmup: int = 3, repeats: int = 10,
                      min_time_s: float = 0.0, threads: int | None = None, seed: int | None = None,
                      ) -> list[Latency]:
    """Time several runners (see the module docstring) on one random input of ``input_shape`` (batch
    included), one pass of each in turn, starting with a different one each round, so that drifting machine
    load biases none of them. Each runner's ``check`` runs first, before any pass is timed: an exported graph
    that computes something else than the eager model is refused, never timed. With ``min_time_s`` the
    rounds continue until that much time was measured in all."""
    if repeats < 1 or warmup < 0:
        raise UsageError(f"repeats must be at least 1 and warmup at least 0 (got {repeats}, {warmup}).")
    if not runners:
        return []
    device = runners[0].device
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x = torch.randn(tuple(input_shape), generator=gen).to(device)
    with limited_threads(threads):
        for r in runners:
            r.check(x)
        inputs = [r.adapt(x) for r in runners]
        times: list[list[float]] = [[] for _ in runners]
        n, i = len(runners), 0
        with contextlib.ExitStack() as stack:
            for r in runners:
                stack.enter_context(r.session())
            try:
                for i in range(n):
                    for _ in range(warmup):
                        runners[i](inputs[i])
                synchronize(device)
                start, rounds = time.perf_counter(), 0
                while rounds < repeats or (time.perf_counter() - start) < min_time_s:
                    for k in range(n):
                        i = (rounds + k) % n
                        times[i].append(timed_forward(runners[i], inputs[i], device))
                    rounds += 1
            except RuntimeError as e:  # wrong input size or channels for this model: the user's to fix
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UsageError(f"Model {i + 1} ({runners[i].label}) cannot run on an input of shape "
                                 f"{tuple(input_shape)}: {first}. Give the input size it expects "
                                 "(--input-size C,H,W).") from e
        return [_summary(t, int(input_shape[0]), device, r.dtype, r.channels_last, r.runtime)
                for t, r in zip(times, runners, strict=True)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forward(model, x, device: torch.device) -> float:
    """Milliseconds of one ``model(x)``: CUDA events on a GPU, ``time.perf_counter`` on the CPU."""
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
             runtime: str = "torch") -> Latency:
    """Median, quartiles and minimum of per-pass times (ms) as a :class:`Latency`."""
    times = sorted(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Latency(median_ms=statistics.median(times), q1_ms=q[0], q3_ms=q[2], min_ms=times[0],
                   repeats=len(times), batch=batch, device=str(device),
                   dtype=str(dtype).removeprefix("torch."), channels_last=channels_last,
                   threads=torch.get_num_threads(), runtime=runtime)


def measure_side_by_side(models: Sequence[nn.Module], input_shape: tuple[int, ...], *,
                         device: str | torch.device | None = None, dtype: str | torch.dtype = torch.float32,
                         channels_last: bool = False, warmup: int = 3, repeats: int = 10,
                         threads: int | None = None) -> list[Latency]:
    """Time several models on the same input shape (batch included), one pass of each in turn.

    The same conventions as :func:`measure_latency` (eval mode, inference mode, autocast for
    non-fp32 dtypes, CUDA events on GPU), but interleaved: every round times each model once, starting with a
    different one each round, so drifting machine load biases none of them. Models are copied, never moved.

    >>> import cheapconv
    >>> teacher = cheapconv.create_model("wrn_10_1")
    >>> student = cheapconv.cheapen(teacher, "G(4)")
    >>> t, s = cheapconv.measure_side_by_side([teacher, student], (1, 3, 32, 32), repeats=3, threads=1)
    >>> speedup = t.median_ms / s.median_ms   # a same-moment ratio: load on the machine hit both alike
    >>> t.batch, t.threads, speedup > 0
    (1, 1, True)
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = parse_dtype(dtype)
    with limited_threads(threads):
        runners = [EagerRunner(m, device, dtype, channels_last) for m in models]
    return time_side_by_side(runners, input_shape, warmup=warmup, repeats=repeats, threads=threads)
