"""Reading a file that a user names (a policy file, a sweep's JSON, an IDX file) without trusting it.

A path may name a FIFO (reading blocks forever), a device (``/dev/zero`` never ends), or a regular file far
larger than the thing it should hold. Every such read goes through :func:`open_regular`, which opens without
blocking, checks the file type on the open descriptor (so a swap between a check and the open changes
nothing) and its size against a cap, and :func:`read_bytes`/:func:`read_text`, which then read at most the cap.
The caps themselves are defined next to their readers and listed in the README's "Security model".
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError

__all__ = ["MiB", "open_regular", "read_bytes", "read_text"]

MiB = 1 << 20


def _cap(what: str) -> str:
    return what[:1].upper() + what[1:]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], *, what: str, limit: int, fix: str,
                 error: type[UsageError] = UsageError) -> BinaryIO:
    """``path`` opened for binary reading, after checking that it is a regular file of at most ``limit`` bytes.

    Opened with ``O_NONBLOCK`` so that a FIFO does not block the open, then checked with ``fstat`` on the
    descriptor. ``what`` names the file in messages ("the policy file"), ``fix`` says what to do instead;
    ``error`` is the class raised (a :class:`~cheapconv.errors.UsageError` subclass: exit 2)."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"Cannot read {what} {str(path)!r}: {e.strerror or e}. {fix}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"Cannot read {what} {str(path)!r}: it is {_kind(st.st_mode)}, not a regular file (cheapconv "
                        f"reads only regular files there: a pipe or a device may never end). {fix}")
        if st.st_size > limit:
            raise error(f"{_cap(what)} {str(path)!r} is {st.st_size:,} bytes, more than the {limit:,} bytes "
                        f"cheapconv reads for it. {fix}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)  # noqa: SIM115 - the caller closes it
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike[str], *, what: str, limit: int, fix: str,
               error: type[UsageError] = UsageError) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes (see :func:`open_regular`); a file that
    grows past the cap while it is read is refused too."""
    with open_regular(path, what=what, limit=limit, fix=fix, error=error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"Cannot read {what} {str(path)!r}: {e.strerror or e}. {fix}") from None
    if len(data) > limit:
        raise error(f"{_cap(what)} {str(path)!r} holds more than the {limit:,} bytes cheapconv reads for "
                    f"it. {fix}")
    return data


def read_text(path: str | os.PathLike[str], *, what: str, limit: int, fix: str,
              error: type[UsageError] = UsageError) -> str:
    """:func:`read_bytes` decoded as UTF-8 (a file that is not text is refused with ``error``)."""
    data = read_bytes(path, what=what, limit=limit, fix=fix, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{_cap(what)} {str(path)!r} is not UTF-8 text (byte {e.start}). {fix}") from None
