"""Refusing images that hold NaN or infinite values before anything is fitted or trained on them.

One NaN pixel in a calibration set makes every block fitted on it NaN (least squares, BatchNorm statistics and
min/max ranges all propagate it), and one in a training batch makes the loss, then every weight, NaN. Nothing
downstream says where it came from, so reconstruction, a compress library's calibration, an int8 export's
calibration and training check each batch as it is read (``torch.isfinite(x).all()``: one pass over data that is
read anyway) and refuse a bad one with a :class:`~cheapconv.errors.UsageError` naming the batch and the item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UsageError

__all__ = ["check_finite", "check_finite_batches"]


def check_finite(x: torch.Tensor, *, what: str, items: Sequence[int] | None = None) -> None:
    """Raise :class:`~cheapconv.errors.UsageError` if the batch ``x`` (images along dim 0) holds a NaN or inf.

    ``what`` names the batch in the message ("calibration batch 3"); ``items``, where given, are the dataset
    indices of ``x``'s rows, so the message can name the first bad image. Integer tensors pass at once."""
    if not (x.is_floating_point() or x.is_complex()) or bool(torch.isfinite(x).all()):
        return
    bad = ~torch.isfinite(x)
    per_row = bad.reshape(len(x), -1).any(dim=1) if x.dim() > 1 else bad
    rows = per_row.nonzero().flatten().tolist()
    first = rows[0]
    item = f"item {items[first]:,} of the data" if items is not None and first < len(items) else \
        f"image {first} of the batch"
    raise UsageError(f"{what[:1].upper()}{what[1:]} holds {int(bad.sum()):,} NaN or infinite value(s) in {len(rows):,} "
                     f"of its {len(x):,} image(s) (the first: {item}). One such pixel makes every block fitted on it, "
                     "or the training loss and then every weight, NaN, so cheapconv stops before using it. Repair or "
                     "drop those images (or the transform that makes them: a normalisation by a zero std, a division "
                     "by a zero range), then run again.")


def check_finite_batches(x: torch.Tensor, *, what: str, batch_size: int = 128,
                         items: Sequence[int] | None = None) -> None:
    """:func:`check_finite` over ``x`` in batches of ``batch_size`` rows (named "batch N of ``what``", from 1), so a
    large in-memory set is checked without a mask of its whole size."""
    for start in range(0, len(x), batch_size):
        check_finite(x[start:start + batch_size], what=f"batch {start // batch_size + 1} of {what}",
                     items=None if items is None else items[start:start + batch_size])
