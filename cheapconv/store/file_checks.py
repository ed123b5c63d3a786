"""What a file really brings, checked before anything trusts its declared sizes.

Two checks on a file from anyone, both cheap and both run before anything large is allocated:

* :func:`check_zip`: before ``torch.load`` opens it, a torch zip archive must hold its records *stored*, as
  ``torch.save`` writes them, never deflated (torch's reader inflates a deflated record whole: a 3 MB file
  could make it allocate gigabytes), and its records' declared sizes may sum to no more than the file's size.
* :func:`real_size`: the bytes and elements of the *distinct storages* a loaded state dict holds, after
  refusing every layout whose declared size is not backed by data in the file: sparse, meta, quantised and
  nested tensors, views that are not dense (stride 0 or gaps), and views that overlap one another in one
  storage without being the same tensor (tied weights, the same view under two names, are fine).

Every cap the loaders derive from a file's weights (:mod:`cheapconv.store.graph_limits`,
:mod:`cheapconv.store.rebuild`) starts from :func:`real_size`, never from ``numel × element_size``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..errors import FileFormatError

__all__ = ["check_zip", "real_size"]

#: a file with more records than this is not a model (a real one holds one record per storage)
MAX_RECORDS = 1_000_000


def _refuse(path: Path, what: str) -> FileFormatError:
    return FileFormatError(f"{str(path)!r} is refused before loading: {what}. cheapconv and torch.save never "
                           "write such a file, so it is damaged or crafted; re-save the model with "
                           "cheapconv.save(model, path) (or torch.save for plain weights).")


def check_zip(path: str | Path) -> None:
    """Raise :class:`FileFormatError` unless the zip archive at ``path`` holds only stored (uncompressed)
    records whose sizes sum to no more than the file's size. Reads only the archive's directory."""
    path = Path(path)
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as e:
        raise FileFormatError(f"Cannot read {str(path)!r}: its zip directory is damaged ({e}). It is not a "
                              "cheapconv or torch file, or it is truncated.") from None
    if len(infos) > MAX_RECORDS:
        raise _refuse(path, f"it holds {len(infos):,} records (at most {MAX_RECORDS:,})")
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise _refuse(path, f"its record {info.filename[:80]!r} is compressed (method "
                          f"{info.compress_type}), and inflating it could take far more memory than the file")
        if info.compress_size != info.file_size:
            raise _refuse(path, f"its record {info.filename[:80]!r} declares {info.file_size:,} bytes but "
                          f"stores {info.compress_size:,}")
        total += info.file_size
    if total > size:
        raise _refuse(path, f"its records declare {total:,} bytes in all, more than the file's {size:,}")


def _is_dense(t: torch.Tensor) -> bool:
    """Whether a strided tensor's elements tile a block of its storage exactly once (any dimension order)."""
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _layout_problem(t: torch.Tensor) -> str | None:
    if t.is_nested:
        return "a nested tensor"
    if t.layout != torch.strided:
        return f"a {str(t.layout).removeprefix('torch.')} tensor"
    if t.is_quantized:
        return "a quantised tensor"
    if t.device.type != "cpu":
        return f"a tensor on the {t.device.type} device (no data in the file)"
    if t.numel() and not _is_dense(t):
        return "a view that is not dense (a stride of 0, or gaps: its declared size is not in the file)"
    return None


def real_size(state: dict[str, torch.Tensor], *, where: str = "the file") -> tuple[int, int]:
    """``(bytes, elements)`` of the distinct storages behind ``state``'s tensors, after refusing every layout
    the module docstring lists (a :class:`FileFormatError` naming the tensor and the fix)."""
    spans: dict[int, list[tuple[int, int, tuple, str]]] = {}
    sizes: dict[int, tuple[int, int]] = {}
    for name, t in state.items():
        problem = _layout_problem(t)
        if problem is not None:
            raise FileFormatError(f"The weight {str(name)[:80]!r} in {where} is {problem}, which a saved model "
                                  "never holds: its declared size is not backed by data. The file is damaged or "
                                  "crafted; re-save the model with cheapconv.save(model, path).")
        if not t.numel():
            continue
        storage = t.untyped_storage()
        key = storage.data_ptr()
        sizes.setdefault(key, (storage.nbytes(), t.element_size()))
        es = t.element_size()
        start = t.storage_offset() * es
        end = start + (sum((sz - 1) * st for sz, st in zip(t.shape, t.stride(), strict=True)) + 1) * es
        if end > storage.nbytes():
            raise FileFormatError(f"The weight {str(name)[:80]!r} in {where} reaches past the end of its data. The "
                                  "file is damaged or crafted; re-save the model with cheapconv.save(model, path).")
        spans.setdefault(key, []).append((start, end, (tuple(t.shape), t.stride(), t.dtype), name))
    for views in spans.values():
        views.sort(key=lambda v: (v[0], v[1]))
        for (s0, e0, sig0, n0), (s1, e1, sig1, n1) in zip(views, views[1:], strict=False):
            if s1 < e0 and (s0, e0, sig0) != (s1, e1, sig1):
                raise FileFormatError(f"The weights {str(n0)[:60]!r} and {str(n1)[:60]!r} in {where} overlap in "
                                      "one storage without being the same tensor, which a saved model never does "
                                      "(the file counts its data more than once). The file is damaged or "
                                      "crafted; re-save the model with cheapconv.save(model, path).")
    return sum(n for n, _ in sizes.values()), sum(n // es for n, es in sizes.values())
