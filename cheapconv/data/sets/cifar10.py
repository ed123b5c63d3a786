"""``cifar10``: 50,000 + 10,000 colour 32×32 images, 10 classes: torchvision's files under ``data_dir``
(``cifar-10-batches-py``), downloaded only when ``download=True``."""

from __future__ import annotations

from torch import Tensor

from ...extensions import DATASETS
from ..augment import InMemorySource
from ..info import DatasetInfo, LoadRequest
from ._cifar import read_cifar

__all__ = ["CIFAR10"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The values of the Moonshine reference code (main.py), kept so that teachers trained with it see the inputs they
# were trained on. (The exact per-channel std of CIFAR-10 is (0.2470, 0.2435, 0.2616); with BatchNorm after the
# stem the difference does not matter for training.)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class CIFAR10(InMemorySource):
    """CIFAR-10 in memory (see the module docstring)."""

    def info(self, arg: str) -> DatasetInfo:
        return DatasetInfo("cifar10", 10, 3, 32, MEAN, STD, CLASSES)

    def read(self, arg: str, request: LoadRequest) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        return read_cifar("cifar10", request.split, request.data_dir, request.download)


DATASETS.add("cifar10", CIFAR10(), help="CIFAR-10: 60,000 colour 32×32 images, 10 classes")
