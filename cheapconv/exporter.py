"""Exporting a model for deployment: ``.pt2`` (torch.export), ONNX or TorchScript, checked before writing.

:func:`export` prepares a copy of the model (:func:`cheapconv.surgery.fold.deployable`: eval mode, taps stripped,
BatchNorm folded into the conv before it where possible), exports it to a temporary file beside the output,
**loads that file back the way a user would** (``torch.export.load``, an onnxruntime session,
``torch.jit.load``), runs it on a random input and compares with the original model in eval mode. Only
when the outputs agree within the tolerance is the temporary file renamed to the output; otherwise it is
deleted and :class:`ExportCheckError` is raised. The check reads::

    max |exported(x) − original(x)|  ≤  atol + rtol · max |original(x)|      (defaults atol = rtol = 1e-4)

on a random normal input of a batch size different from the export example's (the batch dimension is exported
dynamic), so a file that only works at one batch size fails the check.

What a user needs to run the files (see the README):

* ``.pt2``: torch only: ``torch.export.load(path).module()(x)``. The program is stored as ATen operators, so
  neither the teacher's class nor cheapconv is imported when it loads.
* ``.onnx``: onnxruntime only: ``onnxruntime.InferenceSession(path).run(None, {"input": x})``.
* TorchScript: torch only: ``torch.jit.load(path)(x)`` (TorchScript is in maintenance mode upstream; prefer
  ``pt2``).
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .counting import eval_mode
from .errors import CheapconvError, UsageError
from .measure.profiler import input_shape_of
from .store.files import atomic_write, check_writable, ensure_free_space, is_disk_full
from .surgery.fold import deployable

Format = Literal["pt2", "onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("pt2", "onnx", "torchscript")
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}


class ExportCheckError(CheapconvError):
    """The exported model's outputs differ from the original's beyond the tolerance; nothing was written."""


@dataclass
class ExportReport:
    """What :func:`export` wrote and how the check went."""

    path: str
    format: str
    input_shape: tuple[int, ...]      # (C, H, W)
    check_batch: int
    max_abs_diff: float
    max_abs_ref: float
    atol: float
    rtol: float
    passed: bool
    folded: int = 0
    kept_bn: int = 0
    taps_removed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def tolerance(self) -> float:
        return self.atol + self.rtol * self.max_abs_ref

    def check_line(self) -> str:
        c, h, w = self.input_shape
        verdict = "passed" if self.passed else "FAILED"
        return (f"check {verdict}: max |exported − original| = {self.max_abs_diff:.3g} on a random "
                f"{self.check_batch}×{c}×{h}×{w} input; tolerance {self.atol:g} + "
                f"{self.rtol:g}·max|original| = {self.tolerance:.3g}")

    def to_dict(self) -> dict:
        return asdict(self)


def _flat(output) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def _max_diffs(got: list, want: list[torch.Tensor]) -> tuple[float, float]:
    if len(got) != len(want):
        return float("inf"), 0.0
    diff, ref = 0.0, 0.0
    for g, w in zip(got, want, strict=True):
        g = torch.as_tensor(g).float()
        w = w.detach().float()
        if g.shape != w.shape:
            return float("inf"), 0.0
        diff = max(diff, (g - w).abs().max().item() if w.numel() else 0.0)
        ref = max(ref, w.abs().max().item() if w.numel() else 0.0)
    return diff, ref


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__



# --- writers and loaders, one pair per format ---------------------------------------------------------------
def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def _write_pt2(model: nn.Module, example: torch.Tensor, path: str) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, path)


def _run_pt2(path: str, x: torch.Tensor) -> list:
    module = torch.export.load(path).module()
    with torch.no_grad():
        return _flat(module(x))


def _write_onnx(model: nn.Module, example: torch.Tensor, path: str) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the onnx package (and onnxruntime for the check): "
                         "pip install 'cheapconv[export]' (onnx, onnxscript, onnxruntime)") from None
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        try:
            import onnxscript  # noqa: F401
            torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=_dynamic_batch(),
                              input_names=["input"], output_names=["output"], verbose=False,
                              external_data=False)
        except ImportError:  # no onnxscript: the TorchScript-based exporter
            torch.onnx.export(model, (example,), path, dynamo=False, input_names=["input"],
                              output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def _run_onnx(path: str, x: torch.Tensor) -> list:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UsageError("Checking an ONNX export needs onnxruntime: pip install 'cheapconv[export]'") from None
    onnx.checker.check_model(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [torch.from_numpy(a) for a in session.run(None, {name: x.numpy()})]


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice; the check below is what matters
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, path)


def _run_torchscript(path: str, x: torch.Tensor) -> list:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu")
        with torch.no_grad():
            return _flat(module(x))


_WRITERS = {"pt2": _write_pt2, "onnx": _write_onnx, "torchscript": _write_torchscript}
_RUNNERS = {"pt2": _run_pt2, "onnx": _run_onnx, "torchscript": _run_torchscript}


def export(model: nn.Module, path: str | Path, format: Format = "pt2", *,
           input_shape: tuple[int, ...] | None = None, fold: bool = True, atol: float = 1e-4,
           rtol: float = 1e-4, check_batch: int = 3, leaf_modules=(), seed: int = 0) -> ExportReport:
    """Export ``model`` to ``path`` as ``format`` (``pt2``, ``onnx`` or ``torchscript``), checked first.

    ``input_shape`` is (C, H, W) (default: the student's recipe, else the model's native size); the batch
    dimension is dynamic. The model is exported in float32 on the CPU, from a copy (see the module docstring
    for what happens to it and how the check works). Returns an :class:`ExportReport`; raises
    :class:`ExportCheckError` (and writes nothing) when the check fails.

    >>> from cheapconv.models import WideResNet
    >>> report = export(WideResNet(16, 2), "/tmp/wrn.pt2")      # doctest: +SKIP
    >>> print(report.check_line())                              # doctest: +SKIP
    check passed: max |exported − original| = 4.77e-07 on a random 3×3×32×32 input; tolerance ...
    """
    if format not in FORMATS:
        raise UsageError(f"Unknown export format {format!r}; valid: {', '.join(FORMATS)}.")
    path = check_writable(path)
    shape = input_shape_of(model, input_shape)
    param = next(iter(model.parameters()), None)
    if param is not None and (param.device.type != "cpu" or param.dtype != torch.float32):
        model = copy.deepcopy(model).cpu().float()  # the caller's model stays where it is
    original = model
    prepared, folding = deployable(model, fold=fold, leaf_modules=leaf_modules)
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn((2, *shape), generator=gen)
    x = torch.randn((check_batch, *shape), generator=gen)
    try:
        with eval_mode(original), torch.no_grad():
            want = _flat(original(x))
    except Exception as e:  # noqa: BLE001 - the model cannot run on this input
        c, h, w = shape
        error = UsageError if input_shape is not None else CheapconvError
        raise error(f"{type(model).__name__} cannot run on a {c}×{h}×{w} input: {type(e).__name__}: "
                    f"{_first_line(e)}. Give the input size it expects (--input-size C,H,W"
                    + ("" if input_shape is not None else "; it could not be taken from the model")
                    + "). Nothing was written.") from None
    # Some writers (torch.export.save's C++ stream writer) abort the whole process on a full disk instead of
    # raising: refuse up front when the weights alone would not fit.
    weights = sum(t.numel() * t.element_size() for t in prepared.state_dict().values())
    ensure_free_space(path, int(weights * 1.1) + 2**16)

    report: ExportReport | None = None

    def write_and_check(tmp: str) -> None:
        nonlocal report
        try:
            _WRITERS[format](prepared, example, tmp)
        except CheapconvError:
            raise
        except Exception as e:  # noqa: BLE001 - exporters raise many types; one paragraph for the user
            if is_disk_full(e, path.parent if str(path.parent) else "."):
                raise  # atomic_write reports the full disk and removes the temporary
            raise CheapconvError(f"Exporting {type(model).__name__} to {format} failed: {type(e).__name__}: "
                                 f"{_first_line(e)}. Nothing was written. Try another --format (pt2 is the "
                                 "most complete), or rerun with --debug for the full error.") from e
        try:
            got = _RUNNERS[format](tmp, x)
        except CheapconvError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ExportCheckError(f"The exported {format} file does not run: {type(e).__name__}: "
                                   f"{_first_line(e)}. Nothing was written.") from e
        diff, ref = _max_diffs(got, want)
        report = ExportReport(str(path), format, shape, check_batch, diff, ref, atol, rtol,
                              passed=diff <= atol + rtol * ref, folded=len(folding.folded),
                              kept_bn=len(folding.kept), taps_removed=folding.taps_removed,
                              notes=folding.notes)
        if not report.passed:
            raise ExportCheckError(f"The exported model does not match the original, so {str(path)!r} was "
                                   f"not written: {report.check_line()}. Export without BatchNorm folding "
                                   "(--no-fold) to see whether folding is the cause, or raise the tolerance "
                                   "(--atol/--rtol) if the difference is acceptable.")

    atomic_write(path, write_and_check, suffix=SUFFIX[format])
    assert report is not None
    return report
