"""Loaders, and the one rule for how many DataLoader worker processes a dataset gets.

:func:`default_workers` is used by :func:`make_loader` here and by the training loop and evaluation in
:mod:`cheapconv.train.distributed`, so a dataset is loaded the same way everywhere.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ..errors import UsageError
from .augment import TensorImageDataset
from .segmentation import SegmentationTensorDataset

__all__ = ["cap_workers", "default_workers", "make_loader", "usable_cpus"]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform says, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cap_workers(num_workers: int | None) -> int | None:
    """``num_workers`` (None passes through), at most :func:`usable_cpus`, with a warning saying so when capped:
    a worker is a whole process with a copy of the dataset object, and more of them than cores only add memory
    (``--workers 1000`` forked a thousand). A negative count is a :class:`~cheapconv.errors.UsageError`."""
    if num_workers is None:
        return None
    if num_workers < 0:
        raise UsageError(f"The number of DataLoader workers must be 0 or more, got {num_workers}.")
    cpus = usable_cpus()
    if num_workers > cpus:
        warnings.warn(f"{num_workers} DataLoader workers asked for, but this process may use {cpus} CPU cores: "
                      f"using {cpus}.", stacklevel=2)
        return cpus
    return num_workers


def default_workers(dataset: Dataset) -> int:
    """DataLoader worker processes for ``dataset`` when nobody says otherwise.

    - :class:`TensorImageDataset` and :class:`SegmentationTensorDataset` (in memory): 0, with or without a
      GPU. Batched augmentation costs 1-2 ms per batch of 128 3×32×32 images (measured on the project's
      2-core CPU), negligible next to a CPU training step, which already uses every core: worker processes
      would only compete with it and add inter-process copies of every batch. On a GPU the step is
      asynchronous, so preparing the next batch in the main process overlaps it anyway.
    - Other datasets (PIL decoding, ImageFolder): ``min(8, usable CPUs)``, since decoding one image costs
      milliseconds and workers are what keeps the model fed.
    """
    if isinstance(dataset, (TensorImageDataset, SegmentationTensorDataset)):
        return 0
    return min(8, usable_cpus())


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

    - Workers (``num_workers=None``): :func:`default_workers` (0 for in-memory datasets, whose batched
      augmentation runs in the main process through ``__getitems__``; ``min(8, usable CPUs)`` otherwise).
    - ``pin_memory`` only when CUDA is available (pinning is wasted work for CPU training);
      ``persistent_workers`` whenever there are workers, so they are not re-forked every epoch.
    - ``distributed=True`` uses a ``DistributedSampler`` (torch.distributed must be initialised; the training
      loop must call ``loader.sampler.set_epoch(epoch)`` each epoch so the shuffles differ).
    - ``seed`` fixes the shuffle order and the per-worker augmentation seeds.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {batch_size}.")
    cuda = torch.cuda.is_available()
    num_workers = default_workers(dataset) if num_workers is None else cap_workers(num_workers)
    sampler = None
    if distributed:
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
