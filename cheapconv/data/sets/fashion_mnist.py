"""``fashion-mnist``: 60,000 + 10,000 grayscale 28×28 images of clothes, 10 classes (Zalando's Fashion-MNIST).

Read from IDX files (gzip or raw) in ``data_dir``, else from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), else downloaded by torchvision when ``download=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ...errors import DatasetNotFoundError, FileFormatError
from ...extensions import DATASETS
from .. import folders
from ..augment import InMemorySource
from ..idx import read_idx
from ..info import DatasetInfo, LoadRequest
from ..vision import import_torchvision

__all__ = ["CLASSES", "FashionMNIST", "load_fashion_mnist"]

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MEAN, STD = (0.2860,), (0.3530,)


def load_fashion_mnist(split: str, data_dir: Path, download: bool) -> tuple[Tensor, Tensor]:
    """The ``split``'s images (uint8 N×1×28×28) and labels, from the folders of
    :func:`~cheapconv.data.folders.fashion_mnist_folders` (downloaded into ``data_dir`` when ``download``)."""
    candidates = folders.fashion_mnist_folders(data_dir)
    files = next((f for f in (folders.fashion_mnist_files(d, split) for d in candidates) if f), None)
    if files is None and download:
        tv = import_torchvision("Downloading Fashion-MNIST")
        try:
            tv.datasets.FashionMNIST(str(data_dir), train=split == "train", download=True)
        except (OSError, RuntimeError) as exc:
            raise DatasetNotFoundError(f"Downloading Fashion-MNIST into {data_dir} failed: {exc}.") from exc
        files = folders.fashion_mnist_files(data_dir / "FashionMNIST" / "raw", split)
    if files is None:
        prefix = "train" if split == "train" else "t10k"
        raise DatasetNotFoundError(
            f"Fashion-MNIST ({split}) not found: looked for {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] in {', '.join(str(c) for c in candidates)}. To get it: "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, works offline; installs into "
            f"{candidates[-1]}), or put the four IDX files (gzip or raw) in a folder and pass "
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


class FashionMNIST(InMemorySource):
    """Fashion-MNIST in memory (see the module docstring)."""

    def info(self, arg: str) -> DatasetInfo:
        return DatasetInfo("fashion-mnist", 10, 1, 28, MEAN, STD, CLASSES)

    def read(self, arg: str, request: LoadRequest) -> tuple[Tensor, Tensor, None]:
        return (*load_fashion_mnist(request.split, request.data_dir, request.download), None)


DATASETS.add("fashion-mnist", FashionMNIST(), help="Fashion-MNIST: 70,000 grayscale 28×28 clothes, 10 classes")
