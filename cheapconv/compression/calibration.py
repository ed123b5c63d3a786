"""The images a candidate library is fitted and scored on, and the fingerprints that key it.

:func:`calibration_split` turns what the user passed (a dataset, a tensor of images, or a dataset name) into two
fixed tensors: ``samples`` calibration images (each option is fitted on them) and ``held_out`` *other* images (each
option is scored on them). Both are drawn by one seeded permutation, so the same data and seed give the same split,
and :func:`tensors_sha256` of the two is the data's fingerprint in the library's key. :func:`state_sha256` is the
teacher's.
"""

from __future__ import annotations

import hashlib
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import adapt_for_model, check_finite, check_finite_batches, default_workers, get_dataset
from ..errors import UsageError

__all__ = ["calibration_split", "state_sha256", "tensors_sha256"]


def _images(data: Dataset | torch.Tensor | str, teacher: nn.Module) -> Dataset | torch.Tensor:
    """``data`` as a dataset or a tensor; a dataset name is its training split without augmentation, fed the way
    the teacher records (:func:`cheapconv.data.adapt_for_model`, as ``reconstruct`` and ``--data`` do)."""
    if isinstance(data, str):
        fit = adapt_for_model(data, teacher)
        return get_dataset(data, "train", augment=False, in_chans=fit.in_chans, image_size=fit.image_size,
                           preprocessing=fit.preprocessing)
    if isinstance(data, torch.Tensor) and data.dim() != 4:
        raise UsageError(f"A tensor of calibration images must be N×C×H×W, got shape {tuple(data.shape)}.")
    return data


def _gather(data: Dataset | torch.Tensor, indices: list[int], what: str) -> torch.Tensor:
    """The items ``indices`` of ``data`` as one float tensor; a batch holding NaN or inf is refused (``what`` names
    the set in the message)."""
    if isinstance(data, torch.Tensor):
        x = data[indices].float().contiguous()
        check_finite_batches(x, what=what, batch_size=128, items=indices)
        return x
    loader = DataLoader(Subset(data, indices), batch_size=128, shuffle=False, num_workers=default_workers(data))
    chunks = []
    for i, item in enumerate(loader):
        chunks.append(item[0] if isinstance(item, (list, tuple)) else item)
        check_finite(chunks[-1], what=f"batch {i + 1} of {what}", items=indices[i * 128:(i + 1) * 128])
    return torch.cat(chunks).float().contiguous() if chunks else torch.empty(0)


def calibration_split(data: Dataset | torch.Tensor | str, teacher: nn.Module, *, samples: int, held_out: int,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration images, held-out images): ``samples`` and ``held_out`` distinct items of ``data`` drawn by a
    permutation seeded with ``seed``, in memory as float tensors. Where ``data`` holds fewer than
    ``samples + held_out`` items, the held-out set takes at most half of them and the calibration set the rest
    (with a warning). A dataset yields ``(image, label)`` or images; pass one without random augmentation (its
    images must be the same each time for the library's fingerprint to match on a rebuild)."""
    if samples < 1 or held_out < 1:
        raise UsageError(f"A library needs at least 1 calibration and 1 held-out image; got samples={samples}, "
                         f"held_out={held_out}.")
    data = _images(data, teacher)
    try:
        n = len(data)
    except TypeError:
        raise UsageError("The library's data must have a length (a dataset, a tensor of images or a dataset name); "
                         "an iterable of batches cannot be split into calibration and held-out images.") from None
    if n < 2:
        raise UsageError(f"The library's data has {n} image(s); it needs at least 2 (one to fit on, one to score "
                         "on), and a few hundred of each to score reliably.")
    held = held_out if n >= samples + held_out else min(held_out, n // 2)
    calib = min(samples, n - held)
    if (calib, held) != (samples, held_out):
        warnings.warn(f"The data holds {n} images, fewer than samples + held_out = {samples + held_out}: the library "
                      f"fits on {calib} and scores on {held} others.", stacklevel=3)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    # each set in the data's own order (an ImageFolder reads faster so); which items are in it is random
    return (_gather(data, sorted(order[:calib]), "the calibration images"),
            _gather(data, sorted(order[calib:calib + held]), "the held-out images"))


def _update(digest, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for i, t in enumerate(tensors):
        _update(digest, str(i), t)
    return digest.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state dict: every tensor's name, dtype, shape and bytes, in the dict's order."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if torch.is_tensor(value):
            _update(digest, name, value)
    return digest.hexdigest()
