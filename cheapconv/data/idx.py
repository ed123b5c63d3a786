"""Reading IDX files, the format of MNIST and Fashion-MNIST (gzip-compressed or raw), with torch alone."""

from __future__ import annotations

import gzip
import math
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from ..bounded import open_regular
from ..errors import FileFormatError

__all__ = ["GZIP_MAX_RATIO", "IDX_MAX_BYTES", "read_idx"]

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> (dtype, bytes per element).
_IDX_TYPES: dict[int, tuple[torch.dtype, int]] = {
    0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4), 0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8),
}  # fmt: skip


def read_idx(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> Tensor:
    """Read an IDX file (the MNIST format), gzip-compressed or raw, into a tensor.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions d, then d big-endian uint32 sizes, then the data in big-endian
    C order. Compression is detected from the gzip magic bytes, not the file name. A malformed or truncated
    file raises :class:`~cheapconv.errors.FileFormatError`.

    Bounded: only a regular file is read (a FIFO or a device is refused), the header's declared size may not
    pass ``max_bytes`` (default :data:`IDX_MAX_BYTES`) nor what the file can hold (a raw file's own size; for
    a gzip file, :data:`GZIP_MAX_RATIO` times its size), and a gzip stream is decompressed into a buffer of
    exactly the declared size, then refused if it holds more: never inflated whole.
    """
    path = Path(path)
    cap = IDX_MAX_BYTES if max_bytes is None else max_bytes
    fix = "Download or copy the file again."
    # The compressed file itself may be at most the cap (a raw file of more than the cap is refused too).
    with open_regular(path, what="the IDX file", limit=cap + _HEADER_MAX, fix=fix, error=FileFormatError) as f:
        on_disk = os.fstat(f.fileno()).st_size
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    return _read_stream(stream, path, cap, on_disk * GZIP_MAX_RATIO + _HEADER_MAX, gzipped=True)
            return _read_stream(f, path, cap, on_disk, gzipped=False)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile, truncated stream, corrupt deflate data
            raise FileFormatError(f"{path} looks gzip-compressed but does not decompress ({exc}): it is damaged "
                                  f"or truncated. {fix}") from None


#: the largest IDX payload read (EMNIST's largest split is about 550 MB; Fashion-MNIST's training images, 47 MB)
IDX_MAX_BYTES = 1 << 30
#: deflate's best ratio is about 1032:1, so a gzip file of n bytes cannot honestly hold more than 1032·n bytes
GZIP_MAX_RATIO = 1032
_HEADER_MAX = 4 + 4 * 255
_CHUNK = 1 << 20


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = stream.read(min(_CHUNK, n - len(out)))
        if not piece:
            break
        out += piece
    return bytes(out)


def _read_stream(stream: BinaryIO, path: Path, cap: int, can_hold: int, *, gzipped: bool) -> Tensor:
    head = _read_exact(stream, 4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
        raise FileFormatError(f"{path} is not an IDX file (bad magic number {head[:4].hex() or 'none'}).")
    dtype, size = _IDX_TYPES[head[2]]
    ndim = head[3]
    dim_bytes = _read_exact(stream, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise FileFormatError(f"{path}: IDX header truncated ({ndim} dimensions announced).")
    dims = struct.unpack(f">{ndim}I", dim_bytes)
    expected = math.prod(dims) * size
    if expected > cap:
        raise FileFormatError(f"{path}: IDX shape {dims} declares {expected:,} bytes of data, more than the "
                              f"{cap:,} bytes cheapconv reads from one IDX file. Check that it is the right file.")
    if expected > can_hold - 4 - 4 * ndim:
        what = f"a {can_hold // GZIP_MAX_RATIO:,}-byte gzip file can hold" if gzipped else "the file has"
        raise FileFormatError(f"{path}: IDX shape {dims} needs {expected:,} bytes of data, more than {what}: it "
                              "is damaged or truncated. Download or copy the file again.")
    buffer = bytearray(expected)
    got = stream.readinto(memoryview(buffer)) if expected else 0
    while got < expected:  # a gzip stream returns what one read decompresses
        n = stream.readinto(memoryview(buffer)[got:])
        if not n:
            break
        got += n
    if got < expected:
        raise FileFormatError(f"{path}: IDX shape {dims} needs {expected:,} bytes of data, the file has {got:,}.")
    if stream.read(1):
        raise FileFormatError(f"{path}: IDX shape {dims} needs {expected:,} bytes of data, the file holds more "
                              "(read no further). Download or copy the file again.")
    if expected == 0:
        return torch.empty(dims, dtype=dtype)
    flat = torch.frombuffer(buffer, dtype=torch.uint8)
    if size > 1 and sys.byteorder == "little":
        flat = flat.view(-1, size).flip(1).contiguous()  # big-endian -> native byte order
    return flat.view(dtype).reshape(dims)
