"""torchvision, the optional dependency (the ``vision`` extra) of CIFAR, image folders, VOC, Cityscapes and
downloads: imported when one of them is loaded, so that ``import cheapconv.data`` and Fashion-MNIST or
synthetic data work with torch alone."""

from __future__ import annotations

from typing import Any

from ..errors import CheapconvError

__all__ = ["import_torchvision"]


def import_torchvision(what: str) -> Any:
    """The ``torchvision`` module; a :class:`~cheapconv.errors.CheapconvError` saying how to install it when it is
    not importable (``what`` names what needed it)."""
    try:  # optional (vision extra), slow to import: only the datasets that read files through it
        import torchvision
    except ImportError as exc:
        raise CheapconvError(
            f"{what} needs torchvision, which is not importable ({exc}). Install it with "
            "`pip install 'cheapconv[vision]'` (torch and torchvision versions must match)."
        ) from exc
    return torchvision
