"""``cityscapes``: Cityscapes segmentation, fine annotations, the 19 evaluation classes (other labels ignored,
255); read through torchvision's ``Cityscapes`` from ``data_dir`` in its own layout (``leftImg8bit/`` and
``gtFine/``); the test split is ``val``. Images are resized and cropped to ``image_size`` (default 512) by
:class:`~cheapconv.data.segmentation.JointTransform`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ...errors import DatasetNotFoundError
from ...extensions import DATASETS
from ...models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..info import DatasetInfo, DatasetSource, LoadRequest, adapt_info
from ..segmentation import JointTransform, segmentation_files
from ..vision import import_torchvision

__all__ = ["Cityscapes"]

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip


def _id_map(tv) -> Tensor:
    """Cityscapes' label ids -> the 19 train ids (255: ignored)."""
    ids = torch.full((256,), 255, dtype=torch.int64)
    for c in tv.datasets.Cityscapes.classes:
        if 0 <= c.id < 256 and 0 <= c.train_id < 255:
            ids[c.id] = c.train_id
    return ids


class Cityscapes(DatasetSource):
    """Cityscapes from its files (see the module docstring)."""

    def info(self, arg: str) -> DatasetInfo:
        return DatasetInfo("cityscapes", 19, 3, 512, IMAGENET_MEAN, IMAGENET_STD, CLASSES, task="segmentation",
                           ignore_index=255)

    def load(self, arg: str, request: LoadRequest) -> Dataset:
        r, data_dir = request, request.data_dir
        info = adapt_info(self.info(arg), r.in_chans, r.image_size, r.preprocessing)   # image_size: the crop
        roots = [data_dir, data_dir / "cityscapes"]
        root = next((d for d in roots if (d / "leftImg8bit").is_dir() and (d / "gtFine").is_dir()), None)
        if root is None:
            raise DatasetNotFoundError(
                f"Cityscapes not found: looked for leftImg8bit/ and gtFine/ in {', '.join(map(str, roots))}. "
                "Extract leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into a folder and pass "
                "--data-dir FOLDER (data_dir=...).")
        tv = import_torchvision(info.name)
        train = (r.split == "train") if r.augment is None else bool(r.augment)
        base = tv.datasets.Cityscapes(str(root), split="train" if r.split == "train" else "val", mode="fine",
                                      target_type="semantic", transforms=JointTransform(info, train, _id_map(tv)))
        return segmentation_files(base, info, r.split, root)


DATASETS.add("cityscapes", Cityscapes(), help="Cityscapes segmentation, 19 classes")
