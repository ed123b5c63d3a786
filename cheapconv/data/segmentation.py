"""Segmentation data: ``fashion-mnist-seg`` scenes built from real Fashion-MNIST items, Pascal VOC, Cityscapes.

A segmentation dataset yields ``(float32 C×S×S image, int64 S×S mask)``; mask values are class indices, and
``info.ignore_index`` (255 for VOC and Cityscapes) marks pixels that count in no loss and no metric.
``info.task == "segmentation"`` tells the training loop and the evaluation what they are looking at.

``fashion-mnist-seg[:SIZE[:ITEMS]]`` (default ``fashion-mnist-seg:64:4``): no package ships a segmentation
dataset that installs offline, so scenes are built from the real Fashion-MNIST images. Each scene is a black
SIZE×SIZE canvas with 1..ITEMS items placed at random positions (later items occlude earlier ones); an item is
a Fashion-MNIST image resized to a random side between ``item_sizes(SIZE)``, and its foreground mask is its
pixels at or above :data:`FOREGROUND` (out of 255). Only foreground pixels are pasted, so the image and the
mask agree exactly: a pixel is at least ``FOREGROUND`` where the mask holds an item (class ``1 + label``)
and 0 where it holds the background (class 0). 11 classes. Train scenes use the training items, test scenes
the test items; everything is deterministic given ``seed``. Training augmentation is the classifier recipe
applied jointly to the image and its mask: zero padding (background in the mask) by SIZE/8, a random
SIZE×SIZE crop, and a horizontal flip with probability 1/2.

``voc`` (Pascal VOC 2012, 21 classes) and ``cityscapes`` (fine annotations, the 19 evaluation classes) are
read through torchvision from ``--data-dir`` in their own on-disk layouts (their files in
:mod:`cheapconv.data.sets`); the test split is ``val``. :class:`JointTransform`: images are resized (shorter
side) and cropped to ``image_size`` (default 512), randomly with a flip for training, centred for testing; masks
follow with nearest-neighbour resizing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DatasetNotFoundError, UsageError
from .augment import crop_each, normalise, normalising_affine, random_crop_corners
from .info import DatasetInfo

__all__ = ["FOREGROUND", "JointTransform", "SegmentationTensorDataset", "fashion_mnist_scenes", "item_sizes",
           "segmentation_files"]

#: pixel value (of 255) from which a Fashion-MNIST pixel belongs to the item; below it is background
FOREGROUND = 32
_TRAIN_SCENES, _TEST_SCENES = 20000, 2000


def item_sizes(canvas: int) -> tuple[int, int]:
    """The range of item sides on a ``canvas``: at most 28 (Fashion-MNIST's own) and 5/8 of the canvas."""
    hi = max(4, min(28, canvas * 5 // 8))
    return max(4, hi * 2 // 3), hi


def fashion_mnist_scenes(images: Tensor, labels: Tensor, *, num_scenes: int, canvas: int = 64, max_items: int = 4,
                         seed: int = 0) -> tuple[Tensor, Tensor]:
    """Scenes of Fashion-MNIST items (see the module docstring): uint8 images N×1×S×S and uint8 masks N×S×S.

    ``images`` are uint8 N×1×28×28 items, ``labels`` their classes (0..9, mask class ``1 + label``). Same
    arguments, same tensors.
    """
    if canvas < 8 or max_items < 1 or num_scenes < 1:
        raise UsageError(f"fashion-mnist-seg needs a canvas of at least 8 pixels, at least one item and one scene; "
                         f"got canvas {canvas}, {max_items} items, {num_scenes} scenes.")
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_items + 1, (num_scenes,), generator=g)
    total = int(counts.sum())
    order = torch.randperm(images.shape[0], generator=g)
    pick = order[torch.arange(total) % images.shape[0]]       # each item once before any repeats
    lo, hi = item_sizes(canvas)
    sides = torch.randint(lo, hi + 1, (total,), generator=g)
    corners = torch.rand(total, 2, generator=g)                # × (canvas − side): anywhere fully inside
    tops_lefts = (corners * (canvas - sides + 1)[:, None]).floor().long()
    scene = torch.repeat_interleave(torch.arange(num_scenes), counts)
    slot = torch.arange(total) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)   # item's place in scene
    classes = (1 + labels[pick]).to(torch.uint8)
    out = torch.zeros(num_scenes, canvas, canvas, dtype=torch.uint8)
    masks = torch.zeros(num_scenes, canvas, canvas, dtype=torch.uint8)
    resized, position = {}, torch.zeros(total, dtype=torch.long)   # side -> items of that side; k's row in it
    for side in sides.unique().tolist():
        of_side = sides == side
        src = images[pick[of_side]].float()
        small = F.interpolate(src, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        resized[side] = small[:, 0].round().clamp(0, 255).to(torch.uint8)
        position[of_side] = torch.arange(int(of_side.sum()))
    # pasted one slot at a time (later items occlude earlier ones), all scenes' items of one size at once: a
    # scene holds one item per slot, so the writes of one group never overlap
    for s in range(max_items):
        for side, items in resized.items():
            ks = ((sides == side) & (slot == s)).nonzero().flatten()
            if ks.numel() == 0:
                continue
            item, span = items[position[ks]], torch.arange(side)                        # m×side×side
            where = (scene[ks][:, None, None], (tops_lefts[ks, 0, None] + span)[:, :, None],
                     (tops_lefts[ks, 1, None] + span)[:, None, :])
            fg = item >= FOREGROUND
            out[where] = torch.where(fg, item, out[where])
            masks[where] = torch.where(fg, classes[ks][:, None, None], masks[where])
    return out[:, None], masks


class SegmentationTensorDataset(Dataset):
    """uint8 images N×C×S×S and masks N×S×S in memory, augmented jointly and normalised a batch at a time.

    Training augmentation (``augment=True``): zero-pad image and mask by ``crop_padding`` (the mask with
    ``pad_value``: the background class, or the ignore index), a random S×S crop, a horizontal flip with
    probability 1/2; the same geometry for an image and its mask. Then ``x/255``, per-channel
    ``(x − mean)/std``, and the channel repeated ``repeat`` times (grayscale -> RGB). ``__getitems__``
    transforms a whole batch in one go; randomness comes from torch's global generator.
    """

    def __init__(self, images: Tensor, masks: Tensor, info: DatasetInfo, *, augment: bool, crop_padding: int = 4,
                 pad_value: int = 0, repeat: int = 1) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise UsageError(f"Expected uint8 images N×C×H×W and masks N×H×W, got {images.dtype} "
                             f"{tuple(images.shape)} and {tuple(masks.shape)}.")
        self.images, self.masks, self.info = images.contiguous(), masks.contiguous(), info
        self.augment, self.crop_padding, self.pad_value, self.repeat = augment, crop_padding, pad_value, repeat
        self._scale, self._shift = normalising_affine(info, images.shape[1])

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names, where known."""
        return self.info.classes

    def transform_pair(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Images and masks ``index`` (1-D int64), jointly augmented (if enabled); images normalised."""
        x, m = self.images[index], self.masks[index].to(torch.int64)
        if self.augment:
            b, _, h, w = x.shape
            p = self.crop_padding
            if p > 0:   # the same window for an image and its mask
                top, left = random_crop_corners(b, p)
                x = crop_each(F.pad(x, (p, p, p, p)), top, left, h, w)
                m = crop_each(F.pad(m, (p, p, p, p), value=self.pad_value), top, left, h, w)
            flip = torch.rand(b) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            m = torch.where(flip[:, None, None], m.flip(-1), m)
        return normalise(x, self._scale, self._shift, self.repeat), m

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, m = self.transform_pair(torch.tensor([i]))
        return x[0], m[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        x, m = self.transform_pair(torch.as_tensor(indices, dtype=torch.int64))
        return list(zip(x.unbind(0), m.unbind(0), strict=True))


def fashion_mnist_seg(images: Tensor, labels: Tensor, info: DatasetInfo, *, split: str, augment: bool | None,
                      repeat: int, seed: int) -> SegmentationTensorDataset:
    """The ``split`` of ``fashion-mnist-seg`` from that split's Fashion-MNIST ``images`` (N×1×28×28) and labels."""
    canvas, items = (int(v) for v in info.name.split(":")[1:3])   # dataset_info spells them out
    n = _TRAIN_SCENES if split == "train" else _TEST_SCENES
    # distinct, fixed streams per split (as for synthetic data)
    scenes, masks = fashion_mnist_scenes(images, labels, num_scenes=n, canvas=canvas, max_items=items,
                                         seed=seed * 2 + (1 if split == "train" else 2))
    do_augment = (split == "train") if augment is None else augment
    return SegmentationTensorDataset(scenes, masks, info, augment=do_augment, crop_padding=max(1, canvas // 8),
                                     repeat=repeat)


# ------------------------------------------------------------------------------ VOC and Cityscapes


class JointTransform:
    """PIL image + PIL mask -> normalised tensor, int64 mask (ignore index where the mask is unlabelled); the
    mask's values go through ``id_map`` where one is given (Cityscapes' label ids -> train ids)."""

    def __init__(self, info: DatasetInfo, train: bool, id_map: Tensor | None) -> None:
        self.size, self.train, self.id_map, self.info = info.image_size, train, id_map, info

    def __call__(self, image, mask) -> tuple[Tensor, Tensor]:
        import torchvision.transforms.v2.functional as TF  # optional (vision extra): VOC and Cityscapes only

        s = self.size
        img = TF.pil_to_tensor(image.convert("RGB"))
        m = TF.pil_to_tensor(mask).to(torch.int64)
        if self.train:   # random scale 0.5..2 of the shorter side = s, random crop, flip
            side = int(s * float(torch.empty(1).uniform_(0.5, 2.0)))
        else:
            side = s
        img = TF.resize(img, side, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        m = TF.resize(m, side, interpolation=TF.InterpolationMode.NEAREST)
        if self.id_map is not None:
            m = self.id_map[m.clamp(0, self.id_map.numel() - 1)]
        ignore = self.info.ignore_index if self.info.ignore_index is not None else 0
        h, w = img.shape[-2:]
        if h < s or w < s:   # pad to at least s×s: black image, ignored mask
            pad = [0, 0, max(0, s - w), max(0, s - h)]
            img, m = TF.pad(img, pad, fill=0), TF.pad(m, pad, fill=ignore)
            h, w = img.shape[-2:]
        if self.train:
            top, left = int(torch.randint(0, h - s + 1, ())), int(torch.randint(0, w - s + 1, ()))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        img, m = img[:, top:top + s, left:left + s], m[:, top:top + s, left:left + s]
        if self.train and bool(torch.rand(()) < 0.5):
            img, m = img.flip(-1), m.flip(-1)
        mean = torch.tensor(self.info.mean).view(-1, 1, 1)
        std = torch.tensor(self.info.std).view(-1, 1, 1)
        return (img.float() / 255.0 - mean) / std, m[0]


class _Files(Dataset):
    def __init__(self, base: Dataset, info: DatasetInfo) -> None:
        self.base, self.info = base, info
        self.images = list(getattr(base, "images", []))   # the file list: part of the data fingerprint

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.base[i]


def segmentation_files(base: Dataset, info: DatasetInfo, split: str, root: Path) -> Dataset:
    """A torchvision segmentation dataset (its ``transforms`` a :class:`JointTransform`) with ``.info``; a
    :class:`~cheapconv.errors.DatasetNotFoundError` when it found no image for ``split`` under ``root``."""
    if len(base) == 0:  # type: ignore[arg-type]
        raise DatasetNotFoundError(f"{info.name}: no images for the {split} split under {root}.")
    return _Files(base, info)
