"""Screening an image folder's files before training reads them: what is not an image is skipped and counted.

torchvision's ImageFolder lists every file with an image extension (walking symlinked folders, loops
included) and finds out that one is not an image, is a dangling or looping symlink, or decodes to gigapixels
only when a DataLoader worker reads it, mid-epoch, with a worker traceback. Here the folder is walked once
(each real folder once, so a symlink loop ends), and each file's header is opened with PIL (the header only:
its size, not its pixels): files that fail are left out, counted by reason, and named in one warning.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FileFormatError

__all__ = ["IMAGE_MAX_PIXELS", "ImageScan", "load_image", "scan_images"]

#: the most pixels an image may decode to (8192×8192; PIL's own decompression-bomb limit is 89 M, then a warning)
IMAGE_MAX_PIXELS = 1 << 26


@dataclass
class ImageScan:
    """What :func:`scan_images` found: ``(path, class index)`` samples, and the files skipped, by reason."""

    samples: list[tuple[str, int]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, path: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, path)

    def summary(self, root: str) -> str | None:
        """One paragraph naming how many files were skipped and why, with an example each; None if none was."""
        if not self.skipped:
            return None
        parts = ", ".join(f"{n:,} {reason} (e.g. {self.examples[reason]})" for reason, n in self.skipped.items())
        return (f"Skipped {sum(self.skipped.values()):,} files under {root} that cannot be read as images: {parts}. "
                "Remove or fix them to use them.")


def _pil() -> Any:
    from PIL import Image  # installed with torchvision (the vision extra), which only image folders need

    return Image


def screen_image(path: str) -> str | None:
    """Why ``path`` cannot be used as an image (a short reason), or None when its header reads as an image of
    at most :data:`IMAGE_MAX_PIXELS` pixels."""
    try:
        st = os.stat(path)
    except OSError as e:
        return "symlink loops" if e.errno == errno.ELOOP else "unreadable files"
    if not stat.S_ISREG(st.st_mode):
        return "files that are not regular files"
    image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", image.DecompressionBombWarning)
            with image.open(path) as im:
                width, height = im.size
    except image.DecompressionBombError:
        return f"images over {IMAGE_MAX_PIXELS:,} pixels"
    except (OSError, SyntaxError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        return "files that are not images"
    if width * height > IMAGE_MAX_PIXELS:
        return f"images over {IMAGE_MAX_PIXELS:,} pixels"
    return None


def _walk_once(top: str) -> Iterable[str]:
    """Every file under ``top``, sorted, following symlinked folders but entering each real folder once."""
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(entry.path)
            else:
                yield entry.path
        stack.extend(reversed(subfolders))


def scan_images(root: str, class_to_idx: dict[str, int], extensions: tuple[str, ...]) -> ImageScan:
    """The ``(path, class index)`` samples under ``root/<class>/`` whose extension is in ``extensions`` and whose
    header :func:`screen_image` accepts; the others are counted in the result's ``skipped``."""
    scan = ImageScan()
    for name in sorted(class_to_idx):
        top = os.path.join(root, name)
        if not os.path.isdir(top):
            continue
        for path in _walk_once(top):
            if not path.lower().endswith(extensions):
                continue
            reason = screen_image(path)
            if reason is None:
                scan.samples.append((path, class_to_idx[name]))
            else:
                scan.skip(reason, path)
    return scan


def load_image(path: str) -> Any:
    """``path`` decoded as an RGB PIL image; a file that no longer reads as one (it changed after the folder was
    scanned) is a :class:`~cheapconv.errors.FileFormatError` naming it, not a decoder traceback."""
    image = _pil()
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", image.DecompressionBombWarning)
            im = image.open(f)
            if im.size[0] * im.size[1] > IMAGE_MAX_PIXELS:
                raise image.DecompressionBombError(f"{im.size[0]}×{im.size[1]} pixels")
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, image.DecompressionBombError) as e:
        raise FileFormatError(f"{path} no longer reads as an image of at most {IMAGE_MAX_PIXELS:,} pixels ({e}); "
                              "it changed after the folder was scanned. Remove or fix it, then run again.") from None
