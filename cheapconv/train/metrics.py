"""Accuracy and loss bookkeeping, without a host sync per step, and :func:`evaluate`.

:class:`Meters` accumulates sums on the training device (loss terms weighted by batch size, top-1/top-5
hits, sample counts); nothing is copied to the host until :meth:`Meters.summary` is called, which a
training loop does once every ``log_every`` steps and at the end of an epoch. Under ``torchrun`` the sums
are all-reduced, so every rank reports the global figures.

Example::

    print(evaluate(model, get_dataset("fashion-mnist", "test", in_chans=3, image_size=32)))
    # {'loss': 0.31, 'top1': 0.889, 'top5': 0.998, 'n': 10000}
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable, Mapping
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..counting import eval_mode

__all__ = ["Meters", "autocast", "evaluate", "peak_memory_mb", "topk_hits"]


def topk_hits(logits: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, Tensor]:
    """Number of samples whose label is among the top-k logits, per k (0-d tensors on the logits' device).

    k larger than the number of classes counts every sample (top-5 of a 3-class problem is 100 %).
    """
    ks = tuple(ks)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return {k: hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks}


class Meters:
    """Running sums of loss terms and top-1/top-5 hits; :meth:`summary` is the only host sync."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._n = torch.zeros((), dtype=torch.float64, device=self.device)

    def update(self, terms: Mapping[str, Tensor], logits: Tensor | None = None, labels: Tensor | None = None) -> None:
        """Add one batch: ``terms`` are batch means (0-d), weighted here by the batch size."""
        n = labels.shape[0] if labels is not None else 1
        for name, value in terms.items():
            self._add(name, value.detach().to(torch.float64) * n)
        if logits is not None and labels is not None:
            for k, hits in topk_hits(logits.detach(), labels).items():
                self._add(f"top{k}", hits.to(torch.float64))
        self._n += n

    def _add(self, name: str, value: Tensor) -> None:
        if name in self._sums:
            self._sums[name] += value
        else:
            self._sums[name] = value.clone()

    def summary(self, *, reduce: bool = False) -> dict[str, float]:
        """Means so far (``{"ce": ..., "top1": ..., "n": ...}``); ``reduce`` all-reduces across ranks first."""
        names = sorted(self._sums)
        packed = torch.stack([self._sums[k] for k in names] + [self._n])
        if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        values = packed.tolist()
        n = values[-1]
        out = {k: (v / n if n else float("nan")) for k, v in zip(names, values[:-1], strict=True)}
        out["n"] = int(n)
        return out


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision setting (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA's allocator peak on a GPU, the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


@torch.no_grad()
def evaluate(model: nn.Module, data, *, batch_size: int = 256, device: str | torch.device | None = None,
             precision: str = "fp32", channels_last: bool = False, num_workers: int | None = None,
             shard: tuple[int, int] | None = None) -> dict[str, float]:
    """Top-1, top-5 and mean cross-entropy of ``model`` on a dataset (or any iterable of ``(x, y)`` batches).

    The model runs in eval mode (its own flags are restored afterwards) on ``device`` (default: where its
    parameters are). ``shard=(rank, world_size)`` evaluates a contiguous slice of the dataset and all-reduces
    the sums, so that every rank of a distributed run gets the figures of the whole set. Returns
    ``{"loss", "top1", "top5", "n"}`` (accuracies as fractions).
    """
    from .distributed import batches_for_eval

    param = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    meters = Meters(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with eval_mode(model):
        for x, y in batches_for_eval(data, batch_size, shard=shard, num_workers=num_workers,
                                     pin_memory=dev.type == "cuda"):
            x = x.to(dev, non_blocking=True).to(memory_format=fmt)
            y = y.to(dev, non_blocking=True)
            with autocast(dev, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            meters.update({"loss": loss}, logits, y)
    s = meters.summary(reduce=shard is not None)
    return {"loss": s.get("loss", float("nan")), "top1": s.get("top1", float("nan")),
            "top5": s.get("top5", float("nan")), "n": s["n"]}
