"""``onnxruntime-int8``: the deployable copy exported to ONNX, quantised to int8 by ONNX Runtime (static QDQ, what
``cheapconv export --format onnx --quantize int8`` writes), run in an onnxruntime session as ``onnxruntime`` runs
the float32 graph.

For timing, the activations are calibrated on :data:`CALIBRATION_IMAGES` random normal inputs of the model's input
size, not on real data: int8 speed hardly depends on the calibrated ranges (the same kernels run), while accuracy
does, so accuracy is what ``export --quantize int8 --calib-data`` checks on real images. Before a batch size is
timed, the int8 outputs are compared with eager float32 on a random input of that size with a tolerance suited to
int8 (:data:`INT8_RTOL` of the largest output, plus :data:`INT8_ATOL`): int8 rounding moved the outputs of a
trained WRN-16-2 by up to 6 % of the largest one, of a fine-tuned EfficientNet-Lite0 (depthwise convs, which
quantise worse) by up to 9 %; a wrong graph (a missing or doubled layer, other weights) moves them by about their
whole range.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...extensions import RUNTIMES
from ..quantization import quantize_onnx
from ..runtimes import RunnerRequest
from ._exported import ExportedRunner
from .onnxruntime import OnnxRuntime

__all__ = ["CALIBRATION_IMAGES", "INT8_ATOL", "INT8_RTOL", "OnnxRuntimeInt8"]

#: random inputs the activations are calibrated on (timing only; see the module docstring)
CALIBRATION_IMAGES = 32
#: the check's tolerance against eager float32: max |int8 − fp32| <= INT8_ATOL + INT8_RTOL · max |fp32|
INT8_RTOL = 0.25
INT8_ATOL = 1e-3


class OnnxRuntimeInt8(OnnxRuntime):
    """An ONNX Runtime session of the exported graph quantised to int8 (see the module docstring)."""

    name, what = "onnxruntime-int8", "ONNX Runtime session of the exported graph quantised to int8 (static QDQ)"
    precision = "int8"

    def describe(self, threads: int, device: torch.device) -> str:
        return (f"{super().describe(threads, device)}; int8 static QDQ, calibrated on {CALIBRATION_IMAGES} random "
                "inputs")

    def runner(self, model, input_shape, request: RunnerRequest) -> ExportedRunner:
        r = request
        shape = tuple(input_shape)

        def quantize(path: str) -> str:
            out = str(Path(path).with_name("model.int8.onnx"))
            images = torch.randn((CALIBRATION_IMAGES, *shape), generator=torch.Generator().manual_seed(0))
            quantize_onnx(path, out, images)
            return out

        runner = ExportedRunner(model, "onnx", shape, r.device, threads=r.threads, label=r.label,
                                atol=max(r.atol, INT8_ATOL), rtol=max(r.rtol, INT8_RTOL), fold=r.fold,
                                runtime=self.name, prepare=quantize)
        runner.notes.append(f"{self.name}: calibrated on {CALIBRATION_IMAGES} random inputs (int8 speed hardly "
                            "depends on calibration; accuracy does: export --quantize int8 --calib-data checks it)")
        return runner


RUNTIMES.add("onnxruntime-int8", OnnxRuntimeInt8(), help=OnnxRuntimeInt8.what)
