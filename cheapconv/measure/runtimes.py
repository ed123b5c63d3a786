"""Latency where the model will run: torch eager, ``torch.compile``, an exported ``.pt2`` program, ONNX Runtime.

The runtime changes which students are fast (a depthwise student no faster than its teacher in eager torch
can be several times faster in ONNX Runtime), so everything that measures latency (``profile``, ``compare``,
``sweep``, the search's latency costs and budget) takes one ``runtime``: a name of
:data:`~cheapconv.extensions.RUNTIMES`, each a file in :mod:`cheapconv.measure.backends` whose docstring says what
it runs (``torch``: eager mode, the reference; ``onnxruntime``: an ONNX Runtime session of the exported graph;
...). A runtime's file registers a :class:`Runtime`: what it needs (Python modules, float32 only) and how it
makes a model runnable (a runner: :class:`~cheapconv.measure.latency.EagerRunner`, or a :class:`CheckedRunner`).

Every model is exported (compiled) **once** per runtime, with a dynamic batch dimension, by the same code
that ``cheapconv export`` uses (:mod:`cheapconv.measure.exports`). Before any pass is timed at a batch size,
the runtime's output at that size is compared with the eager model's (:class:`RuntimeRunner.check`, the
``export`` check and tolerance); a runtime that computes something else is refused
(:class:`~cheapconv.measure.exports.ExportCheckError`, whose message suggests ``--no-fold`` when BatchNorm
was folded), never timed. On CUDA, passes are timed with CUDA events (ONNX Runtime's CUDA provider: around
``session.run``, host copies included).

Per-block timings (the SLOWER flags) are measured in the runtime too: each cheap block and the layers it
replaced are exported as small graphs of their own. A block that cannot be exported on its own is skipped
with a note; then only whole-model figures are in that runtime, and the notes say so.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UsageError
from ..extensions import RUNTIMES
from ..threads import limited_threads
from .exports import EXTRA_HINT, ExportCheckError, check_outputs, flat_tensors
from .latency import EagerRunner, Latency, default_device, parse_dtype, time_side_by_side

__all__ = ["RUNTIMES", "CheckedRunner", "ReferenceTimer", "Runtime", "RunnerRequest", "check_runtime",
           "describe_runtime", "make_runner", "make_runners", "measure_in_runtime", "runner_notes"]


@dataclass(frozen=True)
class RunnerRequest:
    """How :func:`make_runner` was asked to run a model: where, in which dtype and memory format, with how many
    threads; the check's tolerances; whether exports fold BatchNorm; the model's label in messages."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    threads: int | None = None
    label: str | None = None
    atol: float = 1e-4
    rtol: float = 1e-4
    fold: bool = True


class Runtime:
    """One place a model can run, for timing: what a runtime's file registers in
    :data:`~cheapconv.extensions.RUNTIMES`.

    ``what``: one line for tables and help texts; ``title``: what :meth:`describe` calls it; ``modules``: the
    Python modules it needs; ``exports``: it times an exported file (so BatchNorm folding, ``fold``, applies);
    ``fp32_only``: it runs the float32 graph only (no autocast, no channels_last); ``per_block``: it can time a
    cheap block and the layers it replaced as small graphs of their own; ``precision``: what it computes in where
    that is not the input's dtype (``"int8"``: float32 in and out, int8 weights and activations inside).
    :meth:`check` raises a :class:`~cheapconv.errors.UsageError` for what else it needs on ``device``;
    :meth:`runner` makes a model runnable (exported or compiled once).
    """

    name: ClassVar[str] = ""
    what: ClassVar[str] = ""
    title: ClassVar[str] = ""
    modules: ClassVar[tuple[str, ...]] = ()
    exports: ClassVar[bool] = False
    fp32_only: ClassVar[bool] = False
    per_block: ClassVar[bool] = True
    precision: ClassVar[str | None] = None

    def check(self, device: torch.device) -> None:
        """Raise :class:`~cheapconv.errors.UsageError` when it cannot run on ``device`` (nothing by default)."""

    def runner(self, model: nn.Module, input_shape: tuple[int, ...], request: RunnerRequest) -> Any:
        """``model`` made runnable at (C, H, W) ``input_shape`` (see :func:`make_runner`)."""
        raise NotImplementedError

    def describe(self, threads: int, device: torch.device) -> str:
        """What was timed, for outputs: ``'<title> <torch version> (N intra-op threads)'``."""
        return f"{self.title} {torch.__version__.split('+')[0]} ({threads} intra-op threads)"

    def __repr__(self) -> str:
        return f"Runtime({self.name!r}: {self.what})"


def check_runtime(runtime: str, *, device: str | torch.device | None = None,
                  dtype: str | torch.dtype = torch.float32, channels_last: bool = False) -> Runtime:
    """The :class:`Runtime` called ``runtime``, after checking that it is installed and can run what was asked;
    otherwise a :class:`~cheapconv.errors.UsageError` that says what to install or change (an unknown name:
    the valid ones)."""
    info = RUNTIMES.get(runtime)
    for name in info.modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(f"Timing in {runtime} needs the Python package {name!r}, which is not installed: "
                             f"{EXTRA_HINT}. Or time in another runtime (--runtime torch).") from None
    the_dtype = parse_dtype(dtype)
    if info.fp32_only and (the_dtype != torch.float32 or channels_last):
        asked = ([f"--dtype {str(the_dtype).removeprefix('torch.')}"] if the_dtype != torch.float32 else []) \
            + (["--channels-last"] if channels_last else [])
        raise UsageError(f"The {runtime} runtime runs the exported float32 graph, so {' and '.join(asked)} "
                         f"{'does' if len(asked) == 1 else 'do'} not apply to it; time bf16/fp16 or "
                         "channels_last in the torch or compile runtime, or drop that option.")
    info.check(torch.device(device) if device is not None else default_device())
    return info


def describe_precision(runtime: str, dtype: str) -> str:
    """The precision of a timing for outputs: the input's ``dtype``, and what the runtime computes in where that
    differs (``'float32 input, int8 inside'``)."""
    inside = RUNTIMES.get(runtime).precision
    return dtype if inside is None else f"{dtype} input, {inside} inside"


def describe_runtime(runtime: str, threads: int | None = None, device: str | torch.device = "cpu") -> str:
    """What was timed, for outputs: e.g. ``'onnxruntime 1.31.1 (CPUExecutionProvider, 2 intra-op threads, no
    spin-waiting)'``."""
    return RUNTIMES.get(runtime).describe(int(threads or torch.get_num_threads()), torch.device(device))


class CheckedRunner:
    """What the runners of the runtimes other than eager torch share: an eager copy to check against, one check
    per input shape before that shape is timed, notes. A subclass calls :meth:`_setup` and defines
    ``adapt``, ``session`` and ``__call__`` (as :class:`~cheapconv.measure.latency.EagerRunner`)."""

    runtime = "?"

    def _setup(self, model: nn.Module, device: torch.device, label: str | None, atol: float, rtol: float):
        self.reference = EagerRunner(model, device)   # the eager model, for the checks
        self.device = device
        self.label = label or type(model).__name__
        self.atol, self.rtol = atol, rtol
        self.checks: dict[tuple[int, ...], object] = {}
        self.notes: list[str] = []

    def check(self, x: torch.Tensor):
        """Compare this runtime's output on ``x`` with the eager model's (once per shape); raise
        :class:`ExportCheckError` when it differs beyond the tolerance. Called before ``x``'s shape is timed."""
        shape = tuple(x.shape)
        if shape not in self.checks:
            with self.reference.session():
                want = [t.clone() for t in flat_tensors(self.reference(x))]
            with self.session():
                result = check_outputs(self.runtime, self._outputs, x, want, atol=self.atol, rtol=self.rtol)
            if not result.passed:
                raise ExportCheckError(f"{self.label} in {self.runtime} does not compute what it computes in "
                                       f"eager torch, so it was not timed: {result.line()}.{self._hint()}")
            self.checks[shape] = result
        return self.checks[shape]

    def _outputs(self, x: torch.Tensor) -> list:
        return flat_tensors(self(self.adapt(x)))

    def _hint(self) -> str:
        """What to try when the check fails (after the error's first sentence)."""
        return ""

    def close(self) -> None:
        pass


def make_runner(model: nn.Module, runtime: str, input_shape: tuple[int, ...], *,
                device: str | torch.device | None = None, dtype: str | torch.dtype = torch.float32,
                channels_last: bool = False, threads: int | None = None, label: str | None = None,
                atol: float = 1e-4, rtol: float = 1e-4, fold: bool = True):
    """``model`` made runnable in ``runtime`` at (C, H, W) ``input_shape``: exported (compiled) once; its
    output is checked against eager mode by the timing loop before each batch size is timed. ``fold``:
    fold BatchNorm into the convs before exporting (``pt2``, ``onnxruntime``; the others export nothing)."""
    info = check_runtime(runtime, device=device, dtype=dtype, channels_last=channels_last)
    dev = torch.device(device) if device is not None else default_device()
    request = RunnerRequest(dev, parse_dtype(dtype), channels_last, threads, label, atol, rtol, fold)
    with limited_threads(threads):
        return info.runner(model, tuple(input_shape), request)


def make_runners(models: Sequence[nn.Module], runtime: str, input_shape: tuple[int, ...], *,
                 labels: Sequence[str] | None = None, **kw) -> list:
    """:func:`make_runner` for each model (closing those already made if one fails): export each model once,
    then time the runners at as many batch sizes as needed with :func:`~cheapconv.measure.time_side_by_side`
    (each size checked against eager mode first), and close them afterwards.

    >>> from cheapconv.models import WideResNet
    >>> runners = make_runners([WideResNet(10, 1)], "torch", (3, 32, 32), labels=["wrn"])
    >>> try:
    ...     (lat,) = time_side_by_side(runners, (2, 3, 32, 32), repeats=2)
    ... finally:
    ...     for r in runners:
    ...         r.close()
    >>> lat.median_ms > 0
    True
    """
    runners: list = []
    try:
        for i, m in enumerate(models):
            runners.append(make_runner(m, runtime, input_shape, label=labels[i] if labels else None, **kw))
    except BaseException:
        for r in runners:
            r.close()
        raise
    return runners


def measure_in_runtime(models: Sequence[nn.Module], input_shape: tuple[int, ...], runtime: str = "torch", *,
                       device: str | torch.device | None = None, dtype: str | torch.dtype = torch.float32,
                       channels_last: bool = False, warmup: int = 3, repeats: int = 10, min_time_s: float = 0.0,
                       threads: int | None = None, fold: bool = True) -> list[Latency]:
    """Time ``models`` side by side in ``runtime`` on ``input_shape`` (batch included): each exported once
    (BatchNorm folded unless ``fold`` is False), checked against eager mode, then timed (see the module
    docstring).

    >>> from cheapconv.models import WideResNet
    >>> (lat,) = measure_in_runtime([WideResNet(10, 1)], (1, 3, 32, 32), "onnxruntime", repeats=3)  # doctest: +SKIP
    >>> lat.runtime, lat.median_ms > 0                                                            # doctest: +SKIP
    ('onnxruntime', True)
    """
    runners = make_runners(models, runtime, tuple(input_shape[1:]), device=device, dtype=dtype,
                           channels_last=channels_last, threads=threads, fold=fold)
    try:
        return time_side_by_side(runners, input_shape, warmup=warmup, repeats=repeats, min_time_s=min_time_s,
                                 threads=threads)
    finally:
        for r in runners:
            r.close()


def runner_notes(runners: Sequence) -> list[str]:
    """The notes of the runners (what was folded or could not be), without repeats."""
    seen: list[str] = []
    for r in runners:
        for n in getattr(r, "notes", ()):
            if n not in seen:
                seen.append(n)
    return seen



class ReferenceTimer:
    """Times model after model side by side with one reference (a sweep's teacher) in ``runtime``. The
    reference is made runnable there (exported, compiled, checked) once, at the first :meth:`time`, and
    reused; each timed model is exported once and released after its timing."""

    def __init__(self, reference: nn.Module, input_shape: tuple[int, ...], runtime: str = "torch", *,
                 batches: Sequence[int] = (1,), device: str | torch.device | None = None,
                 dtype: str | torch.dtype = torch.float32, channels_last: bool = False,
                 threads: int | None = None, warmup: int = 3, repeats: int = 10, fold: bool = True):
        self.reference, self.shape, self.runtime, self.batches = reference, tuple(input_shape), runtime, batches
        self.common = dict(device=device, dtype=dtype, channels_last=channels_last, threads=threads, fold=fold)
        self.warmup, self.repeats, self.threads = warmup, repeats, threads
        self.runner = None
        self.notes: list[str] = []

    def time(self, model: nn.Module) -> dict[int, list[Latency]]:
        """{batch: [reference's latency, model's]} for each batch."""
        if self.runner is None:
            self.runner = make_runner(self.reference, self.runtime, self.shape, label="reference", **self.common)
        other = make_runner(model, self.runtime, self.shape, **self.common)
        try:
            self.notes += [n for n in runner_notes([self.runner, other]) if n not in self.notes]
            return {b: time_side_by_side([self.runner, other], (b, *self.shape), warmup=self.warmup,
                                         repeats=self.repeats, threads=self.threads) for b in self.batches}
        finally:
            other.close()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
