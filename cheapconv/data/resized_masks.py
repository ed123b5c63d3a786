"""A segmentation dataset whose masks are resized (nearest neighbour) to the size a side output predicts.

ERFNet's encoder-first training scores the encoder's own 1×1 output conv, at 1/8 of the input's size, against
the labels downsampled to that size with nearest-neighbour sampling (the authors' code resizes the label image
with PIL's NEAREST). :class:`ResizedMasks` does that to any segmentation dataset, a whole batch at a time, and
keeps the images as they are; ``info``, the image tensors (for the run's data fingerprint) and the augmentation
strength are the wrapped dataset's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UsageError

__all__ = ["ResizedMasks", "resize_masks"]


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Masks B×H×W (int64 class indices, the ignore index included) at ``size`` by nearest-neighbour sampling
    (``torch.nn.functional.interpolate``'s ``nearest``: output pixel i reads input pixel floor(i·H/h)). Values
    are kept exactly: no class is ever blended with another."""
    if masks.dim() != 3:
        raise UsageError(f"Expected masks B×H×W to resize, got a tensor of shape {tuple(masks.shape)}.")
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(masks.dtype)


class ResizedMasks(Dataset):
    """``base`` with every mask resized to ``size`` (h, w) by :func:`resize_masks`; images unchanged."""

    def __init__(self, base: Dataset, size: tuple[int, int]) -> None:
        if len(size) != 2 or min(size) < 1:
            raise UsageError(f"Masks can be resized to a positive (height, width) only, got {tuple(size)}.")
        self.base, self.size = base, (int(size[0]), int(size[1]))
        self.info = getattr(base, "info", None)
        # what cheapconv.train.checkpoint.data_fingerprint reads: the same data, so a resume recognises it
        for attr in ("images", "augmentation"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, m = self.base[i]
        return x, resize_masks(torch.as_tensor(m)[None], self.size)[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        getitems = getattr(self.base, "__getitems__", None)
        pairs = getitems(indices) if getitems is not None else [self.base[i] for i in indices]
        masks = resize_masks(torch.stack([torch.as_tensor(m) for _, m in pairs]), self.size)
        return [(x, m) for (x, _), m in zip(pairs, masks.unbind(0), strict=True)]
