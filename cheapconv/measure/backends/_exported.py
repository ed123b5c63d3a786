"""The runner of the runtimes that time an exported file (``pt2``, ``onnxruntime``): the deployable copy of the
model exported by the code ``cheapconv export`` uses, loaded back once, checked against eager mode."""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ...surgery.fold import deployable
from ..exports import LOADERS, write_export
from ..runtimes import CheckedRunner

__all__ = ["ExportedRunner"]


class ExportedRunner(CheckedRunner):
    """The deployable copy of a model (:func:`cheapconv.surgery.fold.deployable`) exported as ``format``
    (``pt2`` or ``onnx``) with a dynamic batch, loaded back once, and run from that (the file is deleted once
    loaded: onnxruntime and torch.export hold the program in memory)."""

    dtype, channels_last = torch.float32, False

    def __init__(self, model: nn.Module, format: str, input_shape: tuple[int, ...], device: torch.device, *,
                 threads: int | None = None, label: str | None = None, fold: bool = True, atol: float = 1e-4,
                 rtol: float = 1e-4, leaf_modules=(), runtime: str | None = None,
                 prepare: Callable[[str], str] | None = None):
        """``prepare`` (a runtime's own step, e.g. quantisation): the exported file's path -> the path of the file
        to load instead (written in the same temporary folder); ``runtime`` names it in messages."""
        self._setup(model, device, label, atol, rtol)
        self.runtime = runtime or {"onnx": "onnxruntime"}.get(format, format)
        self.format = format
        work = model
        param = next(iter(model.parameters()), None)
        if param is not None and (param.device.type != "cpu" or param.dtype != torch.float32):
            work = copy.deepcopy(model).cpu().float()  # export on the CPU in float32; the caller's model stays
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
            if prepare is not None:
                path = prepare(path)
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
