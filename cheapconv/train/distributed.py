"""Process groups and how the data is split between processes (and into batches) for one training run.

Launch with ``torchrun --nproc_per_node=G -m cheapconv_cli.main distill ...`` (or ``torchrun ... script.py``
calling :func:`cheapconv.distill`): :func:`setup` reads the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
variables torchrun sets, joins the process group (NCCL on GPUs, gloo on CPU) and picks ``cuda:LOCAL_RANK``.
A group the caller initialised itself is used as it is. Without those variables everything runs in one
process and nothing here costs anything.

Batches: every step consumes one *global* batch of ``batch_size`` consecutive indices of the epoch's
permutation (a fixed function of ``seed + epoch``); rank r of W takes the r-th contiguous slice of
``batch_size / W`` of them. So the union of the ranks' batches is exactly the batch a single process would
see, and a resumed run can skip the batches already done. In-memory datasets
(:class:`cheapconv.data.TensorImageDataset`) are indexed and augmented batch-wise in the main process (its
batched augmentation costs 1-2 ms per batch; on a GPU it overlaps the asynchronous step); others go through
a DataLoader with workers, pinned memory on CUDA and persistent workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..data import TensorImageDataset, cap_workers, default_workers
from ..errors import UsageError

__all__ = ["DistContext", "EpochBatchSampler", "batches_for_eval", "resolve_device", "setup", "teardown",
           "train_batches"]


@dataclass
class DistContext:
    """Who this process is: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when there are several processes, else unchanged."""
        if not self.distributed:
            return model

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (so all ranks stop at the same step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: object) -> list:
        """Every rank's ``obj`` (picklable, small), in rank order; ``[obj]`` in one process."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank (nothing in one process)."""
        if self.distributed:
            torch.distributed.barrier()


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The device a setting names: ``"auto"`` (``cuda:LOCAL_RANK`` if CUDA is available, else CPU), ``"cpu"``,
    ``"cuda"`` (``cuda:local_rank``) or ``"cuda:N"``; an unknown name or an absent GPU is a
    :class:`~cheapconv.errors.UsageError`."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"Device {device!r} was asked for, but no CUDA GPU is available here; use "
                             "--device cpu (or auto).")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (if any) and choose this process's device."""
    dist = torch.distributed
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif env_world > 1:
        if not dist.is_available():
            raise UsageError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
        dev = resolve_device(device, local_rank)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        rank, world, created = dist.get_rank(), dist.get_world_size(), True
    else:
        rank, world = 0, 1
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistContext(rank, world, local_rank, dev, created)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` created it."""
    if ctx.created_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------ batches


class EpochBatchSampler:
    """This rank's index batches of one epoch (see the module docstring); ``set_epoch`` before iterating."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        if batch_size % world_size:
            raise UsageError(f"The global batch size {batch_size} must be divisible by the number of processes "
                             f"({world_size}); pick a multiple of {world_size}.")
        if n < batch_size:
            raise UsageError(f"The training set has {n} samples, fewer than one batch of {batch_size}; use a "
                             "smaller batch size.")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.shuffle = shuffle
        self.local = batch_size // world_size
        self.epoch, self.start = 0, 0

    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped: it would split unevenly)."""
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` batches (when resuming)."""
        self.epoch, self.start = epoch, start

    def order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        for index in self.index_batches():
            yield index.tolist()

    def index_batches(self) -> Iterator[Tensor]:
        """The same batches as iterating, as int64 tensors (slices of the epoch's permutation)."""
        order = self.order()
        for i in range(self.start, self.steps_per_epoch()):
            lo = i * self.batch_size + self.rank * self.local
            yield order[lo: lo + self.local]

    def __len__(self) -> int:
        return self.steps_per_epoch() - self.start


def train_batches(dataset: Dataset, sampler: EpochBatchSampler, loader: DataLoader | None
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of the sampler's current epoch: from ``loader`` if given, else indexed in memory."""
    if loader is not None:
        yield from loader
        return
    for index in sampler.index_batches():   # no round trip through a Python list
        yield dataset.transform_batch(index), dataset.labels[index]  # type: ignore[attr-defined]


def make_train_loader(dataset: Dataset, sampler: EpochBatchSampler, num_workers: int,
                      device: torch.device) -> DataLoader | None:
    """The DataLoader for datasets that need one (None: batch in memory, see :func:`train_batches`)."""
    if num_workers == 0 and isinstance(dataset, TensorImageDataset):
        return None
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


def batches_for_eval(data, batch_size: int, *, shard: tuple[int, int] | None = None,
                     num_workers: int | None = None, pin_memory: bool = False
                     ) -> Iterator[tuple[Tensor, Tensor]]:
    """Sequential batches of a dataset (this rank's contiguous slice under ``shard``), or ``data`` itself
    when it already yields batches (a DataLoader)."""
    if isinstance(data, DataLoader) or not isinstance(data, Dataset):
        yield from data
        return
    n = len(data)  # type: ignore[arg-type]
    rank, world = shard or (0, 1)
    lo, hi = rank * n // world, (rank + 1) * n // world
    if isinstance(data, TensorImageDataset) and not num_workers:
        for start in range(lo, hi, batch_size):
            index = torch.arange(start, min(start + batch_size, hi))
            yield data.transform_batch(index), data.labels[index]
        return
    workers = cap_workers(num_workers) if num_workers is not None else default_workers(data)
    batches = [list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size)]
    yield from DataLoader(data, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory)
