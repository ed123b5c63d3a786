"""``imagefolder:PATH``: an ImageNet-style tree, ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` (``test/`` or
``validation/`` also accepted for the test split); a path with none of these sub-folders is taken as one class
tree and serves whichever split is asked for (useful to evaluate on a folder).

Images of any size are read with torchvision's PIL transforms: RandomResizedCrop + flip for training (the
strength: :data:`~cheapconv.data.augment.AUGMENTS`), Resize to S/0.875 + CenterCrop S for testing (a model's own
ratio and interpolation where its preprocessing says so); S defaults to 224.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from torch.utils.data import Dataset

from ...errors import DatasetNotFoundError
from ...extensions import DATASETS
from ...models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..augment import augmentation
from ..folders import imagefolder_root
from ..imagefiles import load_image, scan_images
from ..info import CROP_PCT, DatasetInfo, DatasetSource, LoadRequest, adapt_info
from ..vision import import_torchvision

__all__ = ["ImageFolder", "ScreenedImageFolder"]

#: the extensions read as images (torchvision's IMG_EXTENSIONS); other files are ignored, as torchvision does
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ScreenedImageFolder(Dataset):
    """torchvision's ImageFolder (``classes``, ``class_to_idx``, ``samples``, ``targets``; items ``(image,
    class)``), built from a screened walk (:func:`~cheapconv.data.imagefiles.scan_images`): files that are not
    images, symlink loops and images over the pixel cap are skipped with one warning, and a folder left without
    an image for a class is a :class:`~cheapconv.errors.DatasetNotFoundError`."""

    def __init__(self, root: str, transform: Callable[[Any], Any] | None = None) -> None:
        self.root, self.transform = root, transform
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise DatasetNotFoundError(f"No class folders under {root}: expected <class>/*.jpg sub-folders.")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        scan = scan_images(root, self.class_to_idx, IMAGE_EXTENSIONS)
        note = scan.summary(root)
        if note:
            warnings.warn(note, stacklevel=2)
        empty = sorted(set(self.classes) - {self.classes[i] for _, i in scan.samples})
        if empty:
            raise DatasetNotFoundError(f"No usable images under {root} for the classes {', '.join(empty)} "
                                       f"(extensions read: {', '.join(IMAGE_EXTENSIONS)}).")
        self.samples = scan.samples
        self.targets = [i for _, i in scan.samples]
        self.skipped = dict(scan.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), target


class ImageFolder(DatasetSource):
    """A folder of images, one sub-folder per class (see the module docstring)."""

    syntax = ":<path>"
    argument = "a path (train/ and val/ inside, or one folder of class sub-folders)"

    def info(self, arg: str) -> DatasetInfo:
        """Its classes, listed from the folder (no image is read)."""
        root = imagefolder_root(arg, "train", must_exist=False) or imagefolder_root(arg, "test", must_exist=False)
        if root is None:
            imagefolder_root(arg, "train")  # raises DatasetNotFoundError saying where it looked
        assert root is not None
        classes = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))
        return DatasetInfo(f"imagefolder:{arg}", len(classes), 3, 224, IMAGENET_MEAN, IMAGENET_STD, classes,
                           resize=round(224 / CROP_PCT))

    def load(self, arg: str, request: LoadRequest) -> Dataset:
        r = request
        root = imagefolder_root(arg, r.split)
        assert root is not None
        tv = import_torchvision("imagefolder datasets")
        t = tv.transforms
        info = adapt_info(self.info(arg), r.in_chans, r.image_size, r.preprocessing)
        s = info.image_size
        normalize = t.Normalize(info.mean, info.std)
        mode = t.InterpolationMode(info.interpolation)   # the model's (e.g. timm's bicubic), else bilinear
        level = augmentation(r.augment, r.split)   # the strengths are defined once, in data/augment.py
        if level.active:
            crop = [t.RandomResizedCrop(s, scale=(level.min_scale, 1.0), interpolation=mode)] \
                if level.min_scale is not None else [t.Resize(info.resize, interpolation=mode), t.CenterCrop(s)]
            tf = t.Compose([*crop, *([t.RandomHorizontalFlip()] if level.flip else []), t.ToTensor(), normalize])
        else:
            # The ImageNet convention: resize to S/0.875 (256 for 224; a model's own ratio), then centre-crop S.
            tf = t.Compose([t.Resize(info.resize, interpolation=mode), t.CenterCrop(s), t.ToTensor(), normalize])
        try:
            ds = ScreenedImageFolder(str(root), transform=tf)
        except DatasetNotFoundError as exc:  # no class folders, or class folders without images
            raise DatasetNotFoundError(f"imagefolder:{arg}: {exc}") from None
        ds.augmentation = level.name
        ds.info = replace(info, num_classes=len(ds.classes), classes=tuple(ds.classes))
        return ds


DATASETS.add("imagefolder", ImageFolder(), help="a folder of images, one sub-folder per class")
