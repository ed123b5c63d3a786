"""Saving and loading models safely, with a self-describing recipe next to the weights.

A cheapconv file is a ``torch.save`` of plain data (readable with ``weights_only=True``)::

    {"format": "cheapconv", "format_version": 1, "recipe": {...}, "architecture": "<json>" | None,
     "state_dict": {...}, "pickled_module": <uint8 tensor> (only for the last resort below)}

The architecture is stored in the first of these forms that works:

1. ``graph``: a data-only fx graph (:mod:`cheapconv.graph_codec`). Loads anywhere with torch and cheapconv,
   even where the teacher's Python class cannot be imported.
2. ``recipe``: the teacher's zoo name plus the policy; loading rebuilds the teacher from the installed
   library (torchvision/timm/cheapconv) and cheapens it again, then loads the weights.
3. ``pickle``: the module pickled into the file. Loading it runs code from the file, so :func:`load`
   refuses unless ``trust=True``.

Files are written atomically (temporary file in the same folder, then rename), so an interrupted save
never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime as _dt
import io as _io
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from . import graph_codec
from .errors import FileFormatError, UntrustedFileError, UsageError

FORMAT = "cheapconv"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Library versions recorded in every file."""
    import sys

    from . import __version__

    out = {"cheapconv": __version__, "torch": torch.__version__}
    for name in ("torchvision", "timm"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def check_writable(path: str | Path) -> Path:
    """Fail early (before any work) when ``path`` cannot be written: missing folder, or a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"The output path {str(path)!r} is a directory; give a file name such as "
                         f"{str(path / 'student.pt')!r}.")
    parent = path.parent if str(path.parent) else Path(".")
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


def atomic_write(path: str | Path, write: Callable[[str], None], *, suffix: str = "") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    If ``write`` raises, the temporary file is deleted and ``path`` is untouched, so an output file is either
    complete or absent. The file gets the permissions of a normally created file (umask applied).
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _architecture(model: nn.Module, recipe: dict) -> tuple[str, str | None, torch.Tensor | None]:
    if isinstance(model, fx.GraphModule):
        try:
            return "graph", json.dumps(graph_codec.describe_graph_module(model)), None
        except graph_codec.NotDescribable as e:
            recipe.setdefault("notes", []).append(f"graph not stored as data: {e}")
    source = recipe.get("source")
    if source and _rebuilds_from_recipe(model, recipe):
        return "recipe", None, None
    buffer = _io.BytesIO()
    torch.save(model, buffer)
    return "pickle", None, torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _rebuild_from_recipe(recipe: dict) -> nn.Module:
    from .models.zoo import create_model
    from .rewrite import cheapen

    base = create_model(recipe["source"], **recipe.get("source_kwargs", {}))
    if not recipe.get("policy"):
        return base
    return cheapen(base, recipe["policy"], input_size=tuple(recipe["input_size"]),
                   leaf_modules=recipe.get("leaf_modules", ()))


def _rebuilds_from_recipe(model: nn.Module, recipe: dict) -> bool:
    try:
        rebuilt = _rebuild_from_recipe(recipe)
    except Exception:  # noqa: BLE001 - any failure just means this storage kind is not usable
        return False
    want = {k: v.shape for k, v in model.state_dict().items()}
    return {k: v.shape for k, v in rebuilt.state_dict().items()} == want


def save(model: nn.Module, path: str | Path, *, recipe: dict | None = None, extra: dict | None = None) -> str:
    """Save ``model`` with its recipe; returns the storage kind used (``graph``, ``recipe`` or ``pickle``).

    ``recipe`` defaults to ``model.cheapconv_recipe`` (set by :func:`cheapconv.cheapen`) or, for a zoo model,
    its source name. ``extra`` adds JSON-able fields (e.g. training metrics).
    """
    check_writable(path)
    recipe = dict(recipe if recipe is not None else getattr(model, "cheapconv_recipe", None) or {})
    if not recipe.get("source") and getattr(model, "cheapconv_source", None):
        recipe["source"] = model.cheapconv_source
        recipe["source_kwargs"] = dict(getattr(model, "cheapconv_source_kwargs", {}) or {})
    recipe.setdefault("model", type(model).__name__)
    recipe["versions"] = versions()
    recipe["saved_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if extra:
        recipe.update(extra)
    kind, arch, pickled = _architecture(model, recipe)
    recipe["storage"] = kind
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "recipe_json": json.dumps(recipe),
               "architecture": arch, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if pickled is not None:
        payload["pickled_module"] = pickled
    atomic_save(payload, path)
    return kind


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"The file {str(path)!r} does not exist. Check the path.")
    if not _looks_like_torch_file(path):
        raise FileFormatError(f"Cannot read {str(path)!r}: it is not a torch or cheapconv file (neither a torch zip "
                              "archive nor a legacy torch pickle). Check the path.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
        raise UntrustedFileError(
            f"{str(path)!r} is not a cheapconv file: it holds pickled Python objects (for example a model saved "
            "with torch.save(model)), and loading it would run code from the file"
            + (f" ({detail})" if detail else "") + ". If you trust its origin, pass trust=True (--trust on the "
            "command line); otherwise re-save it with cheapconv.save(model, path)."
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, not torch at all
        first = str(e).splitlines()[0] if str(e) else ""
        raise FileFormatError(f"Cannot read {str(path)!r}: {type(e).__name__}: {first}. It is not a cheapconv or "
                              "torch file, or it is truncated.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FileFormatError(f"{str(path)!r} is a torch file but not a cheapconv model file (a plain state dict "
                              "or checkpoint?). Load plain weights with create_model(NAME, pretrained=PATH) / "
                              "--teacher-weights PATH.")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise FileFormatError(f"{str(path)!r} was written by a newer cheapconv (format version "
                              f"{payload['format_version']}); upgrade cheapconv to read it.")
    return payload


def _looks_like_torch_file(path: Path) -> bool:
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol marker of torch's legacy format


def read_recipe(path: str | Path) -> dict:
    """The recipe stored in a cheapconv file, without building the model."""
    return json.loads(_read(path)["recipe_json"])


def load(path: str | Path, *, trust: bool = False, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save` without executing code from the file.

    ``trust=True`` additionally allows files that need unpickling (cheapconv files of the ``pickle`` kind,
    and plain ``torch.save(model)`` files) — only for files whose origin you trust. The model is returned in
    eval mode with ``cheapconv_recipe`` attached.
    """
    path = Path(path)
    try:
        payload = _read(path)
    except UntrustedFileError:
        if not trust:
            raise
        model = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(model, nn.Module):
            raise FileFormatError(f"{str(path)!r} holds a {type(model).__name__}, not a model.") from None
        return model.eval()
    recipe = json.loads(payload["recipe_json"])
    kind = recipe.get("storage")
    if kind == "graph":
        try:
            model = graph_codec.build_graph_module(json.loads(payload["architecture"]))
        except graph_codec.NotDescribable as e:
            raise FileFormatError(f"{str(path)!r} describes a graph this cheapconv refuses to build ({e}).") from None
    elif kind == "recipe":
        model = _rebuild_from_recipe(recipe)
    elif kind == "pickle":
        if not trust:
            raise UntrustedFileError(
                f"{str(path)!r} stores its model as pickled Python code (its architecture could not be saved as "
                "data), and loading it would run code from the file. If you trust its origin, pass trust=True "
                "(--trust on the command line).")
        buffer = _io.BytesIO(payload["pickled_module"].numpy().tobytes())
        model = torch.load(buffer, map_location=map_location, weights_only=False)
    else:
        raise FileFormatError(f"{str(path)!r} has an unknown storage kind {kind!r}.")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise FileFormatError(f"The weights in {str(path)!r} do not fit its architecture: "
                              f"{str(e).splitlines()[0]}") from None
    model.cheapconv_recipe = recipe
    model.cheapconv_stages = [t.stage for t in model.modules() if type(t).__name__ == "Tap"] or \
        recipe.get("plan", {}).get("stages", [])
    return model.to(map_location).eval()
