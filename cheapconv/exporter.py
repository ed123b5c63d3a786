"""Exporting a model for deployment: ``.pt2`` (torch.export), ONNX or TorchScript, checked before writing.

:func:`export` prepares a copy of the model (:func:`cheapconv.surgery.fold.deployable`: eval mode, taps stripped,
BatchNorm folded into the conv before it where possible, keeping a fused activation as an op of its own),
exports it to a temporary file beside the output, **loads that file back the way a user would**
(``torch.export.load``, an onnxruntime session, ``torch.jit.load``), runs it on a random input and compares
with the original model in eval mode. Only when the outputs agree within the tolerance is the temporary file
renamed to the output; otherwise it is deleted and :class:`ExportCheckError` is raised. The check reads::

    max |exported(x) − original(x)|  ≤  atol + rtol · max |original(x)|      (defaults atol = rtol = 1e-4)

on a random normal input of a batch size different from the export example's (the batch dimension is exported
dynamic), so a file that only works at one batch size fails the check.

What a user needs to run the files (see the README):

* ``.pt2``: torch only: ``torch.export.load(path).module()(x)``. The program is stored as ATen operators, so
  neither the teacher's class nor cheapconv is imported when it loads.
* ``.onnx``: onnxruntime only: ``onnxruntime.InferenceSession(path).run(None, {"input": x})``.
* TorchScript: torch only: ``torch.jit.load(path)(x)`` (TorchScript is in maintenance mode upstream; prefer
  ``pt2``).

and ``x``: beside each file, ``FILE.json`` records how an image becomes ``x`` (resize, centre crop, channel
order, ``/255``, mean/std), written only when the export passed its check.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .counting import eval_mode
from .errors import CheapconvError, UsageError
from .measure.exports import (
    LOADERS,
    RUNNERS,
    WRITERS,
    ExportCheckError,
    check_outputs,
    first_line,
    reference_outputs,
    takes_image_list,
    write_export,
)
from .measure.profiler import input_shape_of
from .measure.quantization import (
    MODES,
    WARN_AGREEMENT,
    WARN_DROP,
    calibration_images,
    compare_predictions,
    quantize_onnx,
)
from .models.preprocessing import deployment_card, preprocessing_of
from .store.files import atomic_write, check_writable, ensure_free_space, is_disk_full
from .surgery.fold import deployable

__all__ = ["FORMATS", "SUFFIX", "ExportCheckError", "ExportReport", "export", "sidecar_path"]

Format = Literal["pt2", "onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("pt2", "onnx", "torchscript")
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
# The writers and loaders live in cheapconv.measure.exports (the latency runtimes export with them too);
# these are the same dicts, named here for the tests that replace one entry.
_WRITERS = WRITERS
_RUNNERS = RUNNERS


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
    fold: bool = True                 # False: exported without BatchNorm folding (every BN is in kept_bn)
    bn_ops_kept: int = 0              # folded BNs whose fused activation/dropout stayed as ops of their own
    preprocessing: dict | None = None      # how to feed the file (models.preprocessing.deployment_card) ...
    preprocessing_path: str | None = None  # ... written here, beside it (sidecar_path)
    quantization: dict | None = None       # quantize=: what was quantised and its check against fp32 (the card's)

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


def export(model: nn.Module, path: str | Path, format: Format = "pt2", *,
           input_shape: tuple[int, ...] | None = None, fold: bool = True, atol: float = 1e-4,
           rtol: float = 1e-4, check_batch: int = 3, leaf_modules=(), seed: int = 0, quantize: str | None = None,
           calib_data=None, calib_samples: int = 512, check_samples: int = 500,
           accept_quantization_loss: bool = False, keep_float: Sequence[str] = ()) -> ExportReport:
    """Export ``model`` to ``path`` as ``format`` (``pt2``, ``onnx`` or ``torchscript``), checked first.

    ``input_shape`` is (C, H, W) (default: the student's recipe, else the model's native size); the batch
    dimension is dynamic. The model is exported in float32 on the CPU, from a copy (see the module docstring
    for what happens to it and how the check works). Beside the file, ``FILE.json`` says how to feed it
    (input name and shape, resize/crop, mean/std, channel order, class names: the model's preprocessing
    record, :func:`~cheapconv.models.preprocessing.deployment_card`). Returns an :class:`ExportReport`; raises
    :class:`ExportCheckError` (and writes nothing) when the check fails.

    ``quantize="int8"`` (ONNX only) writes the float32 graph, checked as above, quantised by ONNX Runtime
    (static QDQ: weights int8 per channel, activations calibrated on ``calib_samples`` images of
    ``calib_data``, fed as the model records; :mod:`cheapconv.measure.quantization`), then compares it with
    float32 on ``check_samples`` held-out images of ``calib_data`` (top-1 agreement, each one's accuracy). Past
    the thresholds there (agreement under 90 %, or over 5 accuracy points lost) nothing is written unless
    ``accept_quantization_loss``; past the lower ones (98 %, 1 point) it warns. ``quantize="dynamic"``
    quantises the linear layers' weights only (no calibration data needed), checked the same way where data is
    given. ``keep_float`` (with ``quantize="int8"``): module paths whose layers stay float32 in the int8 file
    (:func:`~cheapconv.measure.quantization.quantize_onnx`). The card records the quantisation and the check
    (``report.quantization``).

    >>> from cheapconv.models import WideResNet
    >>> report = export(WideResNet(16, 2), "/tmp/wrn.pt2")      # doctest: +SKIP
    >>> print(report.check_line())                              # doctest: +SKIP
    check passed: max |exported − original| = 4.77e-07 on a random 3×3×32×32 input; tolerance ...
    """
    if format not in FORMATS:
        raise UsageError(f"Unknown export format {format!r}; valid: {', '.join(FORMATS)}.")
    if takes_image_list(model) and format != "torchscript":
        raise UsageError(f"{type(model).__name__} is a detector: its post-processing (NMS, top-k) depends on the "
                         f"data, which {format} cannot capture in one graph. Export it with --format torchscript "
                         "(compiled by torch.jit.script; runs with torch.jit.load, no cheapconv needed).")
    if quantize is not None and (quantize not in MODES or format != "onnx"):
        raise UsageError(f"--quantize {quantize} is not available for {format}: quantisation ({', '.join(MODES)}) is "
                         "ONNX Runtime's, so export with --format onnx." if quantize in MODES else
                         f"Unknown quantisation {quantize!r}; valid: {', '.join(MODES)}.")
    if keep_float and quantize != "int8":
        raise UsageError("--keep-float names layers to leave in float32 inside an int8 file: add --quantize int8 "
                         "(and --calib-data), or leave --keep-float out.")
    if quantize == "int8" and calib_data is None:
        raise UsageError("--quantize int8 calibrates the activations' ranges on real images: give --calib-data (a "
                         "dataset name such as imagefolder:DIR; calib_data= in Python), the data the model is for.")
    path = check_writable(path)
    shape = input_shape_of(model, input_shape)
    calib = held = labels = None
    if quantize is not None and calib_data is not None:  # read the data before exporting: bad data fails fast
        calib, held, labels = calibration_images(calib_data, model, shape, samples=calib_samples,
                                                 check=check_samples, seed=seed)
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
            want = reference_outputs(original, x)
    except Exception as e:  # noqa: BLE001 - the model cannot run on this input
        c, h, w = shape
        error = UsageError if input_shape is not None else CheapconvError
        raise error(f"{type(model).__name__} cannot run on a {c}×{h}×{w} input: {type(e).__name__}: "
                    f"{first_line(e)}. Give the input size it expects (--input-size C,H,W"
                    + ("" if input_shape is not None else "; it could not be taken from the model")
                    + "). Nothing was written.") from None
    # Some writers (torch.export.save's C++ stream writer) abort the whole process on a full disk instead of
    # raising: refuse up front when the weights alone would not fit.
    weights = sum(t.numel() * t.element_size() for t in prepared.state_dict().values())
    ensure_free_space(path, int(weights * 1.1) + 2**16)

    report: ExportReport | None = None

    def write_and_check(tmp: str) -> None:
        nonlocal report
        write_export(prepared, format, example, tmp, label=type(model).__name__, then="Nothing was written.",
                     passthrough=lambda e: is_disk_full(e, path.parent if str(path.parent) else "."))
        try:
            check = check_outputs(format, lambda t: _RUNNERS[format](tmp, t), x, want, atol=atol, rtol=rtol)
        except ExportCheckError as e:
            raise ExportCheckError(f"{e} Nothing was written.") from e.__cause__
        report = ExportReport(str(path), format, shape, check_batch, check.max_abs_diff, check.max_abs_ref,
                              atol, rtol, passed=check.passed, folded=len(folding.folded),
                              kept_bn=len(folding.kept), taps_removed=folding.taps_removed,
                              notes=folding.notes, fold=folding.enabled, bn_ops_kept=len(folding.ops_kept))
        if not report.passed:
            hint = (f"{report.folded} BatchNorms were folded: export without folding (--no-fold; fold=False in "
                    "Python) to see whether folding is the cause, or raise" if report.folded else "Raise")
            raise ExportCheckError(f"The exported model does not match the original, so {str(path)!r} was "
                                   f"not written: {report.check_line()}. {hint} the tolerance (--atol/--rtol) if "
                                   "the difference is acceptable.")
        if quantize is not None:
            report.quantization = _quantize_and_check(tmp, quantize, calib, held, labels, path,
                                                      accept_quantization_loss, keep_float)

    atomic_write(path, write_and_check, suffix=SUFFIX[format])
    assert report is not None
    report.preprocessing, report.preprocessing_path = _write_card(model, path, format, shape, report.quantization)
    return report


def _quantize_and_check(tmp: str, mode: str, calib, held, labels, path: Path, accept: bool,
                        keep_float: Sequence[str] = ()) -> dict:
    """Quantise the checked float32 file ``tmp`` in place (through a file beside it) and compare the two on the
    held-out images; raise :class:`ExportCheckError` past the refusal thresholds unless ``accept``."""
    quantized = f"{tmp}.{mode}.onnx"
    try:
        info = quantize_onnx(tmp, quantized, calib, mode=mode, keep_float=keep_float)
        if held is not None:
            fp32, low = LOADERS["onnx"](tmp), LOADERS["onnx"](quantized)
            check = compare_predictions(lambda x: fp32(x)[0], lambda x: low(x)[0], held, labels)
            info["check"] = check.to_dict()
            info["check_line"] = check.line()
            if not check.passed and not accept:
                raise ExportCheckError(
                    f"The {mode} model loses too much against float32, so {str(path)!r} was not written: "
                    f"{check.line()}. The export refuses below {100 * check.refuse_agreement:g} % agreement or past "
                    f"{check.refuse_drop:g} points lost. Export float32 (no --quantize), calibrate on more or more "
                    "typical images (--calib-data, --calib-samples), or write it anyway with "
                    "--accept-quantization-loss (accept_quantization_loss=True in Python).")
            if not check.passed or check.worrying:
                warnings.warn(f"{check.line()}: the {mode} model departs from float32 (the export warns under "
                              f"{100 * WARN_AGREEMENT:g} % agreement or past {WARN_DROP:g} point lost). Check it on "
                              "your own data before shipping it.", stacklevel=4)
        else:
            info["check_line"] = "not compared with float32 (no --calib-data given)"
        os.replace(quantized, tmp)
    finally:
        if os.path.exists(quantized):
            os.remove(quantized)
    return info


def _write_card(model: nn.Module, path: Path, format: str, shape: tuple[int, ...],
                quantization: dict | None = None) -> tuple[dict, str]:
    """Write how the exported file must be fed beside it (``FILE.json``, atomically): only after the export
    passed its check, so a refused export leaves neither file."""
    classes = (getattr(model, "cheapconv_recipe", None) or {}).get("classes")
    card = deployment_card(preprocessing_of(model), shape, model_file=path.name, fmt=format, classes=classes)
    if quantization is not None:
        card["quantization"] = quantization
    card_path = sidecar_path(path)
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n",
                                                             encoding="utf-8"))
    return card, str(card_path)


def sidecar_path(path: str | Path) -> Path:
    """Where :func:`export` writes the preprocessing of the file it exports to ``path``: ``path`` + ``.json``."""
    return Path(f"{path}.json")
