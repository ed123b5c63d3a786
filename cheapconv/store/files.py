"""Files that are complete or absent: atomic writes, early checks of output paths, full disks.

Every file cheapconv writes goes through :func:`atomic_write`: a temporary beside the target (named
``.NAME.PID.XXXXXXXX.tmp``), fsync, then rename, so an interrupted write never leaves a half-written file;
a full disk is reported as :class:`DiskFullError` with nothing left behind, and temporaries of writers that
died are removed by the next write to the same target.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import CheapconvError, UsageError

__all__ = ["DiskFullError", "atomic_save", "atomic_write", "check_writable", "ensure_free_space", "is_disk_full",
           "remove_stale_temporaries", "tensor_bytes"]


class DiskFullError(CheapconvError):
    """A write failed because its file system is full (or the quota is used up); nothing was left behind.

    Exit 2 like a usage error: the fix is the user's (free space, or write elsewhere), not a bug."""

    exit_code = 2


_DISK_FULL_ERRNOS = {_errno.ENOSPC} | ({_errno.EDQUOT} if hasattr(_errno, "EDQUOT") else set())
#: messages of writers (torch's C++ stream writer among them) that fail on a full disk without an errno
_WRITE_FAILURE_MARKERS = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_STALE_AFTER_S = 60.0          # a temporary of a dead writer untouched this long is removed by the next write
_LEGACY_STALE_AFTER_S = 3600.0  # temporaries of older versions carry no PID: only age tells they are stale


def check_writable(path: str | Path) -> Path:
    """Fail early (before any work) when ``path`` cannot be written: missing folder, or a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"The output path {str(path)!r} is a directory; give a file name such as "
                         f"{str(path / 'student.pt')!r}.")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"The output folder {str(parent)!r} is a file, not a folder. Choose another path.")
    if not parent.is_dir():
        raise UsageError(f"The output folder {str(parent)!r} does not exist. Create it first "
                         f"(mkdir -p {parent}) or choose another path.")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"The output folder {str(parent)!r} is not writable. Choose another path.")
    return path


def _file_mode() -> int:
    """The mode a normally created file gets (0o666 minus the umask); mkstemp would leave 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _free_bytes(directory: str | Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _disk_full_message(path: Path, need: int | None = None) -> str:
    directory = path.parent if str(path.parent) else Path(".")
    free = _free_bytes(directory)
    detail = []
    if need is not None:
        detail.append(f"writing {path.name!r} needs about {_size(need)}")
    if free is not None:
        detail.append(f"{_size(free)} free")
    return (f"No space left on {str(directory)!r}" + (f" ({'; '.join(detail)})" if detail else "")
            + f": the file system is full or your disk quota is used up. Nothing was written to {str(path)!r}. "
            "Free some space there, or write the output to another disk.")


def is_disk_full(exc: BaseException, directory: str | Path | None = None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or the quota is full.

    torch's C++ writer reports a full disk as a RuntimeError ("unexpected pos ...") without an errno; such a
    write failure counts as a full disk when ``directory`` has (almost) no free space left."""
    seen: set[int] = set()
    e: BaseException | None = exc
    markers = False
    while e is not None and id(e) not in seen and len(seen) < 32:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        markers = markers or any(m in text for m in _WRITE_FAILURE_MARKERS)
        e = e.__cause__ or e.__context__
    if markers and directory is not None:
        free = _free_bytes(directory)
        return free is not None and free < 16 * 2**20
    return False


def ensure_free_space(path: str | Path, need: int) -> None:
    """Raise :class:`DiskFullError` before writing when ``path``'s disk has less than ``need`` bytes (plus a
    margin) free: for writers that abort the process (a C++ abort) instead of raising on a full disk."""
    path = Path(path)
    free = _free_bytes(path.parent if str(path.parent) else Path("."))
    if free is not None and free < need + 2**20:
        raise DiskFullError(_disk_full_message(path, need))


def _tmp_stem(path: Path) -> str:
    """``.NAME.``: the start of every temporary of ``path`` (long names shortened to stay under NAME_MAX)."""
    name = path.name
    if len(name.encode()) > 160:
        name = name[:40] + "~" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return f".{name}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:
        return True  # cannot tell: treat as alive (only age then removes it)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete leftovers of interrupted writes of ``path`` (a kill during :func:`atomic_write`).

    Only files of :func:`atomic_write`'s own naming for this target are touched: ``.NAME.PID.XXXXXXXX.tmp[.EXT]``
    whose writer PID is no longer running and which were not modified for a minute (a concurrent writer's
    temporary is never removed), and the PID-less ``.NAME.XXXXXXXX.tmp[.EXT]`` of older versions once an hour
    old. Returns the removed paths; failures to remove are ignored."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    stem = re.escape(_tmp_stem(path))
    ext = r"(?:\.[A-Za-z0-9_]{1,16})?"
    current = re.compile(stem + r"(\d{1,10})\.[0-9a-f]{8}\.tmp" + ext + r"\Z")
    legacy = re.compile(stem + r"[A-Za-z0-9_]{8}\.tmp" + ext + r"\Z")
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        m = current.match(entry.name)
        if m is None and legacy.match(entry.name) is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        stale = (age > _STALE_AFTER_S and not _pid_alive(int(m.group(1)))) if m else age > _LEGACY_STALE_AFTER_S
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def atomic_write(path: str | Path, write: Callable[[str], None], *, suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    If ``write`` raises, the temporary file is deleted and ``path`` is untouched, so an output file is either
    complete or absent. The file gets the permissions of a normally created file (umask applied). A full disk
    or quota (ENOSPC, EDQUOT) raises :class:`DiskFullError`. The temporary is ``.NAME.PID.XXXXXXXX.tmp`` plus
    ``suffix``; leftovers of killed writers are removed first (:func:`remove_stale_temporaries`).
    """
    path = check_writable(path)
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale_temporaries(path)
    tmp = directory / f"{_tmp_stem(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            if e.errno in _DISK_FULL_ERRNOS:
                raise
            raise UsageError(f"Cannot create a file in {str(directory)!r} ({e.strerror or e}). Choose an output "
                             "folder you can write to.") from None
        os.close(fd)
        write(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except Exception as e:
        if isinstance(e, DiskFullError):
            raise
        if is_disk_full(e, directory):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise DiskFullError(_disk_full_message(path)) from e
        raise
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def tensor_bytes(obj: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of the tensors in nested dicts/lists/tuples (shared storages counted once)."""
    seen = set() if seen is None else seen
    if depth > 50:
        return 0
    if isinstance(obj, torch.Tensor):
        try:
            storage = obj.untyped_storage()
            key = storage.data_ptr()
            if key in seen and key != 0:
                return 0
            seen.add(key)
            return storage.nbytes()
        except Exception:  # noqa: BLE001 - sparse, meta...: an estimate only
            return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj)
    return 0


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write` (refused up front when the tensors cannot fit the disk)."""
    ensure_free_space(check_writable(path), tensor_bytes(obj))
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
