"""Datasets by name: where each is found and how it is read; :func:`get_dataset` and :func:`synthetic_dataset`.

Names (case-insensitive; ``-`` and ``_`` optional in the fixed names):

- ``fashion-mnist``: 60,000 + 10,000 grayscale 28×28 images, 10 classes. Read from IDX files (gzip or
  raw) in ``data_dir``, else from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), else downloaded by torchvision when ``download=True``.
- ``cifar10``, ``cifar100``: torchvision's files (``cifar-10-batches-py``, ``cifar-100-python``) under
  ``data_dir``; downloaded only when ``download=True``.
- ``imagefolder:<path>``: an ImageNet-style tree, ``<path>/train/<class>/*`` and ``<path>/val/<class>/*``
  (``test/`` or ``validation/`` also accepted for the test split). A path with none of these sub-folders is
  taken as one class tree and serves whichever split is asked for (useful to evaluate on a folder).
- ``fashion-mnist-seg[:SIZE[:ITEMS]]``, ``voc``, ``cityscapes``: segmentation (masks as labels), see
  :mod:`cheapconv.data.segmentation`.
- ``synthetic[:CxHxW[:classes[:samples]]]``: deterministic random images, default
  ``synthetic:3x32x32:10:512``; keyword arguments through :func:`synthetic_dataset`, the seed through
  ``seed=`` of either function.

Fashion-MNIST, CIFAR and synthetic data live in memory as uint8 tensors
(:class:`~cheapconv.data.TensorImageDataset`, batched augmentation: see :mod:`cheapconv.data.augment`).
ImageFolder trees use torchvision's PIL transforms (RandomResizedCrop + flip for training, Resize +
CenterCrop for testing). ``augment`` chooses the training augmentation's strength for both
(:data:`~cheapconv.data.augment.AUGMENTS`: ``none``, ``light``, ``standard``).

torchvision is imported only inside the functions that need it (CIFAR, ImageFolder, downloads), so that
``import cheapconv.data`` and Fashion-MNIST/synthetic data work with torch alone.

Example::

    train = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    loader = make_loader(train, 128, shuffle=True)
    print(train.info)   # DatasetInfo(name='fashion-mnist', num_classes=10, channels=3, image_size=32, ...)
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import CheapconvError, DatasetNotFoundError, FileFormatError, UsageError
from ..models.preprocessing import Preprocessing
from .augment import TensorImageDataset, augmentation, in_memory_dataset, in_memory_info
from .folders import data_root, fashion_mnist_files, imagefolder_root
from .idx import read_idx
from .info import adapt_info, dataset_info, parse_name, parse_synthetic
from .segmentation import fashion_mnist_seg, torchvision_segmentation

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "get_dataset", "synthetic_dataset"]

Split = Literal["train", "test"]
# Kept here, next to the only code that reads it, so that tests can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _import_torchvision(what: str) -> Any:
    try:
        # Imported here, not at module level: torchvision is an optional extra and slow to import.
        import torchvision
    except ImportError as exc:
        raise CheapconvError(
            f"{what} needs torchvision, which is not importable ({exc}). Install it with "
            "`pip install 'cheapconv[vision]'` (torch and torchvision versions must match)."
        ) from exc
    return torchvision


def _load_fashion_mnist(split: str, data_dir: Path, download: bool) -> tuple[Tensor, Tensor]:
    # data_dir itself, the common sub-folder names, torchvision's layout, then the Debian package.
    candidates = [data_dir, data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST_DIR)
    files = next((f for f in (fashion_mnist_files(d, split) for d in candidates) if f), None)
    if files is None and download:
        tv = _import_torchvision("Downloading Fashion-MNIST")
        try:
            tv.datasets.FashionMNIST(str(data_dir), train=split == "train", download=True)
        except (OSError, RuntimeError) as exc:
            raise DatasetNotFoundError(f"Downloading Fashion-MNIST into {data_dir} failed: {exc}.") from exc
        files = fashion_mnist_files(data_dir / "FashionMNIST" / "raw", split)
    if files is None:
        prefix = "train" if split == "train" else "t10k"
        raise DatasetNotFoundError(
            f"Fashion-MNIST ({split}) not found: looked for {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] in {', '.join(str(c) for c in candidates)}. To get it: "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, works offline; installs into "
            f"{DEBIAN_FASHION_MNIST_DIR}), or put the four IDX files (gzip or raw) in a folder and pass "
            f"--data-dir FOLDER (data_dir=...), or pass --download (download=True) when online to fetch them "
            f"into {data_dir / 'FashionMNIST' / 'raw'}."
        )
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.dim() != 3 or images.dtype != torch.uint8 or labels.shape != (images.shape[0],):
        raise FileFormatError(
            f"{files[0]} / {files[1]}: expected uint8 images N×H×W and N labels, got {images.dtype} "
            f"{tuple(images.shape)} and {tuple(labels.shape)}."
        )
    return images.unsqueeze(1), labels.to(torch.int64)


def _load_cifar(
    kind: str, split: str, data_dir: Path, download: bool
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    title = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
    roots = [data_dir, data_dir / kind]
    if data_dir.name == folder:  # accept the extracted folder itself
        roots.insert(0, data_dir.parent)
    root = next((r for r in roots if (r / folder).is_dir()), None)
    if root is None and not download:
        raise DatasetNotFoundError(
            f"{title} ({split}) not found: looked for the folder {folder} (torchvision's python "
            f"version) in {', '.join(str(r) for r in roots)}. To get it: pass --download (download=True) "
            f"when online to fetch it into {data_dir}, or extract {folder}.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html into a folder and pass --data-dir FOLDER "
            "(data_dir=...)."
        )
    tv = _import_torchvision(title)
    cls = tv.datasets.CIFAR10 if kind == "cifar10" else tv.datasets.CIFAR100
    try:
        ds = cls(str(root or data_dir), train=split == "train", download=download)
    except (OSError, RuntimeError) as exc:
        verb = "Downloading" if download else "Reading"
        raise DatasetNotFoundError(f"{verb} {title} in {root or data_dir} failed: {exc}.") from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N×H×W×C -> N×C×H×W, uint8
    return images, torch.as_tensor(ds.targets, dtype=torch.int64), tuple(ds.classes)


def _load_imagefolder(
    arg: str, split: str, augment: bool | str | None, in_chans: int | None, image_size: int | None,
    preprocessing: Preprocessing | None = None,
) -> Dataset:
    root = imagefolder_root(arg, split)
    assert root is not None
    tv = _import_torchvision("imagefolder datasets")
    t = tv.transforms
    info = dataset_info(f"imagefolder:{arg}", in_chans=in_chans, image_size=image_size, preprocessing=preprocessing)
    s = info.image_size
    normalize = t.Normalize(info.mean, info.std)
    mode = t.InterpolationMode(info.interpolation)   # the model's (e.g. timm's bicubic), else bilinear
    level = augmentation(augment, split)   # the strengths are defined once, in data/augment.py
    if level.active:
        crop = [t.RandomResizedCrop(s, scale=(level.min_scale, 1.0), interpolation=mode)] \
            if level.min_scale is not None else [t.Resize(info.resize, interpolation=mode), t.CenterCrop(s)]
        tf = t.Compose([*crop, *([t.RandomHorizontalFlip()] if level.flip else []), t.ToTensor(), normalize])
    else:
        # The ImageNet convention: resize to S/0.875 (256 for 224; a model's own ratio), then centre-crop S.
        tf = t.Compose([t.Resize(info.resize, interpolation=mode), t.CenterCrop(s), t.ToTensor(), normalize])
    try:
        ds = tv.datasets.ImageFolder(str(root), transform=tf)
    except FileNotFoundError as exc:  # no class folders, or class folders without images
        raise DatasetNotFoundError(f"imagefolder:{arg}: no usable images under {root}: {exc}") from exc
    ds.augmentation = level.name
    ds.info = replace(info, num_classes=len(ds.classes), classes=tuple(ds.classes))
    return ds


def synthetic_dataset(
    split: Split = "train",
    *,
    channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    num_samples: int = 512,
    seed: int = 0,
    augment: bool | str | None = None,
    in_chans: int | None = None,
) -> TensorImageDataset:
    """Deterministic random images that a network can learn (for tests, demos and benchmarks).

    Each class has a smooth prototype (4×4 uniform noise upsampled bilinearly, so a 4-px crop shift keeps it
    recognisable); a sample is its prototype plus Gaussian pixel noise (σ = 0.15), quantised to uint8. The
    prototypes depend on ``seed`` only, the samples on ``seed`` and ``split``: train and test share classes
    but not images. Labels are balanced (``i % num_classes``, shuffled). Same arguments, same tensors.
    """
    name = f"synthetic:{channels}x{image_size}x{image_size}:{num_classes}:{num_samples}"
    info = dataset_info(name)  # validates the sizes exactly as the name form does
    images, labels = _synthetic_tensors(channels, image_size, num_classes, num_samples, seed, split)
    return in_memory_dataset(images, labels, info, split, augment, in_chans, None)


def _synthetic_tensors(c: int, s: int, k: int, n: int, seed: int, split: str) -> tuple[Tensor, Tensor]:
    protos_gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(k, c, 4, 4, generator=protos_gen)
    protos = F.interpolate(protos, size=(s, s), mode="bilinear", align_corners=False)
    # Distinct, fixed stream per split; the offsets only need to differ from each other.
    sample_gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "train" else 2))
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=sample_gen)]
    noise = torch.randn(n, c, s, s, generator=sample_gen)
    pixels = (0.25 + 0.5 * protos[labels] + 0.15 * noise).clamp(0.0, 1.0)
    return (pixels * 255.0).round().to(torch.uint8), labels


def get_dataset(
    name: str,
    split: Split = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | str | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
) -> Dataset:
    """The ``split`` of dataset ``name`` (see the module docstring for names and where files are looked for).

    - ``augment``: None means the standard training augmentation for ``split="train"`` and none for
      ``"test"``; True/False force it either way; a name chooses its strength, ``"none"``, ``"light"`` or
      ``"standard"`` (:data:`~cheapconv.data.augment.AUGMENTS`; segmentation data: none or standard). The
      dataset's ``augmentation`` attribute names the strength it applies.
    - ``in_chans``: channels the model expects. Grayscale data with ``in_chans=3`` (or any k) repeats the
      channel k times, normalisation statistics included; any other mismatch is a UsageError.
    - ``image_size``: for in-memory datasets (Fashion-MNIST, CIFAR, synthetic), a larger size zero-pads the
      images centred (Fashion-MNIST 28 -> 32 adds 2 black pixels per side, so 32×32 networks such as WRN fit
      without interpolation); a smaller size is a UsageError. For ImageFolder it is the crop size (default
      224).
    - ``data_dir``: where to look and download to; default ``$CHEAPCONV_DATA_DIR`` or ``./data``.
    - ``download``: allow torchvision to download Fashion-MNIST/CIFAR when not found locally.
    - ``seed``: only for ``synthetic`` data and the scenes of ``fashion-mnist-seg``.
    - ``preprocessing``: a model's record (:class:`~cheapconv.models.preprocessing.Preprocessing`, e.g.
      ``model.cheapconv_preprocessing``): its mean/std replace the dataset's (one per channel after the
      ``in_chans`` adapter), and ImageFolder also takes its resize-to-crop ratio and interpolation (timm's
      ``crop_pct`` and bicubic, say). Its size is not used: pass ``image_size``
      (:func:`~cheapconv.data.adapt_for_model` chooses both from a model).

    The returned dataset yields ``(float32 C×S×S tensor, int label)`` and carries ``.info``
    (:class:`~cheapconv.data.DatasetInfo` after adapters). Missing data raises
    :class:`~cheapconv.errors.DatasetNotFoundError` saying where it looked and how to get it.

    >>> import cheapconv
    >>> train = cheapconv.get_dataset("synthetic:3x32x32:10:64", "train")
    >>> image, label = train[0]
    >>> tuple(image.shape), len(train)
    ((3, 32, 32), 64)
    >>> own = cheapconv.get_dataset("imagefolder:/path/to/images", "train", image_size=96)  # doctest: +SKIP
    """
    kind, arg = parse_name(name)
    if split not in ("train", "test"):
        raise UsageError(f"Unknown split {split!r}; valid: train, test.")
    if kind == "imagefolder":
        return _load_imagefolder(arg, split, augment, in_chans, image_size, preprocessing)
    if kind in ("fashion-mnist-seg", "voc", "cityscapes"):
        level = augmentation(augment, split)
        if level.name not in ("none", "standard"):
            raise UsageError(f"Segmentation data ({name}) take augment 'none' or 'standard' (their joint "
                             f"image-and-mask crop and flip), not {level.name!r}.")
        ds = _load_segmentation(kind, name, split, data_dir, download, level.active, in_chans, image_size, seed,
                                preprocessing)
        ds.augmentation = level.name
        return ds
    info = dataset_info(name)
    # Check the adapters before reading (possibly downloading) anything.
    in_memory_info(info, in_chans, image_size, preprocessing)
    if kind == "synthetic":
        c, s, k, n = parse_synthetic(arg)
        images, labels = _synthetic_tensors(c, s, k, n, seed, split)
        return in_memory_dataset(images, labels, info, split, augment, in_chans, image_size, preprocessing)
    root = data_root(data_dir)
    if kind == "fashion-mnist":
        images, labels = _load_fashion_mnist(split, root, download)
    else:
        images, labels, classes = _load_cifar(kind, split, root, download)
        info = replace(info, classes=classes)
    return in_memory_dataset(images, labels, info, split, augment, in_chans, image_size, preprocessing)


def _load_segmentation(kind: str, name: str, split: str, data_dir, download: bool, augment: bool | None,
                       in_chans: int | None, image_size: int | None, seed: int,
                       preprocessing: Preprocessing | None = None) -> Dataset:
    info = dataset_info(name)
    if kind != "fashion-mnist-seg":   # VOC, Cityscapes: image_size is the crop size
        return torchvision_segmentation(kind, split, data_root(data_dir),
                                        adapt_info(info, in_chans, image_size, preprocessing), augment)
    if image_size is not None and image_size != info.image_size:
        raise UsageError(f"{info.name} scenes are {info.image_size}×{info.image_size}; image_size={image_size} "
                         f"would need the masks rescaled. Build scenes of that size instead: "
                         f"--data fashion-mnist-seg:{image_size}.")
    adapted = adapt_info(info, in_chans, None, preprocessing)
    images, labels = _load_fashion_mnist(split, data_root(data_dir), download)
    return fashion_mnist_seg(images, labels, adapted, split=split, augment=augment,
                             repeat=adapted.channels // info.channels, seed=seed)
