"""Datasets by name (Fashion-MNIST, CIFAR, ImageFolder, synthetic), batched augmentation and loaders.

Modules, one job each: :mod:`~cheapconv.data.info` (what a dataset is, by name), :mod:`~cheapconv.data.folders`
(where files are looked for), :mod:`~cheapconv.data.idx` (IDX files), :mod:`~cheapconv.data.augment`
(augmentation strengths; in-memory datasets, batched augmentation), :mod:`~cheapconv.data.datasets` (loading by name),
:mod:`~cheapconv.data.adapters` (fitting data to a model's input and normalisation; the record of the data),
:mod:`~cheapconv.data.batching` (loaders, the worker-count rule), :mod:`~cheapconv.data.segmentation`
(``fashion-mnist-seg`` scenes, VOC, Cityscapes: masks as labels).
"""

from __future__ import annotations

from .adapters import ModelAdapters, adapt_for_model, data_preprocessing
from .augment import AUGMENTS, Augmentation, TensorImageDataset, augmentation
from .batching import default_workers, make_loader
from .datasets import DEBIAN_FASHION_MNIST_DIR, get_dataset, synthetic_dataset
from .folders import DATA_DIR_ENV
from .idx import read_idx
from .info import DATASET_NAMES, DatasetInfo, dataset_info
from .segmentation import SegmentationTensorDataset

__all__ = [
    "AUGMENTS", "Augmentation", "DATASET_NAMES", "DATA_DIR_ENV", "DEBIAN_FASHION_MNIST_DIR", "DatasetInfo",
    "ModelAdapters", "TensorImageDataset", "adapt_for_model", "augmentation", "data_preprocessing", "dataset_info",
    "default_workers", "get_dataset", "make_loader",
    "SegmentationTensorDataset", "read_idx", "synthetic_dataset",
]
