"""``voc``: Pascal VOC 2012 segmentation, 21 classes (background included), unlabelled pixels 255; read through
torchvision's ``VOCSegmentation`` from ``data_dir`` in its own layout (``VOCdevkit/VOC2012/...``); the test split
is ``val``. Images are resized and cropped to ``image_size`` (default 512) by
:class:`~cheapconv.data.segmentation.JointTransform`."""

from __future__ import annotations

from torch.utils.data import Dataset

from ...errors import DatasetNotFoundError
from ...extensions import DATASETS
from ...models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..info import DatasetInfo, DatasetSource, LoadRequest, adapt_info
from ..segmentation import JointTransform, segmentation_files
from ..vision import import_torchvision

__all__ = ["VOC"]

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


class VOC(DatasetSource):
    """Pascal VOC 2012 from its files (see the module docstring)."""

    def info(self, arg: str) -> DatasetInfo:
        return DatasetInfo("voc", 21, 3, 512, IMAGENET_MEAN, IMAGENET_STD, CLASSES, task="segmentation",
                           ignore_index=255)

    def load(self, arg: str, request: LoadRequest) -> Dataset:
        r, data_dir = request, request.data_dir
        info = adapt_info(self.info(arg), r.in_chans, r.image_size, r.preprocessing)   # image_size: the crop
        roots = [data_dir, data_dir.parent] if data_dir.name == "VOCdevkit" else [data_dir, data_dir / "voc"]
        root = next((d for d in roots if (d / "VOCdevkit" / "VOC2012").is_dir()), None)
        if root is None:
            raise DatasetNotFoundError(
                f"Pascal VOC 2012 not found: looked for VOCdevkit/VOC2012 in {', '.join(map(str, roots))}. "
                "Extract VOCtrainval_11-May-2012.tar into a folder and pass --data-dir FOLDER (data_dir=...).")
        tv = import_torchvision(info.name)
        train = (r.split == "train") if r.augment is None else bool(r.augment)
        base = tv.datasets.VOCSegmentation(str(root), year="2012", image_set="train" if r.split == "train" else "val",
                                           transforms=JointTransform(info, train, None))
        return segmentation_files(base, info, r.split, root)


DATASETS.add("voc", VOC(), aliases=("voc2012",), help="Pascal VOC 2012 segmentation, 21 classes")
