"""torch's intra-op thread count, set for a block of code and restored after it.

Thread count changes CPU convolution speed several-fold, so measuring states it and pricing pins it; both
must leave the caller's setting as they found it, also when the block raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["limited_threads"]


@contextlib.contextmanager
def limited_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` intra-op threads (``None``: leave torch's count as it is).

    The count in force before the block is restored afterwards, in every case: code inside the block that
    sets its own count does not leak it either.

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with limited_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
