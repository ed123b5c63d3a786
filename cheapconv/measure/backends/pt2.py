"""``pt2``: ``torch.export`` of the deployable copy (eval mode, taps stripped, BatchNorm folded unless
``fold=False``/``--no-fold``: what ``cheapconv export --format pt2`` writes), run as
``torch.export.load(path).module()``."""

from __future__ import annotations

from ...extensions import RUNTIMES
from ..runtimes import RunnerRequest, Runtime
from ._exported import ExportedRunner

__all__ = ["Pt2"]


class Pt2(Runtime):
    """The exported program (see the module docstring); the float32 graph only."""

    name, what, title = "pt2", "torch.export program, run as torch.export.load(...).module()", "torch.export .pt2"
    exports = fp32_only = True

    def runner(self, model, input_shape, request: RunnerRequest) -> ExportedRunner:
        r = request
        return ExportedRunner(model, "pt2", tuple(input_shape), r.device, threads=r.threads, label=r.label,
                              atol=r.atol, rtol=r.rtol, fold=r.fold)


RUNTIMES.add("pt2", Pt2(), help=Pt2.what)
