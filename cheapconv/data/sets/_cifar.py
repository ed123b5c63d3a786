"""Reading CIFAR-10 and CIFAR-100 (torchvision's python version), shared by ``cifar10.py`` and ``cifar100.py``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ...errors import DatasetNotFoundError
from ..vision import import_torchvision

__all__ = ["read_cifar"]


def read_cifar(kind: str, split: str, data_dir: Path, download: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """``kind`` (``cifar10`` or ``cifar100``): the ``split``'s uint8 images N×3×32×32, labels and class names,
    from torchvision's files (``cifar-10-batches-py``, ``cifar-100-python``) under ``data_dir``; downloaded there
    only when ``download``."""
    folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    title = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
    roots = [data_dir, data_dir / kind]
    if data_dir.name == folder:  # accept the extracted folder itself
        roots.insert(0, data_dir.parent)
    root = next((r for r in roots if (r / folder).is_dir()), None)
    if root is None and not download:
        raise DatasetNotFoundError(
            f"{title} ({split}) not found: looked for the folder {folder} (torchvision's python "
            f"version) in {', '.join(str(r) for r in roots)}. To get it: pass --download (download=True) "
            f"when online to fetch it into {data_dir}, or extract {folder}.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html into a folder and pass --data-dir FOLDER "
            "(data_dir=...)."
        )
    tv = import_torchvision(title)
    cls = tv.datasets.CIFAR10 if kind == "cifar10" else tv.datasets.CIFAR100
    try:
        ds = cls(str(root or data_dir), train=split == "train", download=download)
    except (OSError, RuntimeError) as exc:
        verb = "Downloading" if download else "Reading"
        raise DatasetNotFoundError(f"{verb} {title} in {root or data_dir} failed: {exc}.") from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N×H×W×C -> N×C×H×W, uint8
    return images, torch.as_tensor(ds.targets, dtype=torch.int64), tuple(ds.classes)
