"""Augmentation strengths, and in-memory image datasets: uint8 tensors augmented and normalised a whole batch at a
time.

Fashion-MNIST, CIFAR and synthetic data live in memory as :class:`TensorImageDataset`; training augmentation
is random crop with 4-pixel zero padding + horizontal flip, the CIFAR recipe of the spec (section 6), then
per-channel normalisation. :func:`in_memory_dataset` applies the ``in_chans``/``image_size`` adapters of
:func:`~cheapconv.data.get_dataset` (channel repetition, centred zero padding) to native images.

How strong the training augmentation is can be chosen (``get_dataset(..., augment="light")``, ``--augment``);
the levels are defined once, in :data:`AUGMENTS`, for both kinds of data:

- ``none``: no augmentation; image folders are resized to S/0.875 and centre-cropped to S, as for testing.
- ``light``: in memory, a random crop after 2-px zero padding and a flip; image folders,
  RandomResizedCrop(S, scale 0.5-1) and a flip.
- ``standard``: in memory, a random crop after 4-px zero padding and a flip (the CIFAR recipe); image folders,
  RandomResizedCrop(S, scale 0.08-1) and a flip (ImageNet's).

``standard`` is the default for training splits (the papers' recipes, for training from scratch); it is
strong for fine-tuning a pretrained network on small images, where ``light`` keeps most of each image.
Segmentation data take ``none`` or ``standard`` (their joint image-and-mask recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UsageError
from ..models.preprocessing import Preprocessing
from .info import DatasetInfo, DatasetSource, LoadRequest, adapt_info

__all__ = ["AUGMENTS", "Augmentation", "InMemorySource", "TensorImageDataset", "augmentation"]


@dataclass(frozen=True)
class Augmentation:
    """One training-augmentation strength (see the module docstring): ``flip`` (horizontal, p = 1/2),
    ``crop_padding`` (in-memory data: a random crop after zero padding by this many pixels) and ``min_scale``
    (image folders: RandomResizedCrop's smallest area fraction; None: no random crop)."""

    name: str
    flip: bool
    crop_padding: int
    min_scale: float | None

    @property
    def active(self) -> bool:
        """Whether it changes anything (``none`` does not)."""
        return self.flip or self.crop_padding > 0 or self.min_scale is not None


#: the strengths by name, weakest first
AUGMENTS: dict[str, Augmentation] = {a.name: a for a in (
    Augmentation("none", flip=False, crop_padding=0, min_scale=None),
    Augmentation("light", flip=True, crop_padding=2, min_scale=0.5),
    Augmentation("standard", flip=True, crop_padding=4, min_scale=0.08),
)}


def augmentation(augment: bool | str | None, split: str) -> Augmentation:
    """The strength ``get_dataset``'s ``augment`` asks for: a level name, True (``standard``), False (``none``),
    or None (``standard`` for ``split="train"``, ``none`` otherwise). An unknown name is a
    :class:`~cheapconv.errors.UsageError` listing the levels."""
    if augment is None:
        augment = split == "train"
    if isinstance(augment, bool):
        return AUGMENTS["standard" if augment else "none"]
    found = AUGMENTS.get(str(augment).strip().lower())
    if found is None:
        raise UsageError(f"Unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTS)} (--augment).")
    return found


def normalising_affine(info: DatasetInfo, channels: int) -> tuple[Tensor, Tensor]:
    """``(scale, shift)``, each 1×C×1×1, with ``x·scale + shift == (x/255 − mean)/std`` per channel:
    normalisation of uint8 pixels folded into one multiply-add. C is ``channels`` (the stored images'), or all of
    ``info.channels`` where stats differ between the channels a grey image is repeated to (a model's ImageNet
    mean/std on Fashion-MNIST): :func:`normalise` then repeats the channels first."""
    repeat = info.channels // channels
    if repeat > 1 and (info.mean != info.mean[:channels] * repeat or info.std != info.std[:channels] * repeat):
        channels = info.channels
    mean = torch.tensor(info.mean[:channels], dtype=torch.float32).view(1, channels, 1, 1)
    std = torch.tensor(info.std[:channels], dtype=torch.float32).view(1, channels, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def random_crop_corners(batch: int, padding: int) -> tuple[Tensor, Tensor]:
    """Top and left corners (B×1 each) of one random crop per sample of a batch zero-padded by ``padding``."""
    top = torch.randint(0, 2 * padding + 1, (batch, 1))
    left = torch.randint(0, 2 * padding + 1, (batch, 1))
    return top, left


def crop_each(padded: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """Sample ``i``'s ``height``×``width`` window at ``(top[i], left[i])`` of a padded batch: B×C×H'×W' images
    or B×H'×W' masks. One gather for the whole batch, no per-sample loop."""
    rows, cols = top + torch.arange(height), left + torch.arange(width)           # B×H, B×W
    batch = torch.arange(padded.shape[0])
    if padded.dim() == 3:
        return padded[batch[:, None, None], rows[:, :, None], cols[:, None, :]]
    chan = torch.arange(padded.shape[1])
    return padded[batch[:, None, None, None], chan[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]


def normalise(x: Tensor, scale: Tensor, shift: Tensor, repeat: int) -> Tensor:
    """uint8 B×C×H×W -> float32, normalised, the channels repeated ``repeat`` times (grayscale -> RGB); before
    normalising where ``scale`` has one entry per repeated channel (see :func:`normalising_affine`)."""
    if repeat > 1 and scale.shape[1] != x.shape[1]:
        x, repeat = x.repeat(1, repeat, 1, 1), 1
    out = x.to(torch.float32) * scale + shift
    return out.repeat(1, repeat, 1, 1) if repeat > 1 else out


class TensorImageDataset(Dataset):
    """uint8 images kept in memory (N×C×S×S), augmented and normalised with batched tensor ops.

    Training augmentation (``augment=True``): zero-pad by ``crop_padding`` pixels, take a random S×S crop,
    flip horizontally with probability 1/2; the padding is black in pixel space (0 before normalisation),
    exactly like torchvision's ``RandomCrop(S, padding=4)`` on the raw image. Then ``x/255``, per-channel
    ``(x − mean)/std``, and the channel is repeated ``repeat`` times (grayscale -> RGB adapter).

    ``__getitems__`` transforms a whole batch in one go (the DataLoader calls it when present), which is much
    cheaper than per-sample work; ``__getitem__`` goes through the same code with a batch of one, so both
    paths apply the same transform (without augmentation, bit for bit the same tensors). Randomness comes
    from torch's global generator (seeded per worker by the DataLoader; seed it with ``torch.manual_seed``
    when loading in the main process).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        info: DatasetInfo,
        *,
        augment: bool,
        crop_padding: int = 4,
        flip: bool = True,
        repeat: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
            raise UsageError(f"Expected uint8 images N×C×S×S, got {images.dtype} {tuple(images.shape)}.")
        if labels.shape != (images.shape[0],):
            raise UsageError(f"Expected {images.shape[0]} labels, got shape {tuple(labels.shape)}.")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.info = info
        self.augment, self.crop_padding, self.flip, self.repeat = augment, crop_padding, flip, repeat
        self._scale, self._shift = normalising_affine(info, images.shape[1])
        # the strength's name, where it is one of AUGMENTS (what training records); "custom" otherwise
        level = next((a.name for a in AUGMENTS.values() if (a.crop_padding, a.flip) == (crop_padding, flip)),
                     "custom") if augment else "none"
        self.augmentation = level

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names, where known."""
        return self.info.classes

    def transform_batch(self, index: Tensor) -> Tensor:
        """Images ``index`` (1-D int64), augmented (if enabled) and normalised: B×C'×S×S float32."""
        x = self.images[index]
        if self.augment:
            b, s, p = x.shape[0], x.shape[-1], self.crop_padding
            if p > 0:
                top, left = random_crop_corners(b, p)
                x = crop_each(F.pad(x, (p, p, p, p)), top, left, s, s)
            if self.flip:
                x = torch.where((torch.rand(b) < 0.5)[:, None, None, None], x.flip(-1), x)
        return normalise(x, self._scale, self._shift, self.repeat)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform_batch(torch.tensor([i]))[0], int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return list(zip(self.transform_batch(index).unbind(0), self.labels[index].tolist(), strict=True))


def in_memory_info(info: DatasetInfo, in_chans: int | None, image_size: int | None,
                   preprocessing: Preprocessing | None = None) -> DatasetInfo:
    """Adapted info for an in-memory dataset; checked before any file is read."""
    if image_size is not None and image_size < info.image_size:
        raise UsageError(
            f"{info.name} images are {info.image_size}×{info.image_size}; image_size={image_size} would crop "
            "them. In-memory datasets can only be enlarged (by zero padding)."
        )
    return adapt_info(info, in_chans, image_size, preprocessing)


def in_memory_dataset(
    images: Tensor, labels: Tensor, info: DatasetInfo, split: str, augment: bool | str | None,
    in_chans: int | None, image_size: int | None, preprocessing: Preprocessing | None = None,
) -> TensorImageDataset:  # fmt: skip
    """Wrap native uint8 images with the adapters: zero padding up to ``image_size``, channel repetition.

    ``augment``: a level of :data:`AUGMENTS`, True/False, or None (the training augmentation for
    ``split="train"`` and none otherwise): see :func:`augmentation`.
    """
    adapted = in_memory_info(info, in_chans, image_size, preprocessing)
    native, size = images.shape[-1], adapted.image_size
    if size != native:
        # Centred zero padding (black border) keeps every pixel at its native scale: 28 -> 32 adds 2 px
        # per side, which is how Fashion-MNIST fits networks built for 32×32 inputs, no interpolation.
        lo = (size - native) // 2
        images = F.pad(images, (lo, size - native - lo, lo, size - native - lo))
    repeat = adapted.channels // info.channels
    level = augmentation(augment, split)
    return TensorImageDataset(images, labels, adapted, augment=level.active, crop_padding=level.crop_padding,
                              flip=level.flip, repeat=repeat)


class InMemorySource(DatasetSource):
    """A dataset of uint8 images held in memory (:class:`TensorImageDataset`): its file defines :meth:`info`
    and :meth:`read` (the split's images N×C×H×W, labels, and class names where the files have them, else
    None); loading checks the adapters before reading anything (which may download), then applies them."""

    in_memory = True

    def read(self, arg: str, request: LoadRequest) -> tuple[Tensor, Tensor, tuple[str, ...] | None]:
        raise NotImplementedError

    def load(self, arg: str, request: LoadRequest) -> TensorImageDataset:
        r = request
        info = self.info(arg)
        in_memory_info(info, r.in_chans, r.image_size, r.preprocessing)   # before reading (downloading) anything
        images, labels, classes = self.read(arg, r)
        if classes is not None:
            info = replace(info, classes=classes)
        return in_memory_dataset(images, labels, info, r.split, r.augment, r.in_chans, r.image_size, r.preprocessing)
