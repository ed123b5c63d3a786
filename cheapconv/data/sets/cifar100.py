"""``cifar100``: 50,000 + 10,000 colour 32×32 images, 100 classes: torchvision's files under ``data_dir``
(``cifar-100-python``), downloaded only when ``download=True``."""

from __future__ import annotations

from torch import Tensor

from ...extensions import DATASETS
from ..augment import InMemorySource
from ..info import DatasetInfo, LoadRequest
from ._cifar import read_cifar

__all__ = ["CIFAR100"]

# as CIFAR-10's, the values of the Moonshine reference code
MEAN, STD = (0.5071, 0.4866, 0.4409), (0.2009, 0.1984, 0.2023)


class CIFAR100(InMemorySource):
    """CIFAR-100 in memory (see the module docstring); the class names come from the files."""

    def info(self, arg: str) -> DatasetInfo:
        return DatasetInfo("cifar100", 100, 3, 32, MEAN, STD)

    def read(self, arg: str, request: LoadRequest) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        return read_cifar("cifar100", request.split, request.data_dir, request.download)


DATASETS.add("cifar100", CIFAR100(), help="CIFAR-100: 60,000 colour 32×32 images, 100 classes")
