"""``compile``: ``torch.compile`` (inductor, ``dynamic=False``: one compilation per batch size) of the model as a
user compiles it."""

from __future__ import annotations

import contextlib
import logging
import shutil

import torch
from torch import nn

from ...errors import UsageError
from ...extensions import RUNTIMES
from ..latency import EagerRunner
from ..runtimes import CheckedRunner, RunnerRequest, Runtime

__all__ = ["CompiledRunner", "Compiled"]

#: under bf16/fp16 autocast, compiled and eager kernels round differently at every layer (a deep network ends
#: up ~0.5 % apart in bf16): the check's tolerance follows the dtype's precision, still far below what a wrong
#: graph gives (a missing or doubled layer is off by tens of percent)
_AUTOCAST_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2}
#: dynamo's default recompile limit (8 per function) would let later small graphs fall back to eager mode
#: silently; raised while timing, and hitting it is an error instead of a silent fallback
_DYNAMO_LIMITS = {"recompile_limit": 4096, "accumulated_recompile_limit": 65536, "fail_on_recompile_limit_hit": True}


class CompiledRunner(CheckedRunner):
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


class Compiled(Runtime):
    """torch.compile (see the module docstring); on the CPU it needs a C++ compiler."""

    name, what, title = "compile", "torch.compile (inductor)", "torch.compile (inductor)"

    def check(self, device: torch.device) -> None:
        if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise UsageError("torch.compile (inductor) needs a C++ compiler on the CPU, and none was found (c++, "
                             "g++ or clang++). Install one (apt-get install g++), or time in another runtime.")

    def runner(self, model, input_shape, request: RunnerRequest) -> CompiledRunner:
        r = request
        return CompiledRunner(model, r.device, r.dtype, r.channels_last, label=r.label, atol=r.atol, rtol=r.rtol)


RUNTIMES.add("compile", Compiled(), help=Compiled.what)
