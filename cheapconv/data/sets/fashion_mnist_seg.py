"""``fashion-mnist-seg[:SIZE[:ITEMS]]`` (default ``fashion-mnist-seg:64:4``): segmentation scenes built from the
real Fashion-MNIST items, 11 classes (background and the 10 items), SIZE×SIZE canvases with 1..ITEMS items each
(see :mod:`cheapconv.data.segmentation`). Read from Fashion-MNIST's files as ``fashion-mnist`` is."""

from __future__ import annotations

from ...errors import UsageError
from ...extensions import DATASETS
from ..info import DatasetInfo, DatasetSource, LoadRequest, adapt_info
from ..segmentation import SegmentationTensorDataset, fashion_mnist_seg
from .fashion_mnist import CLASSES, load_fashion_mnist

__all__ = ["FashionMNISTScenes"]

# mostly black canvas (measured: mean 0.084-0.127, std 0.225-0.264 for canvases 64 to 40)
MEAN, STD = (0.10,), (0.24,)


def _scene_spec(arg: str) -> tuple[int, int]:
    """``SIZE[:ITEMS]`` of a ``fashion-mnist-seg`` name -> (canvas, max items per scene); defaults 64 and 4."""
    parts = arg.split(":") if arg else []
    try:
        if len(parts) > 2:
            raise ValueError
        canvas = int(parts[0]) if parts and parts[0] else 64
        items = int(parts[1]) if len(parts) > 1 else 4
    except ValueError:
        raise UsageError(f"Cannot parse 'fashion-mnist-seg:{arg}'; expected fashion-mnist-seg[:SIZE[:ITEMS]], e.g. "
                         "fashion-mnist-seg:48:3.") from None
    if not 8 <= canvas <= 1024 or not 1 <= items <= 64:
        raise UsageError(f"fashion-mnist-seg:{arg}: SIZE (the canvas side) must be 8..1024 pixels and ITEMS (the "
                         "most items per scene) 1..64.")
    return canvas, items


class FashionMNISTScenes(DatasetSource):
    """Scenes of Fashion-MNIST items in memory (see the module docstring)."""

    syntax = "[:SIZE[:ITEMS]]"
    in_memory = True

    def info(self, arg: str) -> DatasetInfo:
        canvas, items = _scene_spec(arg)
        return DatasetInfo(f"fashion-mnist-seg:{canvas}:{items}", 11, 1, canvas, MEAN, STD, ("background",) + CLASSES,
                           task="segmentation")

    def load(self, arg: str, request: LoadRequest) -> SegmentationTensorDataset:
        r, info = request, self.info(arg)
        if r.image_size is not None and r.image_size != info.image_size:
            raise UsageError(f"{info.name} scenes are {info.image_size}×{info.image_size}; image_size={r.image_size} "
                             f"would need the masks rescaled. Build scenes of that size instead: "
                             f"--data fashion-mnist-seg:{r.image_size}.")
        adapted = adapt_info(info, r.in_chans, None, r.preprocessing)
        images, labels = load_fashion_mnist(r.split, r.data_dir, r.download)
        return fashion_mnist_seg(images, labels, adapted, split=r.split, augment=r.augment,
                                 repeat=adapted.channels // info.channels, seed=r.seed)


DATASETS.add("fashion-mnist-seg", FashionMNISTScenes(),
             help="segmentation scenes of Fashion-MNIST items, 11 classes")
