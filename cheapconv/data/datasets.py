"""Datasets by name: :func:`get_dataset` (and :func:`synthetic_dataset`, generated images by keyword).

Names (case-insensitive; ``-`` and ``_`` optional in the fixed names) are those of
:data:`~cheapconv.extensions.DATASETS`, one file each in :mod:`cheapconv.data.sets`, whose docstring says where its
files are looked for and how they are read; some take an argument after ``:`` (``imagefolder:PATH``,
``synthetic:1x28x28:10:256``). Segmentation data (masks as labels): see :mod:`cheapconv.data.segmentation`.

Datasets of images held in memory (Fashion-MNIST, CIFAR, synthetic data) are uint8 tensors
(:class:`~cheapconv.data.TensorImageDataset`, batched augmentation: see :mod:`cheapconv.data.augment`); image
folders use torchvision's PIL transforms (RandomResizedCrop + flip for training, Resize + CenterCrop for testing).
``augment`` chooses the training augmentation's strength for both (:data:`~cheapconv.data.augment.AUGMENTS`:
``none``, ``light``, ``standard``).

torchvision is imported only when a dataset that needs it is loaded (:mod:`cheapconv.data.vision`), so that
``import cheapconv.data`` and Fashion-MNIST/synthetic data work with torch alone.

Example::

    train = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    loader = make_loader(train, 128, shuffle=True)
    print(train.info)   # DatasetInfo(name='fashion-mnist', num_classes=10, channels=3, image_size=32, ...)
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Literal

from torch.utils.data import Dataset

from ..errors import UsageError
from ..models.preprocessing import Preprocessing
from .augment import augmentation
from .folders import DEBIAN_FASHION_MNIST_DIR, data_root
from .info import LoadRequest, parse_name, source_of
from .sets.synthetic import synthetic_dataset

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "get_dataset", "synthetic_dataset"]

Split = Literal["train", "test"]


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
    source = source_of(kind)
    request = LoadRequest(split, data_root(data_dir), download, augment, in_chans, image_size, seed, preprocessing)
    if source.info(arg).task != "segmentation":
        return source.load(arg, request)
    level = augmentation(augment, split)
    if level.name not in ("none", "standard"):
        raise UsageError(f"Segmentation data ({name}) take augment 'none' or 'standard' (their joint "
                         f"image-and-mask crop and flip), not {level.name!r}.")
    dataset = source.load(arg, replace(request, augment=level.active))
    dataset.augmentation = level.name
    return dataset
