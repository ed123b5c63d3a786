"""Latency where the model will run: torch eager, ``torch.compile``, an exported ``.pt2`` program, ONNX Runtime.

The runtime changes which students are fast (a depthwise student no faster than its teacher in eager torch
can be several times faster in ONNX Runtime), so everything that measures latency (``profile``, ``compare``,
``sweep``, the search's latency costs and budget) takes one ``runtime``:

============== ==============================================================================================
``torch``      eager mode, the model as it is (the reference the others are checked against)
``compile``    ``torch.compile`` (inductor, ``dynamic=False``: one compilation per batch size), of the model as
               a user compiles it
``pt2``        ``torch.export`` of the deployable copy (eval mode, taps stripped, BatchNorm folded unless
               ``fold=False``/``--no-fold``: what ``cheapconv export --format pt2`` writes), run as
               ``torch.export.load(path).module()``
``onnxruntime`` the same copy exported to ONNX (what ``cheapconv export --format onnx`` writes), run in an
               onnxruntime session (CPU execution provider, or CUDA's), ``threads`` intra-op threads that
               do not spin-wait between runs (spinning sessions timed in turn take the cores from each other)
============== ==============================================================================================

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

import contextlib
import copy
import importlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..threads import limited_threads
from .exports import EXTRA_HINT, LOADERS, ExportCheckError, check_outputs, flat_tensors, write_export
from .latency import EagerRunner, Latency, default_device, parse_dtype, time_side_by_side

__all__ = ["RUNTIMES", "CompiledRunner", "ExportedRunner", "Runtime", "check_runtime", "describe_runtime",
           "ReferenceTimer", "make_runner", "make_runners", "measure_in_runtime", "runner_notes"]


@dataclass(frozen=True)
class Runtime:
    """One place a model can run, for timing."""

    name: str
    what: str                       # one line for tables and help texts
    modules: tuple[str, ...] = ()   # Python modules it needs
    fp32_only: bool = False         # runs the exported fp32 graph: no autocast, no channels_last
    per_block: bool = True          # can time a cheap block and the layers it replaced as small graphs


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("torch", "torch eager mode"),
    Runtime("compile", "torch.compile (inductor)"),
    Runtime("pt2", "torch.export program, run as torch.export.load(...).module()", fp32_only=True),
    Runtime("onnxruntime", "ONNX Runtime session of the exported ONNX graph", ("onnx", "onnxscript", "onnxruntime"),
            fp32_only=True),
)}

#: dynamo's default recompile limit (8 per function) would let later small graphs fall back to eager mode
#: silently; raised while timing, and hitting it is an error instead of a silent fallback
#: under bf16/fp16 autocast, compiled and eager kernels round differently at every layer (a deep network ends
#: up ~0.5 % apart in bf16): the check's tolerance follows the dtype's precision, still far below what a wrong
#: graph gives (a missing or doubled layer is off by tens of percent)
_AUTOCAST_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2}
_DYNAMO_LIMITS = {"recompile_limit": 4096, "accumulated_recompile_limit": 65536, "fail_on_recompile_limit_hit": True}


def check_runtime(runtime: str, *, device: str | torch.device | None = None,
                  dtype: str | torch.dtype = torch.float32, channels_last: bool = False) -> Runtime:
    """The :class:`Runtime` called ``runtime``, after checking that it is installed and can run what was asked;
    otherwise a :class:`~cheapconv.errors.UsageError` that says what to install or change."""
    if runtime not in RUNTIMES:
        raise UsageError(f"Unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}.")
    info = RUNTIMES[runtime]
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
    dev = torch.device(device) if device is not None else default_device()
    if runtime == "compile" and dev.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise UsageError("torch.compile (inductor) needs a C++ compiler on the CPU, and none was found (c++, g++ "
                         "or clang++). Install one (apt-get install g++), or time in another runtime.")
    return info


def describe_runtime(runtime: str, threads: int | None = None, device: str | torch.device = "cpu") -> str:
    """What was timed, for outputs: e.g. ``'onnxruntime 1.31.1 (CPUExecutionProvider, 2 intra-op threads, no
    spin-waiting)'``."""
    n = int(threads or torch.get_num_threads())
    if runtime == "onnxruntime":
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if torch.device(device).type == "cuda" else "CPUExecutionProvider"
        return f"onnxruntime {ort.__version__} ({provider}, {n} intra-op threads, no spin-waiting)"
    what = {"torch": "torch eager", "compile": "torch.compile (inductor)", "pt2": "torch.export .pt2"}[runtime]
    return f"{what} {torch.__version__.split('+')[0]} ({n} intra-op threads)"


class _CheckedRunner:
    """What the compiled and exported runners share: an eager copy to check against, one check per input
    shape before that shape is timed, notes."""

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


class CompiledRunner(_CheckedRunner):
    """``torch.compile(copy of the model, dynamic=False)``, run in eval mode under inference mode (and
    autocast for a non-fp32 ``dtype``). Compilation happens at the first pass of each batch size: in the
    check, before any timing."""

    runtime = "compile"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, label: str | None = None, atol: float = 1e-4, rtol: float = 1e-4):
        self._setup(model, device, label, atol, rtol)
        self.eager = EagerRunner(model, device, dtype, channels_last)
        self.dtype, self.channels_last = dtype, channels_last
        self.compiled = torch.compile(self.eager.model, dynamic=False)
        if dtype != torch.float32:  # autocast changes the numbers: compare with eager under the same autocast
            self.reference = self.eager
            tol = _AUTOCAST_TOLERANCE.get(dtype, 1e-2)
            self.atol, self.rtol = max(atol, tol), max(rtol, tol)

    def adapt(self, x):
        return self.eager.adapt(x)

    @contextlib.contextmanager
    def session(self):
        # inductor's C++ builder warns on every CPU-only machine that it found no CUDA runtime: not news here
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with self.eager.session(), torch._dynamo.config.patch(_DYNAMO_LIMITS):
                yield
        finally:
            quiet.setLevel(level)

    def __call__(self, x):
        return self.compiled(x)

    def close(self) -> None:
        self.compiled = None


class ExportedRunner(_CheckedRunner):
    """The deployable copy of a model (:func:`cheapconv.surgery.fold.deployable`) exported as ``format``
    (``pt2`` or ``onnx``) with a dynamic batch, loaded back once, and run from that (the file is deleted once
    loaded: onnxruntime and torch.export hold the program in memory)."""

    dtype, channels_last = torch.float32, False

    def __init__(self, model: nn.Module, format: str, input_shape: tuple[int, ...], device: torch.device, *,
                 threads: int | None = None, label: str | None = None, fold: bool = True, atol: float = 1e-4,
                 rtol: float = 1e-4, leaf_modules=()):
        from ..surgery.fold import deployable

        self._setup(model, device, label, atol, rtol)
        self.runtime = {"onnx": "onnxruntime"}.get(format, format)
        self.format = format
        work = model
        param = next(iter(model.parameters()), None)
        if param is not None and (param.device.type != "cpu" or param.dtype != torch.float32):
            work = _cpu_float_copy(model)  # export on the CPU in float32; the caller's model stays
        prepared, folding = deployable(work, fold=fold, leaf_modules=leaf_modules)
        self.notes += folding.notes
        self.folded = len(folding.folded)
        self.bn_ops_kept = len(folding.ops_kept)
        example = torch.randn((2, *input_shape))
        with tempfile.TemporaryDirectory(prefix="cheapconv-runtime-") as tmp:
            path = str(Path(tmp) / f"model.{format}")
            write_export(prepared, format, example, path, label=self.label,
                         then=f"It cannot be timed in {self.runtime}.",
                         instead="Time it in another runtime (--runtime torch or compile)")
            loader = LOADERS[format]
            self.run = loader(path, device=device, threads=threads) if format == "onnx" else loader(path, device)
        self._session = getattr(self.run, "session", None)
        self._module = getattr(self.run, "module", None)
        if self._session is not None:
            self._input_name = self._session.get_inputs()[0].name

    def adapt(self, x):
        return x.detach().cpu().numpy() if self._session is not None else x

    @contextlib.contextmanager
    def session(self):
        with torch.inference_mode():
            yield

    def __call__(self, x):
        if self._session is not None:
            return self._session.run(None, {self._input_name: x})
        return self._module(x) if self._module is not None else self.run(x)

    def _outputs(self, x: torch.Tensor) -> list:
        return self.run(x)

    def _hint(self) -> str:
        if not self.folded:
            return ""
        return (f" {self.folded} BatchNorms were folded into the convs before them for {self.runtime}: time it "
                "without folding (--no-fold; fold=False in Python) to see whether folding is the cause.")

    def close(self) -> None:
        self.run = self._session = self._module = None


def _cpu_float_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().float()


def make_runner(model: nn.Module, runtime: str, input_shape: tuple[int, ...], *,
                device: str | torch.device | None = None, dtype: str | torch.dtype = torch.float32,
                channels_last: bool = False, threads: int | None = None, label: str | None = None,
                atol: float = 1e-4, rtol: float = 1e-4, fold: bool = True):
    """``model`` made runnable in ``runtime`` at (C, H, W) ``input_shape``: exported (compiled) once; its
    output is checked against eager mode by the timing loop before each batch size is timed. ``fold``:
    fold BatchNorm into the convs before exporting (``pt2``, ``onnxruntime``; the others export nothing)."""
    check_runtime(runtime, device=device, dtype=dtype, channels_last=channels_last)
    dev = torch.device(device) if device is not None else default_device()
    the_dtype = parse_dtype(dtype)
    with limited_threads(threads):
        if runtime == "torch":
            return EagerRunner(model, dev, the_dtype, channels_last, label=label)
        if runtime == "compile":
            return CompiledRunner(model, dev, the_dtype, channels_last, label=label, atol=atol, rtol=rtol)
        fmt = "onnx" if runtime == "onnxruntime" else runtime
        return ExportedRunner(model, fmt, tuple(input_shape), dev, threads=threads, label=label, atol=atol,
                              rtol=rtol, fold=fold)


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
