"""What a dataset is, by name, without loading it: :class:`DatasetInfo`, name parsing, :func:`dataset_info`.

Also the ``in_chans``/``image_size`` adapters' effect on that description, and a model's normalisation
taking the place of the dataset's (``preprocessing=``) (:func:`adapt_info`), shared by every loader so that
``dataset_info(name, ...)`` and ``get_dataset(name, ...).info`` agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ..errors import UsageError
from ..models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .folders import imagefolder_root

__all__ = ["DATASET_NAMES", "DatasetInfo", "dataset_info"]

DATASET_NAMES: tuple[str, ...] = (
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "imagefolder:<path>",
    "synthetic[:CxHxW[:classes[:samples]]]",
    "fashion-mnist-seg[:SIZE[:ITEMS]]",
    "voc",
    "cityscapes",
)

# Channel statistics. CIFAR: the values of the Moonshine reference code (main.py), kept so that teachers
# trained with it see the inputs they were trained on. (The exact per-channel std of CIFAR-10 is
# (0.2470, 0.2435, 0.2616); with BatchNorm after the stem the difference does not matter for training.)
_FMNIST_MEAN, _FMNIST_STD = (0.2860,), (0.3530,)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2009, 0.1984, 0.2023)
_IMAGENET_MEAN, _IMAGENET_STD = IMAGENET_MEAN, IMAGENET_STD
# ImageFolder's default evaluation transform, the ImageNet convention: resize to S/0.875 (256 for 224), crop S
_CROP_PCT = 0.875
# fashion-mnist-seg: mostly black canvas (measured: mean 0.084-0.127, std 0.225-0.264 for canvases 64 to 40)
_SCENE_MEAN, _SCENE_STD = (0.10,), (0.24,)
_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
_FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, input shape, normalisation.

    ``channels`` and ``image_size`` describe the tensors the dataset yields (after any ``in_chans`` or
    ``image_size`` adapter); ``mean``/``std`` have one entry per yielded channel. ``task`` is
    ``"classification"`` (labels are class indices) or ``"segmentation"`` (labels are S×S masks of class
    indices, ``ignore_index`` marking unlabelled pixels, if any). ``resize`` and ``interpolation``: for
    files read at any size (ImageFolder), the test split's shorter side is resized to ``resize`` pixels, then
    centre-cropped to ``image_size``; ``resize`` is None for data used at its stored size (zero-padded when
    ``image_size`` is larger).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None
    task: str = "classification"
    ignore_index: int | None = None
    resize: int | None = None
    interpolation: str = "bilinear"


def parse_name(name: str) -> tuple[str, str]:
    """Split a dataset name into (kind, argument); raise UsageError for unknown names."""
    head, sep, arg = name.strip().partition(":")
    key = head.lower().replace("-", "").replace("_", "")
    kinds = {"fashionmnist": "fashion-mnist", "cifar10": "cifar10", "cifar100": "cifar100",
             "imagefolder": "imagefolder", "synthetic": "synthetic", "fashionmnistseg": "fashion-mnist-seg",
             "voc": "voc", "voc2012": "voc", "cityscapes": "cityscapes"}  # fmt: skip
    kind = kinds.get(key)
    if kind is None or (sep and kind not in ("imagefolder", "synthetic", "fashion-mnist-seg")):
        raise UsageError(f"Unknown dataset {name!r}. Valid names: {', '.join(DATASET_NAMES)}.")
    if kind == "imagefolder" and not arg:
        raise UsageError("'imagefolder' needs a path: imagefolder:/path/to/tree (train/ and val/ inside).")
    return kind, arg


def parse_synthetic(arg: str) -> tuple[int, int, int, int]:
    """``CxHxW[:classes[:samples]]`` -> (channels, size, classes, samples), with the documented defaults."""
    parts = arg.split(":") if arg else []
    try:
        if len(parts) > 3:
            raise ValueError
        c, h, w = (int(v) for v in parts[0].lower().split("x")) if parts and parts[0] else (3, 32, 32)
        k = int(parts[1]) if len(parts) > 1 else 10
        n = int(parts[2]) if len(parts) > 2 else 512
    except ValueError:
        raise UsageError(
            f"Cannot parse synthetic dataset spec {'synthetic:' + arg!r}; expected "
            "synthetic[:CxHxW[:classes[:samples]]], e.g. synthetic:1x28x28:10:256."
        ) from None
    if h != w:
        raise UsageError(f"Synthetic images must be square, got {h}x{w}.")
    if min(c, h, k, n) < 1:
        raise UsageError(f"Synthetic dataset sizes must be positive, got {c}x{h}x{w}:{k}:{n}.")
    return c, h, k, n


def _scene_spec(arg: str) -> tuple[int, int]:
    """``SIZE[:ITEMS]`` of a ``fashion-mnist-seg`` name -> (canvas, max items per scene); defaults 64 and 4."""
    parts = arg.split(":") if arg else []
    try:
        if len(parts) > 2:
            raise ValueError
        canvas = int(parts[0]) if parts and parts[0] else 64
        items = int(parts[1]) if len(parts) > 1 else 4
    except ValueError:
        raise UsageError(f"Cannot parse 'fashion-mnist-seg:{arg}'; expected fashion-mnist-seg[:SIZE[:ITEMS]], e.g. "
                         "fashion-mnist-seg:48:3.") from None
    if not 8 <= canvas <= 1024 or not 1 <= items <= 64:
        raise UsageError(f"fashion-mnist-seg:{arg}: SIZE (the canvas side) must be 8..1024 pixels and ITEMS (the "
                         "most items per scene) 1..64.")
    return canvas, items


def adapt_info(info: DatasetInfo, in_chans: int | None, image_size: int | None,
               preprocessing: Preprocessing | None = None) -> DatasetInfo:
    """Apply the ``in_chans`` adapter (grayscale -> k channels by repetition), record ``image_size``, and take
    a model's ``preprocessing``: its mean/std replace the dataset's (after the channel adapter: it must have
    one entry per channel) and, for data read at any size (ImageFolder), its resize-to-crop ratio and
    interpolation replace the ImageNet convention's. Its size is not used here (pass ``image_size``)."""
    if in_chans is not None and in_chans != info.channels:
        if info.channels != 1 or in_chans < 1:
            raise UsageError(
                f"{info.name} has {info.channels} channels but {in_chans} were asked for (in_chans). The "
                "only adapter is grayscale -> k channels by repeating the channel; build the model with "
                f"in_chans={info.channels} instead."
            )
        info = replace(info, channels=in_chans, mean=info.mean * in_chans, std=info.std * in_chans)
    if image_size is not None:
        if image_size < 1:
            raise UsageError(f"image_size must be positive, got {image_size}.")
        info = replace(info, image_size=image_size)
    if preprocessing is not None:
        if len(preprocessing.mean) != info.channels:
            raise UsageError(f"The preprocessing given has {len(preprocessing.mean)} channel(s) of mean/std but "
                             f"{info.name} yields {info.channels}; give in_chans={len(preprocessing.mean)} or leave "
                             "the preprocessing out (the dataset's own statistics).")
        info = replace(info, mean=preprocessing.mean, std=preprocessing.std)
    if info.resize is not None:
        s, p = info.image_size, preprocessing
        if p is not None and p.resize is not None and p.input_size[1:] == (s, s):
            resize, interpolation = p.resize, p.interpolation
        elif p is not None and p.crop_pct is not None:
            resize, interpolation = max(s, round(s / p.crop_pct)), p.interpolation
        else:
            resize, interpolation = round(s / _CROP_PCT), info.interpolation
        info = replace(info, resize=resize, interpolation=interpolation)
    return info


def dataset_info(name: str, *, in_chans: int | None = None, image_size: int | None = None,
                 preprocessing: Preprocessing | None = None) -> DatasetInfo:
    """Describe dataset ``name`` without loading it (an ``imagefolder:`` tree is only listed for its classes).

    ``in_chans``, ``image_size`` and ``preprocessing`` are the arguments of :func:`~cheapconv.data.get_dataset`;
    the result describes what the dataset built with the same arguments yields.
    """
    kind, arg = parse_name(name)
    if kind == "fashion-mnist":
        info = DatasetInfo("fashion-mnist", 10, 1, 28, _FMNIST_MEAN, _FMNIST_STD, _FMNIST_CLASSES)
    elif kind == "cifar10":
        info = DatasetInfo("cifar10", 10, 3, 32, _CIFAR10_MEAN, _CIFAR10_STD, _CIFAR10_CLASSES)
    elif kind == "cifar100":
        info = DatasetInfo("cifar100", 100, 3, 32, _CIFAR100_MEAN, _CIFAR100_STD)
    elif kind == "fashion-mnist-seg":
        canvas, items = _scene_spec(arg)
        info = DatasetInfo(f"fashion-mnist-seg:{canvas}:{items}", 11, 1, canvas, _SCENE_MEAN, _SCENE_STD,
                           ("background",) + _FMNIST_CLASSES, task="segmentation")
    elif kind == "voc":
        info = DatasetInfo("voc", 21, 3, 512, _IMAGENET_MEAN, _IMAGENET_STD, _VOC_CLASSES, task="segmentation",
                           ignore_index=255)
    elif kind == "cityscapes":
        info = DatasetInfo("cityscapes", 19, 3, 512, _IMAGENET_MEAN, _IMAGENET_STD, _CITYSCAPES_CLASSES,
                           task="segmentation", ignore_index=255)
    elif kind == "synthetic":
        c, s, k, n = parse_synthetic(arg)
        # Synthetic pixels are spread around 0.5 by construction (see synthetic_dataset).
        info = DatasetInfo(f"synthetic:{c}x{s}x{s}:{k}:{n}", k, c, s, (0.5,) * c, (0.25,) * c)
    else:
        root = imagefolder_root(arg, "train", must_exist=False) or imagefolder_root(
            arg, "test", must_exist=False
        )
        if root is None:
            imagefolder_root(arg, "train")  # raises DatasetNotFoundError saying where it looked
        assert root is not None
        classes = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))
        info = DatasetInfo(f"imagefolder:{arg}", len(classes), 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, classes,
                           resize=round(224 / _CROP_PCT))
    return adapt_info(info, in_chans, image_size, preprocessing)
