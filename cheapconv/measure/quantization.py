"""int8 ONNX files: ONNX Runtime's static quantisation of an exported float32 graph, and its check against fp32.

:func:`quantize_onnx` turns a (BatchNorm-folded) float32 ONNX file into a QDQ int8 one with
``onnxruntime.quantization``: weights per output channel (int8, symmetric), activations per tensor (uint8) with
ranges calibrated (min/max) on images fed exactly as the model is fed. Static is the default for CNNs: dynamic
quantisation (``mode="dynamic"``) quantises the weights of the linear layers (MatMul/Gemm) only and their
activations at run time, so a CNN's convs, where its time goes, stay float32.

:func:`calibration_images` builds those images from a dataset name (its training split, fed as
:func:`cheapconv.data.adapt_for_model` decides from the model's preprocessing record; the check's images are
*other* images, from its test split), a dataset, or a tensor. :func:`compare_predictions` is the export's
check on held-out images: top-1 agreement of int8 with fp32, and each one's accuracy where labels are known.
It fails past :data:`REFUSE_AGREEMENT` / :data:`REFUSE_DROP` (the export writes nothing unless told to accept
it) and warns past :data:`WARN_AGREEMENT` / :data:`WARN_DROP`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import adapt_for_model, check_finite_batches, default_workers, get_dataset
from ..errors import CheapconvError, UsageError
from .exports import EXTRA_HINT, first_line

__all__ = ["MODES", "REFUSE_AGREEMENT", "REFUSE_DROP", "WARN_AGREEMENT", "WARN_DROP", "QuantizationCheck",
           "calibration_images", "compare_predictions", "module_nodes", "quantize_onnx"]

MODES = ("int8", "dynamic")
#: the export refuses an int8 file whose top-1 agreement with fp32 on the held-out images is below this ...
REFUSE_AGREEMENT = 0.90
#: ... or whose accuracy is more than this many points below fp32's
REFUSE_DROP = 5.0
#: and warns below this agreement, or past this drop (points)
WARN_AGREEMENT = 0.98
WARN_DROP = 1.0


def _ort_quantization():
    try:  # optional (export extra), heavy: only quantised exports need it
        import onnxruntime.quantization as q
    except ImportError:
        raise UsageError(f"Quantising an ONNX model needs onnxruntime: {EXTRA_HINT}") from None
    return q


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs through the root logger, a warning per BatchNorm it cannot quantise per
    channel (the kept BatchNorms of a pre-activation network): not news to the user; errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _input_name(path: str) -> str:
    import onnx  # optional (export extra): the file was written with it

    return onnx.load(path, load_external_data=False).graph.input[0].name


def module_nodes(path: str | Path, modules: Sequence[str]) -> dict[str, list[str]]:
    """The ONNX nodes of ``path`` that each module path of ``modules`` produced (``"blocks.3.0.conv_pwl.up"``: its
    own nodes and those of the modules inside it), read from the ``namespace`` record torch's exporter writes on
    every node (``"blocks.3.0.conv_pwl: LowRankPointwise/blocks.3.0.conv_pwl.up: Conv2d/..."``). A module with no
    node (a typo, a layer folded away, a file exported without the record) maps to an empty list."""
    import onnx  # optional (export extra)

    found: dict[str, list[str]] = {m: [] for m in modules}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        owners = {part.split(": ")[0] for part in namespace.split("/") if ": " in part}
        for module in modules:
            if any(o == module or o.startswith(module + ".") for o in owners):
                found[module].append(node.name)
    return found


def quantize_onnx(src: str | Path, dst: str | Path, calibration: torch.Tensor | np.ndarray | None = None, *,
                  mode: str = "int8", batch: int = 32, keep_float: Sequence[str] = ()) -> dict:
    """Write ``src`` (a float32 ONNX file) quantised to ``dst``; returns what was done, for the deployment card.

    ``mode="int8"``: static QDQ quantisation, weights int8 per output channel, activations uint8 per tensor with
    min/max ranges calibrated on ``calibration`` (N×C×H×W, fed as the model is fed), read in batches of
    ``batch``. ``mode="dynamic"``: the linear layers' weights only (no calibration); a graph without
    MatMul/Gemm is a :class:`~cheapconv.errors.UsageError`, since nothing would change.

    ``keep_float``: module paths of the exported model (``"blocks.3.0.conv_pwl"``) whose nodes stay float32
    (mixed precision: to find which layers an int8 loss comes from, or to keep them). A tensor stays float32 only
    where the node writing it and every node reading it are kept: a quantised conv's output is quantised for
    whoever reads it, so keep a whole block (both convs of a low-rank pair), not only the layer after the tensor.
    A path that names no node of the graph is a :class:`~cheapconv.errors.UsageError`."""
    q = _ort_quantization()
    src, dst = str(src), str(dst)
    if mode not in MODES:
        raise UsageError(f"Unknown quantisation {mode!r}; valid: {', '.join(MODES)}.")
    if mode == "dynamic":
        import onnx  # optional (export extra)

        ops = {n.op_type for n in onnx.load(src, load_external_data=False).graph.node}
        if not ops & {"MatMul", "Gemm"}:
            raise UsageError("--quantize dynamic quantises linear layers (MatMul/Gemm) only, and this model has "
                             "none: nothing would change. Use --quantize int8 (static, calibrated) for a CNN.")

        def run(model: str, tmp: str) -> dict:
            # the exporter's shape annotations (value_info) keep a Gemm weight's shape, which the dynamic quantiser
            # transposes (transB) and then fails to re-infer: drop them, ONNX infers them again
            graph = onnx.load(model)
            del graph.graph.value_info[:]
            model = str(Path(tmp) / "bare.onnx")
            onnx.save(graph, model)
            q.quantize_dynamic(model, dst, weight_type=q.QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            return {"mode": "dynamic", "weights": "int8 per tensor, MatMul/Gemm only",
                    "activations": "float32; quantised at run time where they enter a MatMul/Gemm"}
    else:
        if calibration is None or len(calibration) == 0:
            raise UsageError("Static int8 quantisation needs calibration images (--calib-data).")
        images = calibration.detach().cpu().float().numpy() if isinstance(calibration, torch.Tensor) \
            else np.asarray(calibration, dtype=np.float32)
        name = _input_name(src)

        class Reader(q.CalibrationDataReader):
            def __init__(self):
                self.batches = iter(range(0, len(images), batch))

            def get_next(self):
                start = next(self.batches, None)
                return None if start is None else {name: np.ascontiguousarray(images[start:start + batch])}

        def run(model: str, tmp: str) -> dict:
            nodes = module_nodes(model, keep_float) if keep_float else {}
            missing = [m for m, names in nodes.items() if not names]
            if missing:
                raise UsageError(f"Nothing to keep in float32 for {', '.join(missing)}: no node of the exported "
                                 "graph comes from that module. Give module paths as the model's named_modules() "
                                 "names them (blocks.3.0.conv_pwl.up).")
            excluded = sorted({n for names in nodes.values() for n in names})
            q.quantize_static(model, dst, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.MinMax, nodes_to_exclude=excluded)
            info = {"mode": "int8", "format": "QDQ", "weights": "int8 per output channel",
                    "activations": "uint8 per tensor, min/max calibrated", "calibration_images": int(len(images))}
            if keep_float:
                info["float32_modules"] = list(keep_float)
                info["float32_nodes"] = len(excluded)
            return info

    with tempfile.TemporaryDirectory(prefix="cheapconv-quant-") as tmp, _quiet_root_logger():
        # ONNX Runtime's pre-processing (shape inference, graph optimisation) lets more ops be quantised, and
        # settles the shapes the dynamo exporter leaves symbolic; a graph it cannot process is quantised as exported
        pre = str(Path(tmp) / "pre.onnx")
        try:
            q.quant_pre_process(src, pre, skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - optional step; ORT raises many types
            pre = src
        try:
            return run(pre, tmp)
        except CheapconvError:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises many types; one paragraph for the user
            raise CheapconvError(f"ONNX Runtime could not quantise the exported graph ({mode}): {type(e).__name__}: "
                                 f"{first_line(e)}. Export or time it in float32 (no --quantize; --runtime "
                                 "onnxruntime), or rerun with --debug for the full error.") from e


def _split(data: Dataset | torch.Tensor, count: int, seed: int,
           skip: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``count`` items of ``data`` drawn by a permutation seeded with ``seed``, after its first ``skip``: (images,
    labels or None)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = sorted(order[skip:skip + count])
    if isinstance(data, torch.Tensor):
        return data[chosen].float().contiguous(), None
    images, labels = [], []
    loader = DataLoader(Subset(data, chosen), batch_size=128, shuffle=False, num_workers=default_workers(data))
    for item in loader:
        if isinstance(item, (list, tuple)):
            images.append(item[0])
            labels.append(torch.as_tensor(item[1]) if len(item) > 1 else None)
        else:
            images.append(item)
            labels.append(None)
    x = torch.cat(images).float().contiguous() if images else torch.empty(0)
    has_labels = labels and all(t is not None and t.dim() == 1 for t in labels)
    return x, (torch.cat(labels).long() if has_labels else None)


def calibration_images(data: Dataset | torch.Tensor | str, model: nn.Module, input_shape: tuple[int, ...], *,
                       samples: int = 512, check: int = 500, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(calibration images, held-out check images, their labels or None), all at (C, H, W) ``input_shape``.

    A dataset name: ``samples`` images of its training split and ``check`` of its test split, without
    augmentation, fed as :func:`cheapconv.data.adapt_for_model` decides (the model's recorded size and
    mean/std). A dataset (yielding ``(image, label)``) or an N×C×H×W tensor: ``samples`` and ``check`` distinct
    items of it, drawn by a seeded permutation; feed it as the model is fed."""
    if samples < 1 or check < 1:
        raise UsageError(f"Quantisation needs at least 1 calibration and 1 check image; got {samples} and {check}.")
    c, h, w = input_shape
    if isinstance(data, str):
        fit = adapt_for_model(data, model, image_size=h if h == w else None)
        build = dict(augment=False, in_chans=fit.in_chans, image_size=fit.image_size, preprocessing=fit.preprocessing)
        calib, _ = _split(get_dataset(data, "train", **build), samples, seed)
        held, labels = _split(get_dataset(data, "test", **build), check, seed)
    else:
        if isinstance(data, torch.Tensor) and data.dim() != 4:
            raise UsageError(f"Calibration images must be N×C×H×W, got shape {tuple(data.shape)}.")
        n = len(data)
        if n < 2:
            raise UsageError(f"The calibration data holds {n} image(s); it needs some to calibrate on and others "
                             "to check the int8 model on (a few hundred of each).")
        held_n = min(check, n // 2) if n < samples + check else check
        taken = min(samples, n - held_n)
        # one seeded permutation: its first items calibrate, the next ones are the check's
        calib, _ = _split(data, taken, seed)
        held, labels = _split(data, held_n, seed, skip=taken)
    for what, x in (("calibration", calib), ("check", held)):
        if tuple(x.shape[1:]) != (c, h, w):
            raise UsageError(f"The {what} images are {'×'.join(map(str, x.shape[1:]))}, but the model is exported "
                             f"at {c}×{h}×{w}. Give data at the model's input size (or --input-size to match it).")
        check_finite_batches(x, what=f"the {what} images")   # a NaN would make every min/max range NaN
    return calib, held, labels


@dataclass
class QuantizationCheck:
    """How the quantised file's predictions compared with the float32 file's on held-out images."""

    images: int
    agreement: float                   # share of images whose top-1 class is the same
    accuracy_fp32: float | None        # None without labels
    accuracy_int8: float | None
    refuse_agreement: float = REFUSE_AGREEMENT
    refuse_drop: float = REFUSE_DROP
    notes: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float | None:
        """Accuracy points lost (fp32 − int8); None without labels."""
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return 100 * (self.accuracy_fp32 - self.accuracy_int8)

    @property
    def passed(self) -> bool:
        return self.agreement >= self.refuse_agreement and not (self.drop is not None and self.drop > self.refuse_drop)

    @property
    def worrying(self) -> bool:
        """Past the warning threshold (but perhaps still passed)."""
        return self.agreement < WARN_AGREEMENT or (self.drop is not None and self.drop > WARN_DROP)

    def line(self) -> str:
        acc = (f"; accuracy fp32 {100 * self.accuracy_fp32:.2f} %, int8 {100 * self.accuracy_int8:.2f} % "
               f"({self.drop:.2f} points lost)" if self.drop is not None else "; no labels: accuracy not measured")
        return (f"quantised check on {self.images} held-out images: top-1 agreement with fp32 "
                f"{100 * self.agreement:.2f} %{acc}")

    def to_dict(self) -> dict:
        return dict(asdict(self), drop=self.drop, passed=self.passed)


def compare_predictions(fp32: Callable[[torch.Tensor], torch.Tensor], int8: Callable[[torch.Tensor], torch.Tensor],
                        images: torch.Tensor, labels: torch.Tensor | None = None, *, batch: int = 64,
                        refuse_agreement: float = REFUSE_AGREEMENT, refuse_drop: float = REFUSE_DROP
                        ) -> QuantizationCheck:
    """Run both models (image batch -> logits) on ``images`` and compare their top-1 predictions (and each one's
    accuracy on ``labels``)."""
    same = right_fp32 = right_int8 = 0
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        a, b = fp32(x).argmax(1), int8(x).argmax(1)
        same += int((a == b).sum())
        if labels is not None:
            y = labels[start:start + batch]
            right_fp32 += int((a == y).sum())
            right_int8 += int((b == y).sum())
    n = len(images)
    acc = (right_fp32 / n, right_int8 / n) if labels is not None else (None, None)
    return QuantizationCheck(n, same / n, *acc, refuse_agreement=refuse_agreement, refuse_drop=refuse_drop)
