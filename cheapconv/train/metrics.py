"""Accuracy and loss bookkeeping, without a host sync per step, and :func:`evaluate`.

:class:`Meters` accumulates sums on the training device (loss terms weighted by batch size, top-1/top-5
hits, sample counts); nothing is copied to the host until :meth:`Meters.summary` is called, which a
training loop does once every ``log_every`` steps and at the end of an epoch. Under ``torchrun`` the sums
are all-reduced, so every rank reports the global figures.

Segmentation (logits B×K×H×W, masks B×H×W): instead of top-k hits, each batch adds its per-class
intersection and union pixel counts and its correct and valid pixel counts (pixels whose label is outside
0..K−1, e.g. the ignore index 255, are not counted), and the summary reports ``miou`` (the mean over the
classes that occur in the labels or the predictions of intersection/union, the standard dataset-level
mIoU: counts are summed over all images before dividing) and ``pixel_acc``, as fractions.

Example::

    print(evaluate(model, get_dataset("fashion-mnist", "test", in_chans=3, image_size=32)))
    # {'loss': 0.31, 'top1': 0.889, 'top5': 0.998, 'n': 10000}
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..counting import eval_mode
from .config import check_precision
from .dense import cross_entropy, split_output
from .distributed import batches_for_eval

__all__ = ["BatchStats", "Meters", "autocast", "batch_stats", "confusion_counts", "evaluate", "peak_memory_mb",
           "seg_scores", "topk_hits"]


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
    """Running sums of loss terms and top-1/top-5 hits; :meth:`summary` is the only host sync.

    The sums live in one float64 vector on the device, so a batch costs one addition. A training loop that
    keeps several meters (the logging window and the epoch) measures each batch once with
    :func:`batch_stats` and adds the result to each with :meth:`add`.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._names: tuple[str, ...] = ()
        self._sums: Tensor | None = None
        self._n = 0

    def update(self, terms: Mapping[str, Tensor], logits: Tensor | None = None, labels: Tensor | None = None) -> None:
        """Add one batch: ``terms`` are batch means (0-d), weighted here by the batch size."""
        self.add(batch_stats(terms, logits, labels))

    def add(self, stats: BatchStats) -> None:
        """Add one batch measured by :func:`batch_stats`."""
        names, values, n = stats
        if self._sums is None:
            self._names, self._sums = names, values.clone()
        elif names == self._names:
            self._sums += values
        else:   # other quantities than before (never in a training run): merge by name
            merged = dict(zip(self._names, self._sums.unbind(), strict=True))
            for name, value in zip(names, values.unbind(), strict=True):
                merged[name] = merged[name] + value if name in merged else value.clone()
            self._names, self._sums = tuple(merged), torch.stack(list(merged.values()))
        self._n += n

    def summary(self, *, reduce: bool = False) -> dict[str, float]:
        """Means so far (``{"ce": ..., "top1": ..., "n": ...}``, or ``miou``/``pixel_acc`` in place of the top-k
        figures for segmentation); ``reduce`` all-reduces across ranks first."""
        out = self._means(reduce)
        if _CORRECT in out:   # segmentation counts -> scores (ratios, so dividing the sums by n changes nothing)
            out.update(seg_scores(_pop_counts(out)))
        return out

    def _means(self, reduce: bool) -> dict[str, float]:
        n_t = torch.tensor([float(self._n)], dtype=torch.float64, device=self.device)
        packed = n_t if self._sums is None else torch.cat([self._sums, n_t])
        if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        values = packed.tolist()
        n = values[-1]
        out = {k: (v / n if n else float("nan")) for k, v in sorted(zip(self._names, values[:-1], strict=True))}
        out["n"] = int(n)
        return out


_CORRECT, _VALID = "px_correct", "px_valid"


def _pop_counts(out: dict[str, float]) -> dict[str, list[float]]:
    k = sum(1 for key in out if key.startswith("inter_"))
    counts = {"inter": [out.pop(f"inter_{c}") for c in range(k)], "union": [out.pop(f"union_{c}") for c in range(k)]}
    counts["correct"], counts["valid"] = [out.pop(_CORRECT)], [out.pop(_VALID)]
    return counts


def seg_scores(counts: dict[str, list[float]]) -> dict[str, float]:
    """``miou`` and ``pixel_acc`` of summed counts (``inter``/``union`` per class, ``correct``/``valid``): the mean
    over classes with a non-zero union of intersection/union, and correct/valid pixels (NaN when empty)."""
    ious = [i / u for i, u in zip(counts["inter"], counts["union"], strict=True) if u > 0]
    valid = counts["valid"][0]
    return {"miou": sum(ious) / len(ious) if ious else float("nan"),
            "pixel_acc": counts["correct"][0] / valid if valid else float("nan")}


def confusion_counts(logits: Tensor, labels: Tensor) -> Tensor:
    """The K×K confusion matrix (rows: label, columns: predicted class, float64, on the logits' device) of dense
    logits B×K×H×W against masks B×H×W; labels outside 0..K−1 (the ignore index) are not counted. No host
    sync: ignored pixels go to a spare bin instead of being masked out."""
    k = logits.shape[1]
    pred = logits.detach().argmax(dim=1)
    valid = (labels >= 0) & (labels < k)
    index = torch.where(valid, labels * k + pred, k * k).flatten()
    counts = torch.zeros(k * k + 1, dtype=torch.float64, device=logits.device)
    counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
    return counts[:-1].view(k, k)


def _seg_stats(logits: Tensor, labels: Tensor) -> tuple[tuple[str, ...], Tensor]:
    conf = confusion_counts(logits, labels)
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    k = conf.shape[0]
    names = tuple(f"inter_{c}" for c in range(k)) + tuple(f"union_{c}" for c in range(k)) + (_CORRECT, _VALID)
    return names, torch.cat([inter, union, inter.sum().view(1), conf.sum().view(1)])


#: what :func:`batch_stats` measures: the quantities' names, their batch sums (float64, on the device), the
#: batch size
BatchStats = tuple[tuple[str, ...], Tensor, int]


def batch_stats(terms: Mapping[str, Tensor], logits: Tensor | None = None, labels: Tensor | None = None,
                ks: tuple[int, ...] = (1, 5)) -> BatchStats:
    """One batch's contribution to :class:`Meters`: the loss terms (batch means, 0-d) times the batch size, and
    the top-k hits of ``logits``, packed in one vector on the device (no host sync).

    The same figures as :func:`topk_hits`, in fewer operations: the top-k indices are distinct, so a label
    is found at most once per row, and the hits within the first k columns are a cumulative sum.
    """
    n = labels.shape[0] if labels is not None else 1
    names = tuple(terms)
    if names:
        values = torch.stack([terms[k] for k in names]).detach().to(torch.float64) * n
    else:
        values = torch.zeros(0, dtype=torch.float64, device=labels.device if labels is not None else None)
    if logits is not None and labels is not None and logits.dim() > 2:   # segmentation: pixel counts
        seg_names, counts = _seg_stats(logits, labels)
        # raw pixel counts: the summary divides every sum by the number of images, which cancels in the ratios
        return names + seg_names, torch.cat([values, counts]) if names else counts, n
    if logits is not None and labels is not None:
        kmax = min(max(ks), logits.shape[1])
        hit = logits.detach().topk(kmax, dim=1).indices.eq(labels.view(-1, 1))
        within = hit.sum(dim=0).cumsum(dim=0)          # [i]: samples whose label is among the top i+1
        hits = within[[min(k, kmax) - 1 for k in ks]].to(torch.float64)
        values = torch.cat([values, hits]) if names else hits
        names += tuple(f"top{k}" for k in ks)
    return names, values, n


def _eval_size(data, shard: tuple[int, int] | None) -> int:
    """Images :func:`evaluate` will see (this rank's slice under ``shard``), or 0 when the data do not say."""
    loader = isinstance(data, DataLoader)
    if not (loader or isinstance(data, Dataset)):   # an iterable of batches: its length counts batches
        return 0
    try:
        n = len(data.dataset if loader else data)
    except TypeError:   # an iterable-style dataset
        return 0
    if shard is None or loader:   # a DataLoader is read whole (see batches_for_eval)
        return n
    rank, world = shard
    return (rank + 1) * n // world - rank * n // world


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
             shard: tuple[int, int] | None = None, ignore_index: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Top-1, top-5 and mean cross-entropy of ``model`` on a dataset (or any iterable of ``(x, y)`` batches);
    for segmentation (masks as labels), mean per-pixel cross-entropy, ``miou``, ``pixel_acc`` and the
    per-class IoU (``iou``, NaN for a class absent from labels and predictions).

    The model runs in eval mode (its own flags are restored afterwards) on ``device`` (default: where its
    parameters are). ``shard=(rank, world_size)`` evaluates a contiguous slice of the dataset and all-reduces
    the sums, so that every rank of a distributed run gets the figures of the whole set. Returns
    ``{"loss", "top1", "top5", "n"}`` (accuracies as fractions). An unknown ``precision`` is a
    :class:`~cheapconv.errors.UsageError`. A model may return a dict (``"out"``) or a tuple (prediction
    first): see :func:`cheapconv.train.losses.split_output`. ``ignore_index`` (default: the dataset's
    ``info.ignore_index``, else 255) marks unlabelled mask pixels. ``progress(done, total)`` is called after
    every batch with the images evaluated so far (``total`` 0 where the data do not say how many):
    :class:`cheapconv.progress.ProgressReport` turns it into a bar or log lines.
    """
    check_precision(precision)
    param = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    meters = Meters(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if ignore_index is None:
        ignore_index = getattr(getattr(data, "info", None), "ignore_index", None)
    ignore = 255 if ignore_index is None else ignore_index
    conf: Tensor | None = None
    total, done = _eval_size(data, shard), 0
    with eval_mode(model):
        for x, y in batches_for_eval(data, batch_size, shard=shard, num_workers=num_workers,
                                     pin_memory=dev.type == "cuda"):
            x = x.to(dev, non_blocking=True).to(memory_format=fmt)
            y = y.to(dev, non_blocking=True)
            with autocast(dev, precision):
                logits, _ = split_output(model(x))
            if logits.dim() > 2 and ignore != 255:   # the metrics skip labels outside 0..K-1 only
                y = torch.where(y == ignore, 255, y)
            meters.update({"loss": cross_entropy(logits, y, 255 if logits.dim() > 2 else ignore)}, logits, y)
            if logits.dim() > 2:
                c = confusion_counts(logits, y)
                conf = c if conf is None else conf + c
            if progress is not None:
                done += y.shape[0]
                progress(done, total)
    s = meters.summary(reduce=shard is not None)
    if conf is not None:
        if shard is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(conf)
        inter, union = conf.diagonal(), conf.sum(0) + conf.sum(1) - conf.diagonal()
        iou = [float(i / u) if u > 0 else float("nan") for i, u in zip(inter.tolist(), union.tolist(), strict=True)]
        return {"loss": s.get("loss", float("nan")), "miou": s["miou"], "pixel_acc": s["pixel_acc"], "iou": iou,
                "n": s["n"]}
    return {"loss": s.get("loss", float("nan")), "top1": s.get("top1", float("nan")),
            "top5": s.get("top5", float("nan")), "n": s["n"]}
