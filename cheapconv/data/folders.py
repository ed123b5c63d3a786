"""Where dataset files are looked for: the data folder, Fashion-MNIST's IDX files, ImageFolder trees.

Only paths are decided here (nothing is read), so :mod:`cheapconv.data.info` can list an ImageFolder's
classes without importing the loaders.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetNotFoundError

__all__ = ["DATA_DIR_ENV", "DEBIAN_FASHION_MNIST_DIR"]

# Used when no data_dir is given: $CHEAPCONV_DATA_DIR, else ./data (ignored by the repository's .gitignore).
DATA_DIR_ENV = "CHEAPCONV_DATA_DIR"
#: where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST (read when looked for, so that tests
#: can point it elsewhere)
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def data_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` if given, else ``$CHEAPCONV_DATA_DIR``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def fashion_mnist_folders(data_dir: Path) -> list[Path]:
    """Where Fashion-MNIST's IDX files are looked for, in order: ``data_dir`` itself, the common sub-folder
    names, torchvision's layout, then the Debian package's folder."""
    return [data_dir, data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST_DIR]


def fashion_mnist_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) IDX files of ``split`` in ``folder``, gzip preferred over raw; None if either is missing."""
    prefix = "train" if split == "train" else "t10k"
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def imagefolder_root(arg: str, split: str, *, must_exist: bool = True) -> Path | None:
    """The class tree for ``split`` under ``arg``: ``train/`` for training; ``val/``, ``test/`` or
    ``validation/`` for testing; a folder with none of these sub-folders serves both splits. When none is
    found: DatasetNotFoundError saying where it looked, or None with ``must_exist=False``."""
    base = Path(arg).expanduser()
    names = ("train",) if split == "train" else ("val", "test", "validation")
    subdirs = [base / n for n in ("train", "val", "test", "validation")]
    root = next((base / n for n in names if (base / n).is_dir()), None)
    if root is None and base.is_dir() and not any(d.is_dir() for d in subdirs):
        root = base  # a flat class tree serves both splits
    if root is None and must_exist:
        raise DatasetNotFoundError(
            f"No {split} images for imagefolder:{arg}: looked for {', '.join(str(base / n) for n in names)}"
            f"{'' if base.is_dir() else f' ({base} does not exist)'}. Expected an ImageNet-style tree, "
            "<path>/train/<class>/*.jpg and <path>/val/<class>/*.jpg, or one folder of class sub-folders."
        )
    return root
