"""Reading IDX files, the format of MNIST and Fashion-MNIST (gzip-compressed or raw), with torch alone."""

from __future__ import annotations

import gzip
import math
import os
import struct
import sys
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ..errors import FileFormatError

__all__ = ["read_idx"]

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> (dtype, bytes per element).
_IDX_TYPES: dict[int, tuple[torch.dtype, int]] = {
    0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4), 0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8),
}  # fmt: skip


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read an IDX file (the MNIST format), gzip-compressed or raw, into a tensor.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions d, then d big-endian uint32 sizes, then the data in big-endian
    C order. Compression is detected from the gzip magic bytes, not the file name. A malformed or truncated
    file raises :class:`~cheapconv.errors.FileFormatError`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"Cannot read the IDX file {path}: {exc.strerror or exc}. Check the path and its "
                              "permissions.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile, truncated stream, corrupt deflate data
            raise FileFormatError(f"{path} looks gzip-compressed but does not decompress ({exc}): it is damaged "
                                  "or truncated. Download or copy the file again.") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise FileFormatError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'}).")
    dtype, size = _IDX_TYPES[raw[2]]
    ndim, start = raw[3], 4 + 4 * raw[3]
    if len(raw) < start:
        raise FileFormatError(f"{path}: IDX header truncated ({ndim} dimensions announced).")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    expected = math.prod(dims) * size
    if len(raw) - start != expected:
        raise FileFormatError(
            f"{path}: IDX shape {dims} needs {expected} bytes of data, the file has {len(raw) - start}."
        )
    if expected == 0:
        return torch.empty(dims, dtype=dtype)
    flat = torch.frombuffer(bytearray(raw[start:]), dtype=torch.uint8)
    if size > 1 and sys.byteorder == "little":
        flat = flat.view(-1, size).flip(1).contiguous()  # big-endian -> native byte order
    return flat.view(dtype).reshape(dims)
