"""Deployed files (what ``cheapconv export`` writes: ONNX, pt2) as models cheapconv can score and compare.

``cheapconv evaluate student.onnx --data imagefolder:DIR`` scores the very file a user ships, fed the way the
``FILE.json`` beside it says (the preprocessing :func:`cheapconv.export` recorded: resize, crop, mean/std), so
that what is measured is what runs in deployment, not the PyTorch model it came from. The file is wrapped in a
parameter-free :class:`DeployedModel` that takes and returns torch tensors, so every evaluation path accepts it.

Loading runs no Python code from the file: an ONNX file is a graph that onnxruntime executes, and a pt2 file is
read by :func:`torch.export.load`. The sidecar is plain JSON, checked field by field
(:meth:`~cheapconv.models.preprocessing.Preprocessing.from_dict`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FileFormatError, UsageError
from ..models.preprocessing import Preprocessing
from .file_checks import check_zip

__all__ = ["DEPLOYED_SUFFIXES", "DeployedModel", "is_deployed_file", "load_deployed", "read_card"]

#: file suffixes of the deployed formats, and the format each is
DEPLOYED_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
_MAX_CARD_BYTES = 1 << 20   # a deployment card is a few hundred bytes; never read a huge "JSON" file whole


def is_deployed_file(spec: str | Path) -> bool:
    """Whether ``spec`` names a deployed file (by its suffix: ``.onnx``, ``.pt2``)."""
    return Path(spec).suffix.lower() in DEPLOYED_SUFFIXES


def read_card(path: str | Path) -> tuple[dict[str, Any] | None, Preprocessing | None]:
    """The deployment card beside ``path`` (``path`` + ``.json``, written by export) and the preprocessing it
    records; ``(None, None)`` when there is no card. A card that is not what export writes is a
    :class:`FileFormatError`."""
    card_path = Path(f"{path}.json")
    if not card_path.is_file():
        return None, None
    if card_path.stat().st_size > _MAX_CARD_BYTES:
        raise FileFormatError(f"{str(card_path)!r} is too large to be a deployment card written by cheapconv export.")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{str(card_path)!r} is not valid JSON ({str(e)[:120]}). Export the model again with "
                              "cheapconv export, or remove the file to evaluate without its preprocessing.") from None
    if not isinstance(card, dict) or card.get("format") != "cheapconv-preprocessing":
        raise FileFormatError(f"{str(card_path)!r} is not a deployment card written by cheapconv export (no "
                              "'format': 'cheapconv-preprocessing'). Remove or rename it, or export again.")
    return card, _card_preprocessing(card, card_path)


def _card_preprocessing(card: dict, card_path: Path) -> Preprocessing | None:
    shape = card.get("input_shape")
    if card.get("mean") is None or not isinstance(shape, list) or len(shape) != 4:
        return None   # export had no preprocessing to record: the file is fed at its own shape, data as stored
    fields = {k: card[k] for k in ("resize", "crop", "pad_from", "interpolation", "channel_order",
                                   "max_pixel_value", "mean", "std", "source") if k in card}
    try:
        return Preprocessing.from_dict({**fields, "input_size": list(shape[1:])})
    except UsageError as e:
        raise FileFormatError(f"{str(card_path)!r} records a preprocessing cheapconv refuses: {e}") from None


class DeployedModel(nn.Module):
    """A deployed file run by its own runtime, as a module: ``forward`` takes an N×C×H×W float tensor and returns
    the file's first output as a tensor on the input's device. It has no parameters; ``format`` and ``path``
    say what runs, ``cheapconv_preprocessing`` how to feed it (from the card, None without one)."""

    def __init__(self, path: Path, fmt: str, run, input_size: tuple[int, int, int] | None,
                 preprocessing: Preprocessing | None) -> None:
        super().__init__()
        self.path, self.format, self._run = path, fmt, run
        self.cheapconv_preprocessing = preprocessing
        if input_size is not None:
            self.default_input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    def extra_repr(self) -> str:
        return f"{self.format}: {self.path.name}"


def load_deployed(path: str | Path, *, threads: int | None = None) -> DeployedModel:
    """The deployed file at ``path`` (``.onnx`` or ``.pt2``) as a :class:`DeployedModel`, its preprocessing read
    from the card beside it. ONNX files run in onnxruntime on the CPU (``threads`` intra-op threads; its
    default otherwise) and need ``pip install 'cheapconv[export]'``.

    Example::

        model = load_deployed("student.onnx")          # and student.onnx.json beside it
        evaluate(model, get_dataset("imagefolder:DIR", "test", preprocessing=model.cheapconv_preprocessing))
    """
    path = Path(path)
    fmt = DEPLOYED_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{str(path)!r} is not a deployed file: expected one of "
                         f"{', '.join(DEPLOYED_SUFFIXES)} (what cheapconv export writes).")
    if not path.is_file():
        raise UsageError(f"The file {str(path)!r} does not exist. Check the path.")
    card, record = read_card(path)
    shape = card.get("input_shape") if card else None
    size = tuple(int(v) for v in shape[1:]) if isinstance(shape, list) and len(shape) == 4 and \
        all(isinstance(v, int) and not isinstance(v, bool) for v in shape[1:]) else None
    run = _onnx_runner(path, threads) if fmt == "onnx" else _pt2_runner(path)
    return DeployedModel(path, fmt, run, size, record).eval()


def _onnx_runner(path: Path, threads: int | None):
    try:  # optional: only deployed ONNX files need it
        import onnxruntime as ort
    except ImportError:
        raise UsageError(f"Running {str(path)!r} needs onnxruntime, which is not installed: "
                         "pip install 'cheapconv[export]'.") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
        raise FileFormatError(f"onnxruntime cannot load {str(path)!r}: {str(e).splitlines()[0][:200]}") from None
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        result = session.run(None, {name: x.detach().to("cpu", torch.float32).contiguous().numpy()})[0]
        return torch.from_numpy(result).to(x.device)

    return run


def _pt2_runner(path: Path):
    check_zip(path)   # a .pt2 is a torch zip archive: stored records that fit in the file, nothing inflated
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - torch raises several types for a file that is not an exported program
        raise FileFormatError(f"torch.export cannot load {str(path)!r}: {str(e).splitlines()[0][:200]}") from None
    module = program.module()

    def run(x: torch.Tensor) -> torch.Tensor:
        result = module(x.detach().to("cpu", torch.float32))
        return (result[0] if isinstance(result, (tuple, list)) else result).to(x.device)

    return run
