"""``onnxruntime``: the deployable copy exported to ONNX (what ``cheapconv export --format onnx`` writes), run in
an onnxruntime session (CPU execution provider, or CUDA's), ``threads`` intra-op threads that do not spin-wait
between runs (spinning sessions timed in turn take the cores from each other)."""

from __future__ import annotations

import torch

from ...extensions import RUNTIMES
from ..runtimes import RunnerRequest, Runtime
from ._exported import ExportedRunner

__all__ = ["OnnxRuntime"]


class OnnxRuntime(Runtime):
    """An ONNX Runtime session of the exported graph (see the module docstring); the float32 graph only."""

    name, what = "onnxruntime", "ONNX Runtime session of the exported ONNX graph"
    modules = ("onnx", "onnxscript", "onnxruntime")
    exports = fp32_only = True

    def describe(self, threads: int, device: torch.device) -> str:
        import onnxruntime as ort  # optional (export extra), heavy: only this runtime needs it

        provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        return f"onnxruntime {ort.__version__} ({provider}, {threads} intra-op threads, no spin-waiting)"

    def runner(self, model, input_shape, request: RunnerRequest) -> ExportedRunner:
        r = request
        return ExportedRunner(model, "onnx", tuple(input_shape), r.device, threads=r.threads, label=r.label,
                              atol=r.atol, rtol=r.rtol, fold=r.fold)


RUNTIMES.add("onnxruntime", OnnxRuntime(), help=OnnxRuntime.what)
