"""Datasets by name (Fashion-MNIST, CIFAR, ImageFolder, synthetic), batched augmentation and loaders."""

from __future__ import annotations

from .datasets import (
    DATA_DIR_ENV,
    DEBIAN_FASHION_MNIST_DIR,
    DatasetInfo,
    TensorImageDataset,
    dataset_info,
    get_dataset,
    make_loader,
    read_idx,
    synthetic_dataset,
)

__all__ = [
    "DATA_DIR_ENV", "DEBIAN_FASHION_MNIST_DIR", "DatasetInfo", "TensorImageDataset", "dataset_info",
    "get_dataset", "make_loader", "read_idx", "synthetic_dataset",
]
