"""How a model must be fed: :class:`Preprocessing`, the record every cheapconv file keeps next to its weights.

A record says what turns an image file into the tensor the model was trained on: the input size (C, H, W),
a resize of the shorter side and a centre crop (ImageFolder data), or a centred zero padding (small in-memory
images such as Fashion-MNIST's), the channel order, the value range (pixels divided by ``max_pixel_value``)
and the per-channel ``mean``/``std``::

    x = resize_shorter_side(image, resize, interpolation); x = centre_crop(x, crop)   # or zero-pad pad_from -> H
    x = (x / max_pixel_value - mean) / std                                            # per channel, C×H×W

Where a record comes from (``source``):

- ``"weights"``: the metadata of pretrained weights, attached when :func:`cheapconv.models.create_model` loads
  them (:func:`weights_preprocessing`): timm's ``pretrained_cfg`` (mean, std, input_size, crop_pct,
  interpolation), torchvision's ``weights.transforms()`` for hub weights, and for a local weights file of a
  torchvision classifier the ImageNet defaults torchvision documents (resize 256, crop 224, bilinear).
- ``"data"``: the data a model was trained on with ``cheapconv train``/``distill`` (the test split's
  transform: what evaluation and deployment must repeat).

A model carries its record as ``model.cheapconv_preprocessing`` (None where unknown): set by ``create_model``
for pretrained weights, by :func:`cheapconv.load` from the file, copied to a student by
:func:`cheapconv.cheapen`. :func:`cheapconv.save` writes it into the recipe (``"preprocessing"``), and
:meth:`Preprocessing.from_dict` checks a stored record field by field, so that a crafted file cannot make
cheapconv resize to absurd sizes or read anything but numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from ..errors import UsageError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "deployment_card", "imagenet_preprocessing",
           "preprocessing_of", "timm_preprocessing", "weights_preprocessing"]

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CHANNEL_ORDERS: tuple[str, ...] = ("RGB", "BGR", "L", "raw")
SOURCES: tuple[str, ...] = ("weights", "data")
MAX_SIDE = 8192        # pixels: no record may ask for a larger image (a crafted file cannot make us allocate more)
MAX_CHANNELS = 64


def _side(value: Any, what: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIDE:
        raise UsageError(f"preprocessing: {what} must be a whole number of pixels from 1 to {MAX_SIDE}, got "
                         f"{str(value)[:40]!r}.")
    return value


def _number(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"preprocessing: {what} must be a finite number, got {str(value)[:40]!r}.")
    return float(value)


@dataclass(frozen=True)
class Preprocessing:
    """What a model must be fed (see the module docstring for the order of the steps).

    - ``input_size``: (C, H, W) of the tensor the model reads (without the batch dimension).
    - ``mean``, ``std``: one entry per channel, applied after dividing the pixels by ``max_pixel_value``.
    - ``resize``: the shorter side is resized to this many pixels (``interpolation``) before the centre crop
      of ``crop``; both None for images used at their stored size.
    - ``pad_from``: small images of this side were zero-padded (black, centred) up to H×W; None otherwise.
    - ``channel_order``: ``"RGB"``, ``"BGR"``, ``"L"`` (one grey channel) or ``"raw"`` (C channels as stored).
    - ``source``: ``"weights"`` (pretrained weights' metadata) or ``"data"`` (what it was trained on).

    Invalid values are a :class:`~cheapconv.errors.UsageError`.

    >>> p = Preprocessing((3, 96, 96), (0.5,) * 3, (0.5,) * 3, resize=110, crop=96, interpolation="bicubic")
    >>> p.describe()
    '3×96×96: resize 110 bicubic, centre crop 96, RGB /255, mean 0.5,0.5,0.5 std 0.5,0.5,0.5'
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    crop: int | None = None
    pad_from: int | None = None
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    max_pixel_value: float = 255.0
    source: str = "data"

    def __post_init__(self) -> None:
        size = self.input_size
        if not isinstance(size, (tuple, list)) or len(size) != 3:
            raise UsageError(f"preprocessing: input_size must be (C, H, W), got {str(size)[:60]!r}.")
        c = size[0]
        if not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= MAX_CHANNELS:
            raise UsageError(f"preprocessing: the channel count must be 1 to {MAX_CHANNELS}, got {str(c)[:40]!r}.")
        object.__setattr__(self, "input_size", (c, _side(size[1], "the height"), _side(size[2], "the width")))
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or len(values) != c:
                raise UsageError(f"preprocessing: {name} must have one number per channel ({c}), got "
                                 f"{str(values)[:60]!r}.")
            object.__setattr__(self, name, tuple(_number(v, name) for v in values))
        if min(self.std) <= 0:
            raise UsageError(f"preprocessing: std must be positive, got {self.std}.")
        for name in ("resize", "crop", "pad_from"):
            _side(getattr(self, name), name, optional=True)
        if (self.resize is None) != (self.crop is None):
            raise UsageError("preprocessing: resize and crop go together (both, or neither).")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"preprocessing: interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                             f"{str(self.interpolation)[:40]!r}.")
        expected = {"RGB": 3, "BGR": 3, "L": 1}.get(self.channel_order, c)
        if self.channel_order not in CHANNEL_ORDERS or expected != c:
            raise UsageError(f"preprocessing: channel_order must be one of {', '.join(CHANNEL_ORDERS)} and fit the "
                             f"{c} channel(s), got {str(self.channel_order)[:40]!r}.")
        if not 0 < _number(self.max_pixel_value, "max_pixel_value") <= 65535:
            raise UsageError(f"preprocessing: max_pixel_value must be in (0, 65535], got {self.max_pixel_value}.")
        object.__setattr__(self, "max_pixel_value", float(self.max_pixel_value))
        if self.source not in SOURCES:
            raise UsageError(f"preprocessing: source must be one of {', '.join(SOURCES)}, got "
                             f"{str(self.source)[:40]!r}.")

    @property
    def crop_pct(self) -> float | None:
        """``crop / resize`` (timm's name), None without a resize."""
        return None if self.resize is None or self.crop is None else self.crop / self.resize

    def at_size(self, size: int | tuple[int, ...]) -> Preprocessing:
        """The same preprocessing for another square input side ``size`` (or (C, H, W): its H): the resize keeps
        its ratio to the crop, a padding is kept only where the images are smaller than the new size."""
        side = int(size[-2] if isinstance(size, (tuple, list)) else size)
        c, h, w = self.input_size
        if (h, w) == (side, side):
            return self
        resize = None if self.resize is None else max(side, round(side * self.resize / self.crop))
        return replace(self, input_size=(c, side, side), resize=resize, crop=None if resize is None else side,
                       pad_from=self.pad_from if self.pad_from is not None and self.pad_from < side else None)

    def describe(self) -> str:
        """One line for people: ``3×96×96: resize 110 bicubic, centre crop 96, RGB /255, mean ... std ...``."""
        c, h, w = self.input_size
        if self.resize is not None:
            steps = f"resize {self.resize} {self.interpolation}, centre crop {self.crop}"
        elif self.pad_from is not None:
            steps = f"{self.pad_from}×{self.pad_from} images zero-padded to {h}×{w}"
        else:
            steps = "images at their stored size"
        fmt = lambda values: ",".join(f"{v:.4g}" for v in values)
        return (f"{c}×{h}×{w}: {steps}, {self.channel_order} /{self.max_pixel_value:g}, mean {fmt(self.mean)} "
                f"std {fmt(self.std)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (lists for tuples); :meth:`from_dict` reads them back."""
        d = asdict(self)
        for key in ("input_size", "mean", "std"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """A record from :meth:`to_dict`'s fields, checked: an unknown or missing field, a string where a number
        belongs or a size over :data:`MAX_SIDE` is a :class:`~cheapconv.errors.UsageError`."""
        if not isinstance(data, dict):
            raise UsageError(f"preprocessing: expected an object of fields, got a {type(data).__name__}.")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(str(k)[:40] for k in data if k not in fields)
        if unknown:
            raise UsageError(f"preprocessing: unknown field(s) {', '.join(unknown[:5])}.")
        if not {"input_size", "mean", "std"} <= set(data):
            raise UsageError("preprocessing: input_size, mean and std are required.")
        for key in ("input_size", "mean", "std"):
            if not isinstance(data[key], list) or len(data[key]) > MAX_CHANNELS:
                raise UsageError(f"preprocessing: {key} must be a short list, got {str(data[key])[:40]!r}.")
        for key in ("interpolation", "channel_order", "source"):
            if key in data and not isinstance(data[key], str):
                raise UsageError(f"preprocessing: {key} must be text, got {str(data[key])[:40]!r}.")
        return cls(**{**data, "input_size": tuple(data["input_size"]), "mean": tuple(data["mean"]),
                      "std": tuple(data["std"])})


def default_channel_order(channels: int) -> str:
    """RGB for 3 channels, L for one, raw otherwise: what cheapconv's loaders produce."""
    return {3: "RGB", 1: "L"}.get(channels, "raw")


def preprocessing_of(model: nn.Module) -> Preprocessing | None:
    """The record ``model`` carries (``model.cheapconv_preprocessing``), None where it has none."""
    record = getattr(model, "cheapconv_preprocessing", None)
    return record if isinstance(record, Preprocessing) else None


def imagenet_preprocessing(size: int = 224) -> Preprocessing:
    """torchvision's documented ImageNet evaluation transform: resize 256, centre crop 224, bilinear, ImageNet
    mean/std (scaled to ``size``), for local weights files of torchvision classifiers."""
    return Preprocessing((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256, crop=224,
                         source="weights").at_size(size)


def timm_preprocessing(cfg: dict) -> Preprocessing | None:
    """The record of timm's ``pretrained_cfg`` (``mean``, ``std``, ``input_size``, ``crop_pct``,
    ``interpolation``); the shorter side is resized to ``floor(S / crop_pct)``, as timm's evaluation transform
    does. None where the config lacks the mean, std or input size, or does not fit a record."""
    try:
        c, h, w = (int(v) for v in cfg["input_size"])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        interpolation = cfg.get("interpolation") or "bilinear"
        return Preprocessing((c, h, w), tuple(cfg["mean"]), tuple(cfg["std"]), resize=math.floor(min(h, w) / crop_pct),
                             crop=min(h, w), interpolation=interpolation if interpolation in INTERPOLATIONS
                             else "bicubic", channel_order=default_channel_order(c), source="weights")
    except (KeyError, TypeError, ValueError):
        return None


def weights_preprocessing(model: nn.Module, name: str, *, hub: bool) -> Preprocessing | None:
    """The record of the pretrained weights just loaded into ``model`` (zoo ``name``): timm's
    ``pretrained_cfg``; for torchvision classifiers the hub weights' ``transforms()`` (``hub``) or the ImageNet
    defaults (a local file). None for other models (torchvision detectors normalise inside the model)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if name.startswith("timm:") and isinstance(cfg, dict):
        return timm_preprocessing(cfg)
    if not name.startswith("torchvision:"):
        return None
    # imported here: only torchvision models get this far
    import torchvision

    tv_name = name[len("torchvision:"):]
    if tv_name not in torchvision.models.list_models(module=torchvision.models):
        return None   # segmentation or detection
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and conv.in_channels != 3:
        return None
    if not hub:
        return imagenet_preprocessing()
    t = torchvision.models.get_model_weights(tv_name).DEFAULT.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return Preprocessing((3, crop, crop), tuple(t.mean), tuple(t.std), resize=resize, crop=crop,
                         interpolation=t.interpolation.value, source="weights")


def deployment_card(record: Preprocessing | None, input_shape: tuple[int, ...], *, model_file: str, fmt: str,
                    classes: list[str] | None = None) -> dict[str, Any]:
    """What a deployed file's user needs to feed it, as JSON-able data (``cheapconv export`` writes it beside the
    file as ``FILE.json``): the input's name and shape (N×C×H×W float32, batch dynamic), the preprocessing
    (``record`` at the exported size; None fields where the model records none), the output's name and the
    class names (``classes``) where known. The README's export section applies it with numpy."""
    c, h, w = (int(v) for v in input_shape)
    notes = []
    if record is not None and record.input_size[0] != c:
        notes.append(f"the model records {record.input_size[0]}-channel preprocessing, not {c}: left out")
        record = None
    if record is not None and record.input_size[1:] != (h, w):
        notes.append(f"the model records {record.input_size[1]}×{record.input_size[2]} inputs; exported at "
                     f"{h}×{w}, with the same resize-to-crop ratio")
        record = record.at_size(h) if h == w else replace(record, input_size=(c, h, w), resize=None, crop=None)
    if record is None:
        notes.append("the model file records no preprocessing (mean/std, resize): feed it as it was trained")
    fields = ("resize", "crop", "pad_from", "interpolation", "channel_order", "max_pixel_value", "mean", "std",
              "source")
    stored = record.to_dict() if record is not None else dict.fromkeys(fields)
    return {
        "format": "cheapconv-preprocessing", "version": 1, "model_file": model_file, "model_format": fmt,
        "input_name": "input" if fmt == "onnx" else None, "output_name": "output" if fmt == "onnx" else None,
        "input_shape": ["batch", c, h, w], "layout": "NCHW", "dtype": "float32",
        **{k: stored[k] for k in fields},
        "describe": record.describe() if record is not None else None,
        "classes": list(classes) if classes else None,
        "notes": notes,
    }
