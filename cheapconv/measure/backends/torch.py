"""``torch``: eager mode, the model as it is; the reference the other runtimes are checked against."""

from __future__ import annotations

from ...extensions import RUNTIMES
from ..latency import EagerRunner
from ..runtimes import RunnerRequest, Runtime

__all__ = ["Eager"]


class Eager(Runtime):
    """torch eager mode (:class:`~cheapconv.measure.latency.EagerRunner`)."""

    name, what, title = "torch", "torch eager mode", "torch eager"

    def runner(self, model, input_shape, request: RunnerRequest) -> EagerRunner:
        r = request
        return EagerRunner(model, r.device, r.dtype, r.channels_last, label=r.label)


RUNTIMES.add("torch", Eager(), help=Eager.what)
