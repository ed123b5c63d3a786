"""Datasets by name, with the standard augmentation of each, and a loader with sensible defaults.

Names (case-insensitive; ``-`` and ``_`` optional in the fixed names):

- ``fashion-mnist``: 60,000 + 10,000 grayscale 28×28 images, 10 classes. Read from IDX files (gzip or
  raw) in ``data_dir``, else from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), else downloaded by torchvision when ``download=True``.
- ``cifar10``, ``cifar100``: torchvision's files (``cifar-10-batches-py``, ``cifar-100-python``) under
  ``data_dir``; downloaded only when ``download=True``.
- ``imagefolder:<path>``: an ImageNet-style tree, ``<path>/train/<class>/*`` and ``<path>/val/<class>/*``
  (``test/`` or ``validation/`` also accepted for the test split). A path with none of these sub-folders is
  taken as one class tree and serves whichever split is asked for (useful to evaluate on a folder).
- ``synthetic[:CxHxW[:classes[:samples]]]``: deterministic random images, default
  ``synthetic:3x32x32:10:512``; keyword arguments through :func:`synthetic_dataset`, the seed through
  ``seed=`` of either function.

Fashion-MNIST, CIFAR and synthetic data live in memory as uint8 tensors (:class:`TensorImageDataset`) and are
augmented with batched tensor ops: random crop with 4-pixel zero padding + horizontal flip for training, the
CIFAR recipe of the spec (section 6), then per-channel normalisation. ImageFolder trees use torchvision's PIL
transforms (RandomResizedCrop + flip for training, Resize + CenterCrop for testing).

torchvision is imported only inside the functions that need it (CIFAR, ImageFolder, downloads), so that
``import cheapconv.data`` and Fashion-MNIST/synthetic data work with torch alone.

Example::

    train = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    loader = make_loader(train, 128, shuffle=True)
    print(train.info)   # DatasetInfo(name='fashion-mnist', num_classes=10, channels=3, image_size=32, ...)
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import CheapconvError, DatasetNotFoundError, FileFormatError, UsageError

__all__ = [
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetInfo",
    "TensorImageDataset",
    "dataset_info",
    "get_dataset",
    "make_loader",
    "read_idx",
    "synthetic_dataset",
]

Split = Literal["train", "test"]
DATASET_NAMES: tuple[str, ...] = (
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "imagefolder:<path>",
    "synthetic[:CxHxW[:classes[:samples]]]",
)
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Used when no data_dir is given: $CHEAPCONV_DATA_DIR, else ./data (ignored by the repository's .gitignore).
DATA_DIR_ENV = "CHEAPCONV_DATA_DIR"

# Channel statistics. CIFAR: the values of the Moonshine reference code (main.py), kept so that teachers
# trained with it see the inputs they were trained on. (The exact per-channel std of CIFAR-10 is
# (0.2470, 0.2435, 0.2616); with BatchNorm after the stem the difference does not matter for training.)
_FMNIST_MEAN, _FMNIST_STD = (0.2860,), (0.3530,)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2009, 0.1984, 0.2023)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
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
    ``image_size`` adapter); ``mean``/``std`` have one entry per yielded channel.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None


# ----------------------------------------------------------------------------------------------- names


def _parse_name(name: str) -> tuple[str, str]:
    """Split a dataset name into (kind, argument); raise UsageError for unknown names."""
    head, sep, arg = name.strip().partition(":")
    key = head.lower().replace("-", "").replace("_", "")
    kinds = {"fashionmnist": "fashion-mnist", "cifar10": "cifar10", "cifar100": "cifar100",
             "imagefolder": "imagefolder", "synthetic": "synthetic"}  # fmt: skip
    kind = kinds.get(key)
    if kind is None or (sep and kind not in ("imagefolder", "synthetic")):
        raise UsageError(f"Unknown dataset {name!r}. Valid names: {', '.join(DATASET_NAMES)}.")
    if kind == "imagefolder" and not arg:
        raise UsageError("'imagefolder' needs a path: imagefolder:/path/to/tree (train/ and val/ inside).")
    return kind, arg


def _parse_synthetic(arg: str) -> tuple[int, int, int, int]:
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


def _adapt_info(info: DatasetInfo, in_chans: int | None, image_size: int | None) -> DatasetInfo:
    """Apply the ``in_chans`` adapter (grayscale -> k channels by repetition) and record ``image_size``."""
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
    return info


def dataset_info(name: str, *, in_chans: int | None = None, image_size: int | None = None) -> DatasetInfo:
    """Describe dataset ``name`` without loading it (an ``imagefolder:`` tree is only listed for its classes).

    ``in_chans`` and ``image_size`` are the adapters of :func:`get_dataset`; the result describes what the
    dataset built with the same arguments yields.
    """
    kind, arg = _parse_name(name)
    if kind == "fashion-mnist":
        info = DatasetInfo("fashion-mnist", 10, 1, 28, _FMNIST_MEAN, _FMNIST_STD, _FMNIST_CLASSES)
    elif kind == "cifar10":
        info = DatasetInfo("cifar10", 10, 3, 32, _CIFAR10_MEAN, _CIFAR10_STD, _CIFAR10_CLASSES)
    elif kind == "cifar100":
        info = DatasetInfo("cifar100", 100, 3, 32, _CIFAR100_MEAN, _CIFAR100_STD)
    elif kind == "synthetic":
        c, s, k, n = _parse_synthetic(arg)
        # Synthetic pixels are spread around 0.5 by construction (see synthetic_dataset).
        info = DatasetInfo(f"synthetic:{c}x{s}x{s}:{k}:{n}", k, c, s, (0.5,) * c, (0.25,) * c)
    else:
        root = _imagefolder_root(arg, "train", must_exist=False) or _imagefolder_root(
            arg, "test", must_exist=False
        )
        if root is None:
            _imagefolder_root(arg, "train")  # raises DatasetNotFoundError saying where it looked
        assert root is not None
        classes = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))
        info = DatasetInfo(f"imagefolder:{arg}", len(classes), 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, classes)
    return _adapt_info(info, in_chans, image_size)


# ---------------------------------------------------------------------------------------- IDX format

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> (dtype, bytes per element).
_IDX_TYPES: dict[int, tuple[torch.dtype, int]] = {
    0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4), 0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8),
}  # fmt: skip


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read an IDX file (the MNIST format), gzip-compressed or raw, into a tensor.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions d, then d big-endian uint32 sizes, then the data in big-endian
    C order. Compression is detected from the gzip magic bytes, not the file name. A malformed or truncated
    file raises :class:`~cheapconv.errors.FileFormatError`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"Cannot read the IDX file {path}: {exc.strerror or exc}. Check the path and its "
                              "permissions.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile, truncated stream, corrupt deflate data
            raise FileFormatError(f"{path} looks gzip-compressed but does not decompress ({exc}): it is damaged "
                                  "or truncated. Download or copy the file again.") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise FileFormatError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'}).")
    dtype, size = _IDX_TYPES[raw[2]]
    ndim, start = raw[3], 4 + 4 * raw[3]
    if len(raw) < start:
        raise FileFormatError(f"{path}: IDX header truncated ({ndim} dimensions announced).")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    expected = math.prod(dims) * size
    if len(raw) - start != expected:
        raise FileFormatError(
            f"{path}: IDX shape {dims} needs {expected} bytes of data, the file has {len(raw) - start}."
        )
    if expected == 0:
        return torch.empty(dims, dtype=dtype)
    flat = torch.frombuffer(bytearray(raw[start:]), dtype=torch.uint8)
    if size > 1 and sys.byteorder == "little":
        flat = flat.view(-1, size).flip(1).contiguous()  # big-endian -> native byte order
    return flat.view(dtype).reshape(dims)


# ---------------------------------------------------------------------------- in-memory dataset class


class TensorImageDataset(Dataset):
    """uint8 images kept in memory (N×C×S×S), augmented and normalised with batched tensor ops.

    Training augmentation (``augment=True``): zero-pad by ``crop_padding`` pixels, take a random S×S crop,
    flip horizontally with probability 1/2; the padding is black in pixel space (0 before normalisation),
    exactly like torchvision's ``RandomCrop(S, padding=4)`` on the raw image. Then ``x/255``, per-channel
    ``(x − mean)/std``, and the channel is repeated ``repeat`` times (grayscale -> RGB adapter).

    ``__getitems__`` transforms a whole batch in one go (the DataLoader calls it when present), which is much
    cheaper than per-sample work; ``__getitem__`` goes through the same code with a batch of one, so both
    paths apply the same transform (without augmentation, bit for bit the same tensors). Randomness comes
    from torch's global generator (seeded per worker by the DataLoader; seed it with ``torch.manual_seed``
    when loading in the main process).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        info: DatasetInfo,
        *,
        augment: bool,
        crop_padding: int = 4,
        flip: bool = True,
        repeat: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
            raise UsageError(f"Expected uint8 images N×C×S×S, got {images.dtype} {tuple(images.shape)}.")
        if labels.shape != (images.shape[0],):
            raise UsageError(f"Expected {images.shape[0]} labels, got shape {tuple(labels.shape)}.")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.info = info
        self.augment, self.crop_padding, self.flip, self.repeat = augment, crop_padding, flip, repeat
        c = images.shape[1]
        mean = torch.tensor(info.mean[:c], dtype=torch.float32).view(1, c, 1, 1)
        std = torch.tensor(info.std[:c], dtype=torch.float32).view(1, c, 1, 1)
        # (x/255 − mean)/std folded into one multiply-add.
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names, where known."""
        return self.info.classes

    def transform_batch(self, index: Tensor) -> Tensor:
        """Images ``index`` (1-D int64), augmented (if enabled) and normalised: B×C'×S×S float32."""
        x = self.images[index]
        if self.augment:
            b, c, s, p = x.shape[0], x.shape[1], x.shape[-1], self.crop_padding
            if p > 0:
                padded = F.pad(x, (p, p, p, p))
                top = torch.randint(0, 2 * p + 1, (b, 1))
                left = torch.randint(0, 2 * p + 1, (b, 1))
                span = torch.arange(s)
                rows, cols = (top + span)[:, None, :, None], (left + span)[:, None, None, :]
                batch, chan = torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None]
                x = padded[batch, chan, rows, cols]
            if self.flip:
                x = torch.where((torch.rand(b) < 0.5)[:, None, None, None], x.flip(-1), x)
        out = x.to(torch.float32) * self._scale + self._shift
        return out.repeat(1, self.repeat, 1, 1) if self.repeat > 1 else out

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform_batch(torch.tensor([i]))[0], int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return list(zip(self.transform_batch(index).unbind(0), self.labels[index].tolist(), strict=True))


def _in_memory_info(info: DatasetInfo, in_chans: int | None, image_size: int | None) -> DatasetInfo:
    """Adapted info for an in-memory dataset; checked before any file is read."""
    if image_size is not None and image_size < info.image_size:
        raise UsageError(
            f"{info.name} images are {info.image_size}×{info.image_size}; image_size={image_size} would crop "
            "them. In-memory datasets can only be enlarged (by zero padding)."
        )
    return _adapt_info(info, in_chans, image_size)


def _in_memory(
    images: Tensor, labels: Tensor, info: DatasetInfo, split: str, augment: bool | None,
    in_chans: int | None, image_size: int | None,
) -> TensorImageDataset:  # fmt: skip
    """Wrap native uint8 images with the adapters: zero padding up to ``image_size``, channel repetition."""
    adapted = _in_memory_info(info, in_chans, image_size)
    native, size = images.shape[-1], adapted.image_size
    if size != native:
        # Centred zero padding (black border) keeps every pixel at its native scale: 28 -> 32 adds 2 px
        # per side, which is how Fashion-MNIST fits networks built for 32×32 inputs, no interpolation.
        lo = (size - native) // 2
        images = F.pad(images, (lo, size - native - lo, lo, size - native - lo))
    repeat = adapted.channels // info.channels
    do_augment = (split == "train") if augment is None else augment
    return TensorImageDataset(images, labels, adapted, augment=do_augment, repeat=repeat)


# ----------------------------------------------------------------------------------------- loaders


def _data_root(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


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


def _fashion_mnist_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _load_fashion_mnist(split: str, data_dir: Path, download: bool) -> tuple[Tensor, Tensor]:
    # data_dir itself, the common sub-folder names, torchvision's layout, then the Debian package.
    candidates = [data_dir, data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST_DIR)
    files = next((f for f in (_fashion_mnist_files(d, split) for d in candidates) if f), None)
    if files is None and download:
        tv = _import_torchvision("Downloading Fashion-MNIST")
        try:
            tv.datasets.FashionMNIST(str(data_dir), train=split == "train", download=True)
        except (OSError, RuntimeError) as exc:
            raise DatasetNotFoundError(f"Downloading Fashion-MNIST into {data_dir} failed: {exc}.") from exc
        files = _fashion_mnist_files(data_dir / "FashionMNIST" / "raw", split)
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


def _imagefolder_root(arg: str, split: str, *, must_exist: bool = True) -> Path | None:
    """The class tree for ``split`` under ``arg``; see the module docstring for the accepted layouts."""
    base = Path(arg).expanduser()
    names = ("train",) if split == "train" else ("val", "test", "validation")
    subdirs = [base / n for n in ("train", "val", "test", "validation")]
    root = next((base / n for n in names if (base / n).is_dir()), None)
    if root is None and base.is_dir() and not any(d.is_dir() for d in subdirs):
        root = base  # a flat class tree serves both splits
    if root is None and must_exist:
        raise DatasetNotFoundError(
            f"No {split} images for imagefolder:{arg}: looked for {', '.join(str(base / n) for n in names)}"
            f"{'' if base.is_dir() else f' ({base} does not exist)'}. Expected an ImageNet-style tree, "
            "<path>/train/<class>/*.jpg and <path>/val/<class>/*.jpg, or one folder of class sub-folders."
        )
    return root


def _load_imagefolder(
    arg: str, split: str, augment: bool | None, in_chans: int | None, image_size: int | None
) -> Dataset:
    root = _imagefolder_root(arg, split)
    assert root is not None
    tv = _import_torchvision("imagefolder datasets")
    t = tv.transforms
    info = _adapt_info(dataset_info(f"imagefolder:{arg}"), in_chans, image_size)
    s = info.image_size
    normalize = t.Normalize(info.mean, info.std)
    if (split == "train") if augment is None else augment:
        tf = t.Compose([t.RandomResizedCrop(s), t.RandomHorizontalFlip(), t.ToTensor(), normalize])
    else:
        # The ImageNet convention: resize to S/0.875 (256 for 224), then centre-crop S.
        tf = t.Compose([t.Resize(round(s / 0.875)), t.CenterCrop(s), t.ToTensor(), normalize])
    try:
        ds = tv.datasets.ImageFolder(str(root), transform=tf)
    except FileNotFoundError as exc:  # no class folders, or class folders without images
        raise DatasetNotFoundError(f"imagefolder:{arg}: no usable images under {root}: {exc}") from exc
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
    augment: bool | None = None,
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
    return _in_memory(images, labels, info, split, augment, in_chans, None)


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
    augment: bool | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """The ``split`` of dataset ``name`` (see the module docstring for names and where files are looked for).

    - ``augment``: None means the standard training augmentation for ``split="train"`` and none for
      ``"test"``; True/False force it either way.
    - ``in_chans``: channels the model expects. Grayscale data with ``in_chans=3`` (or any k) repeats the
      channel k times, normalisation statistics included; any other mismatch is a UsageError.
    - ``image_size``: for in-memory datasets (Fashion-MNIST, CIFAR, synthetic), a larger size zero-pads the
      images centred (Fashion-MNIST 28 -> 32 adds 2 black pixels per side, so 32×32 networks such as WRN fit
      without interpolation); a smaller size is a UsageError. For ImageFolder it is the crop size (default
      224).
    - ``data_dir``: where to look and download to; default ``$CHEAPCONV_DATA_DIR`` or ``./data``.
    - ``download``: allow torchvision to download Fashion-MNIST/CIFAR when not found locally.
    - ``seed``: only for ``synthetic`` data.

    The returned dataset yields ``(float32 C×S×S tensor, int label)`` and carries ``.info``
    (:class:`DatasetInfo` after adapters). Missing data raises
    :class:`~cheapconv.errors.DatasetNotFoundError` saying where it looked and how to get it.
    """
    kind, arg = _parse_name(name)
    if split not in ("train", "test"):
        raise UsageError(f"Unknown split {split!r}; valid: train, test.")
    if kind == "imagefolder":
        return _load_imagefolder(arg, split, augment, in_chans, image_size)
    info = dataset_info(name)
    # Check the adapters before reading (possibly downloading) anything.
    _in_memory_info(info, in_chans, image_size)
    if kind == "synthetic":
        c, s, k, n = _parse_synthetic(arg)
        images, labels = _synthetic_tensors(c, s, k, n, seed, split)
        return _in_memory(images, labels, info, split, augment, in_chans, image_size)
    root = _data_root(data_dir)
    if kind == "fashion-mnist":
        images, labels = _load_fashion_mnist(split, root, download)
    else:
        images, labels, classes = _load_cifar(kind, split, root, download)
        info = replace(info, classes=classes)
    return _in_memory(images, labels, info, split, augment, in_chans, image_size)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int | None = None,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with settings chosen for the dataset and the machine.

    - Workers (``num_workers=None``): for a :class:`TensorImageDataset`, 0 on CPU-only machines, 2 when CUDA
      is available. Its batched augmentation costs 1-2 ms per batch of 128 3×32×32 images (measured on the
      project's 2-core CPU), negligible next to a CPU training step, which already uses every core: worker
      processes would only compete with it and add inter-process copies. With a GPU the CPU is otherwise
      idle, so two workers prepare the next batches while the GPU computes. Other datasets (PIL decoding,
      ImageFolder) get ``min(8, usable CPUs)`` workers.
    - ``pin_memory`` only when CUDA is available (pinning is wasted work for CPU training);
      ``persistent_workers`` whenever there are workers, so they are not re-forked every epoch.
    - ``distributed=True`` uses a ``DistributedSampler`` (torch.distributed must be initialised; the training
      loop must call ``loader.sampler.set_epoch(epoch)`` each epoch so the shuffles differ).
    - ``seed`` fixes the shuffle order and the per-worker augmentation seeds.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {batch_size}.")
    cuda = torch.cuda.is_available()
    if num_workers is None:
        if isinstance(dataset, TensorImageDataset):
            num_workers = 2 if cuda else 0
        else:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            num_workers = min(8, cpus)
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        try:
            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(
                f"distributed=True needs an initialised torch.distributed process group ({exc}); launch with "
                "torchrun, or leave distributed off."
            ) from exc
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        generator=generator,
    )
