"""Writing a model as ``.pt2``, ONNX or TorchScript, loading it back, and checking it against the original.

The one home of the export-and-check logic: :func:`cheapconv.export` (the ``export`` command) writes files
with it, and the runtimes of :mod:`cheapconv.measure.runtimes` export with it before timing, so a latency
measured in ONNX Runtime is the latency of exactly the graph ``cheapconv export --format onnx`` writes, and
is only measured once that graph was shown to compute what the eager model computes.

The check (:func:`check_outputs`) reads::

    max |exported(x) − original(x)|  ≤  atol + rtol · max |original(x)|      (defaults atol = rtol = 1e-4)
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..errors import CheapconvError, UsageError

__all__ = ["EXTRA_HINT", "LOADERS", "RUNNERS", "WRITERS", "ExportCheck", "ExportCheckError", "backbone_input",
           "check_outputs", "first_line", "flat_tensors", "max_diffs", "reference_outputs", "takes_image_list",
           "write_export"]

#: what to install for the ONNX path (the ``export`` extra of setup.cfg)
EXTRA_HINT = "pip install 'cheapconv[export]' (onnx, onnxscript, onnxruntime)"


class ExportCheckError(CheapconvError):
    """The exported model's outputs differ from the original's beyond the tolerance (nothing was written, or
    nothing was timed)."""


@dataclass
class ExportCheck:
    """How an exported (or compiled) model's outputs compared with the eager model's on one random input."""

    what: str                         # "onnx", "pt2", "compile", ...
    input_shape: tuple[int, ...]      # the checked input, batch included
    max_abs_diff: float
    max_abs_ref: float
    atol: float
    rtol: float

    @property
    def tolerance(self) -> float:
        return self.atol + self.rtol * self.max_abs_ref

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        shape = "×".join(str(v) for v in self.input_shape)
        return (f"check {verdict}: max |exported − original| = {self.max_abs_diff:.3g} on a random {shape} "
                f"input; tolerance {self.atol:g} + {self.rtol:g}·max|original| = {self.tolerance:.3g}")

    def to_dict(self) -> dict:
        return dict(asdict(self), passed=self.passed)


def flat_tensors(output) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, tuple, list or dict of them), in a fixed order."""
    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def max_diffs(got: list, want: list[torch.Tensor]) -> tuple[float, float]:
    """(max |got − want|, max |want|) over all outputs; infinite difference when the structure differs."""
    if len(got) != len(want):
        return float("inf"), 0.0
    diff, ref = 0.0, 0.0
    for g, w in zip(got, want, strict=True):
        g = torch.as_tensor(g).detach().float().cpu()
        w = w.detach().float().cpu()
        if g.shape != w.shape:
            return float("inf"), 0.0
        diff = max(diff, (g - w).abs().max().item() if w.numel() else 0.0)
        ref = max(ref, w.abs().max().item() if w.numel() else 0.0)
    if diff != diff:  # NaN in the exported output: never a pass
        diff = float("inf")
    return diff, ref


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_outputs(what: str, run: Callable[[torch.Tensor], list], x: torch.Tensor, want: list[torch.Tensor], *,
                  atol: float = 1e-4, rtol: float = 1e-4) -> ExportCheck:
    """Run ``run`` (the exported model: input tensor -> list of output tensors) on ``x`` and compare with
    ``want`` (the eager model's outputs on ``x``). Raises :class:`ExportCheckError` when it cannot run;
    returns the comparison (check :attr:`ExportCheck.passed`)."""
    try:
        got = run(x)
    except CheapconvError:
        raise
    except Exception as e:  # noqa: BLE001 - runtimes raise many types; one paragraph for the user
        raise ExportCheckError(f"The exported {what} model does not run: {type(e).__name__}: "
                               f"{first_line(e)}.") from e
    diff, ref = max_diffs(got, want)
    return ExportCheck(what, tuple(x.shape), diff, ref, atol, rtol)


# --- writers and loaders, one pair per format ---------------------------------------------------------------
def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def _write_pt2(model: nn.Module, example: torch.Tensor, path: str) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, path)


def _load_pt2(path: str, device: str | torch.device = "cpu") -> Callable:
    module = torch.export.load(path).module().to(device)

    def run(x):
        with torch.no_grad():
            return flat_tensors(module(x))
    run.module = module  # the timer calls it directly
    return run


def _write_onnx(model: nn.Module, example: torch.Tensor, path: str) -> None:
    try:
        import onnx  # noqa: F401 - optional (export extra), heavy: only ONNX exports need it
    except ImportError:
        raise UsageError(f"ONNX export needs the onnx package (and onnxruntime to run it): {EXTRA_HINT}") from None
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        try:
            import onnxscript  # noqa: F401 - optional: the dynamo exporter where installed
            torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=_dynamic_batch(),
                              input_names=["input"], output_names=["output"], verbose=False,
                              external_data=False)
        except ImportError:  # no onnxscript: the TorchScript-based exporter
            torch.onnx.export(model, (example,), path, dynamo=False, input_names=["input"],
                              output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def onnx_session(path: str, *, threads: int | None = None, device: str | torch.device = "cpu"):
    """An onnxruntime session of ``path`` on the CPU (or CUDA) execution provider, ``threads`` intra-op
    threads (default: torch's current count, so that runtimes compared side by side get the same)."""
    try:  # optional (export extra), heavy: only ONNX files need them
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UsageError(f"Running an ONNX model needs onnxruntime: {EXTRA_HINT}") from None
    onnx.checker.check_model(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # onnxruntime's pool threads spin-wait after each run by default. When several sessions are timed in
    # turn (side by side), the idle sessions' spinning threads take the cores from the one being timed:
    # measured on 2 cores, WRN-40-2 at batch 1 ran 13.7 ms interleaved against 2.9 ms alone. Without
    # spinning the interleaved figure matches the lone one (3.9 vs 3.5 ms) at a cost of ~15 % at batch 1.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    provider = "CUDAExecutionProvider" if torch.device(device).type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise UsageError(f"onnxruntime {ort.__version__} has no {provider} here (available: "
                         f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA, or "
                         "time on the CPU (--device cpu).")
    return ort.InferenceSession(path, options, providers=[provider])


def _load_onnx(path: str, device: str | torch.device = "cpu", threads: int | None = None) -> Callable:
    session = onnx_session(path, threads=threads, device=device)
    name = session.get_inputs()[0].name

    def run(x):
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return [torch.from_numpy(a) for a in session.run(None, {name: x})]
    run.session = session  # the timer feeds it numpy directly
    return run


def takes_image_list(model: nn.Module) -> bool:
    """Whether ``model`` is a torchvision detector: its forward takes a *list* of images (of any sizes) and
    returns a list of dicts, with data-dependent post-processing (NMS, top-k) that neither torch.export nor
    the ONNX exporters can capture as one graph. TorchScript's compiler (``torch.jit.script``) can: torchvision
    writes these models to be scriptable, so they export to ``torchscript`` only."""
    transform = getattr(model, "transform", None)
    return type(transform).__name__ == "GeneralizedRCNNTransform"


def reference_outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The tensors an export check compares for a batch ``x``: the model's outputs; for a detector (called with
    the list of ``x``'s images) also its backbone's feature maps on ``x``, since its detections alone can be
    empty (a model whose scores stay below its threshold keeps no box) and would then check nothing."""
    if not takes_image_list(model):
        return flat_tensors(model(x))
    return flat_tensors(model(list(x))) + flat_tensors(model.backbone(backbone_input(model, x)))


def backbone_input(model, x: torch.Tensor) -> torch.Tensor:
    """``x`` at the size a detector's backbone works at: SSD's transform resizes every image to a fixed size
    (300 or 320; its extra layers need it), the R-CNN family keeps the image size."""
    fixed = getattr(model.transform, "fixed_size", None)
    return x if fixed is None else torch.nn.functional.interpolate(x, size=tuple(fixed), mode="bilinear")


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice; the check is what matters
        # a detector's control flow depends on its data: compile it (scripting) rather than trace one path
        compiled = torch.jit.script(model) if takes_image_list(model) else \
            torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(compiled, path)


def _load_torchscript(path: str, device: str | torch.device = "cpu") -> Callable:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location=torch.device(device))
    # a scripted detector declares its input as a list of images (``Tensor[] images``)
    detector = "Tensor[] images" in str(module.forward.schema)

    def run(x):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scripted detectors warn that they return (losses, detections)
            if detector:   # the same tensors as reference_outputs: detections, then the backbone's features
                return flat_tensors(module(list(x))) + flat_tensors(module.backbone(backbone_input(module, x)))
            return flat_tensors(module(x))
    return run


#: format -> write(model, example input, path)
WRITERS: dict[str, Callable] = {"pt2": _write_pt2, "onnx": _write_onnx, "torchscript": _write_torchscript}
#: format -> load(path) -> run(x) -> list of output tensors (loaded once, run many times: what timing needs)
LOADERS: dict[str, Callable] = {"pt2": _load_pt2, "onnx": _load_onnx, "torchscript": _load_torchscript}
#: format -> run(path, x) -> outputs: load and run once (what the export check of a written file needs)
RUNNERS: dict[str, Callable] = {fmt: (lambda path, x, _f=fmt: LOADERS[_f](path)(x)) for fmt in LOADERS}


def write_export(model: nn.Module, format: str, example: torch.Tensor, path: str, *, label: str,
                 passthrough: Callable[[Exception], bool] = lambda e: False, then: str = "",
                 instead: str = "Try another --format (pt2 is the most complete)") -> None:
    """``WRITERS[format](model, example, path)`` with exporters' many exception types turned into one
    paragraph that names the model (``label``), ``then`` (what happened next) and what to try instead.
    Exceptions for which ``passthrough`` is true (a full disk) are raised as they are."""
    try:
        WRITERS[format](model, example, path)
    except CheapconvError:
        raise
    except Exception as e:  # noqa: BLE001 - exporters raise many types; one paragraph for the user
        if passthrough(e):
            raise
        raise CheapconvError(f"Exporting {label} to {format} failed: {type(e).__name__}: {first_line(e)}."
                             f"{' ' + then if then else ''} {instead}, or rerun with --debug for the full "
                             "error.") from e
