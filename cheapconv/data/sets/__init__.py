"""The datasets, one file each, registered by name in :data:`~cheapconv.extensions.DATASETS` (the file
``fashion_mnist.py`` is the name ``fashion-mnist``); ``DATASETS.names()`` lists them without importing any.

A file registers a :class:`~cheapconv.data.info.DatasetSource`: what :func:`~cheapconv.data.dataset_info` and
:func:`~cheapconv.data.get_dataset` need (its description, its loader, what may follow its name). Adding a
dataset is adding a file here; helpers shared by several live in ``_``-prefixed modules or in
:mod:`cheapconv.data` (folders, IDX files, augmentation, segmentation).
"""

from __future__ import annotations

__all__: list[str] = []
