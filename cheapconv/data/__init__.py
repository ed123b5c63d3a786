"""Datasets by name (Fashion-MNIST, CIFAR, ImageFolder, synthetic, segmentation: :data:`DATASETS`), batched
augmentation and loaders.

Modules, one job each: :mod:`~cheapconv.data.info` (what a dataset is, by name; what a dataset's file registers),
:mod:`~cheapconv.data.sets` (the datasets, one file each), :mod:`~cheapconv.data.folders` (where files are looked
for), :mod:`~cheapconv.data.idx` (IDX files), :mod:`~cheapconv.data.vision` (torchvision, when needed),
:mod:`~cheapconv.data.augment` (augmentation strengths; in-memory datasets, batched augmentation),
:mod:`~cheapconv.data.finite` (refusing batches that hold NaN or inf),
:mod:`~cheapconv.data.datasets` (loading by name), :mod:`~cheapconv.data.adapters` (fitting data to a model's
input and normalisation; the record of the data), :mod:`~cheapconv.data.batching` (loaders, the worker-count
rule), :mod:`~cheapconv.data.segmentation` (masks as labels: scenes, joint transforms).
"""

from __future__ import annotations

from ..extensions import DATASETS
from .adapters import ModelAdapters, adapt_for_model, data_preprocessing
from .augment import AUGMENTS, Augmentation, InMemorySource, TensorImageDataset, augmentation
from .batching import cap_workers, default_workers, make_loader
from .datasets import get_dataset, synthetic_dataset
from .finite import check_finite, check_finite_batches
from .folders import DATA_DIR_ENV, DEBIAN_FASHION_MNIST_DIR
from .idx import read_idx
from .info import DatasetInfo, DatasetSource, LoadRequest, dataset_info, parse_name
from .segmentation import SegmentationTensorDataset

__all__ = [
    "AUGMENTS", "Augmentation", "DATASETS", "DATA_DIR_ENV", "DEBIAN_FASHION_MNIST_DIR", "DatasetInfo",
    "DatasetSource", "InMemorySource", "LoadRequest", "ModelAdapters", "TensorImageDataset", "adapt_for_model",
    "augmentation", "cap_workers", "check_finite", "check_finite_batches", "data_preprocessing", "dataset_info",
    "default_workers", "get_dataset", "make_loader", "parse_name", "SegmentationTensorDataset", "read_idx",
    "synthetic_dataset",
]
