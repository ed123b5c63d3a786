"""Saving and loading models safely, with a self-describing recipe next to the weights.

A cheapconv file is a ``torch.save`` of plain data (readable with ``weights_only=True``)::

    {"format": "cheapconv", "format_version": 1, "recipe": {...}, "architecture": "<json>" | None,
     "state_dict": {...}, "pickled_module": <uint8 tensor> (only for the last resort below)}

The architecture is stored in the first of these forms that works:

1. ``graph``: a data-only fx graph (:mod:`cheapconv.store.graph_codec`). Loads anywhere with torch and cheapconv,
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
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..counting import count_state
from ..errors import FileFormatError, TraceError, UntrustedFileError, UsageError
from ..fx.attributes import keep_through_copies
from ..fx.tracer import trace
from ..models.inputs import default_input_size
from ..models.preprocessing import Preprocessing, preprocessing_of
from ..models.weights import mismatch
from ..surgery.plans import Plan
from ..version import __version__
from . import graph_codec
from .file_checks import check_zip, real_size
from .files import atomic_save, check_writable
from .rebuild import check_recipe, rebuild_from_recipe, recipe_for_classes

FORMAT = "cheapconv"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Library versions recorded in every file."""
    out = {"cheapconv": __version__, "torch": torch.__version__}
    for name in ("torchvision", "timm"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def _architecture(model: nn.Module, recipe: dict) -> tuple[str, str | None, torch.Tensor | None]:
    """The first storage kind that works (see the module docstring); a pickle only with a warning that says
    why and how to avoid it. ``recipe`` may be updated (a note; the class count of a swapped head)."""
    reasons = []
    if isinstance(model, fx.GraphModule):
        try:
            desc = graph_codec.describe_graph_module(model, input_size=_input_size_for(model, recipe))
            return "graph", json.dumps(desc), None
        except graph_codec.NotDescribable as e:
            recipe.setdefault("notes", []).append(f"graph not stored as data: {e}")
            reasons.append(f"its graph holds something that cannot be stored as data ({e})")
    source = recipe.get("source")
    if source:
        if _rebuilds_from_recipe(model, recipe):
            return "recipe", None, None
        fixed = recipe_for_classes(recipe, model.state_dict())
        if fixed is not None and _rebuilds_from_recipe(model, fixed):
            recipe.update(fixed)   # its head was swapped after it was built: rebuilt with the head's classes
            return "recipe", None, None
        reasons.append(f"building {source} by name with {recipe.get('source_kwargs') or {}}"
                       + (f" and cheapening it with {recipe['policy']!r}" if recipe.get("policy") else "")
                       + " does not give its tensors (was it changed after it was built?)")
    else:
        reasons.append("it was not built by name (cheapconv.create_model), so no recipe rebuilds it")
    if not isinstance(model, fx.GraphModule):
        desc, why = _traced_description(model, recipe)
        if desc is not None:
            return "graph", json.dumps(desc), None
        reasons.append(why)
    warnings.warn("The model is saved as a pickle, which runs code from the file when it is loaded (loading "
                  "it needs trust=True, --trust): " + "; ".join(reasons) + ". To save it as data, build it "
                  "by name with the classes you need (cheapconv.create_model(NAME, num_classes=N, pretrained="
                  "WEIGHTS); --num-classes, --weights) instead of changing it afterwards, or save only its "
                  "weights (torch.save(model.state_dict(), path)).", UserWarning, stacklevel=3)
    buffer = _io.BytesIO()
    torch.save(model, buffer)
    return "pickle", None, torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _traced_description(model: nn.Module, recipe: dict) -> tuple[dict | None, str]:
    """A data-only graph of ``model`` traced by torch.fx, when it has exactly the model's tensors and runs as
    the model does in both modes; else None and the reason."""
    try:
        gm = trace(model)
    except TraceError as e:
        return None, f"torch.fx cannot trace it ({str(e).splitlines()[0][:200]})"
    if gm.cheapconv_trace_notes or gm.cheapconv_auto_leaves:
        return None, "torch.fx traces it only in part (" + "; ".join(map(str, gm.cheapconv_trace_notes))[:300] + ")"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in gm.state_dict().items()} != shapes:
        return None, "its traced graph leaves some of its tensors out (modules its forward does not call)"
    try:
        return graph_codec.describe_graph_module(gm, input_size=_input_size_for(model, recipe)), ""
    except graph_codec.NotDescribable as e:
        return None, f"its traced graph cannot be stored as data ({e})"


def _input_size_for(model: nn.Module, recipe: dict) -> tuple[int, ...] | None:
    """The input size a stored graph is checked at: the recipe's, else the model's own native size."""
    if recipe.get("input_size"):
        return tuple(recipe["input_size"])

    return default_input_size(model)


def _rebuilds_from_recipe(model: nn.Module, recipe: dict) -> bool:
    """Whether :func:`load` will rebuild exactly this model from ``recipe`` (the same checks as loading)."""
    try:
        check_recipe(recipe, expected=model.state_dict())
    except Exception:  # noqa: BLE001 - any failure just means this storage kind is not usable
        return False
    return True


def save(model: nn.Module, path: str | Path, *, recipe: dict | None = None, extra: dict | None = None) -> str:
    """Save ``model`` with its recipe; returns the storage kind used (``graph``, ``recipe`` or ``pickle``).

    ``recipe`` defaults to ``model.cheapconv_recipe`` (set by :func:`cheapconv.cheapen`) or, for a zoo model,
    its source name (and the weights file it started from: name and SHA-256, never its path). ``extra`` adds
    JSON-able fields (e.g. training metrics). How the model must be fed,
    ``model.cheapconv_preprocessing`` (:class:`~cheapconv.models.preprocessing.Preprocessing`), is recorded as
    the recipe's ``"preprocessing"``.

    A model whose classifier was swapped after it was built by name (timm's ``reset_classifier``) is stored as
    its name with the new class count; one that is neither a describable graph nor rebuilt by name is traced
    into a data-only graph where torch.fx can. Only where all of that fails is it pickled, with a ``UserWarning``
    that says why and how to avoid it.
    """
    check_writable(path)
    recipe = dict(recipe if recipe is not None else getattr(model, "cheapconv_recipe", None) or {})
    if not recipe.get("source") and getattr(model, "cheapconv_source", None):
        recipe["source"] = model.cheapconv_source
        recipe["source_kwargs"] = dict(getattr(model, "cheapconv_source_kwargs", {}) or {})
    recipe.setdefault("model", type(model).__name__)
    started = getattr(model, "cheapconv_weights", None)   # create_model(NAME, pretrained=PATH): which file
    if started is not None and "pretrained" not in recipe:
        recipe["pretrained"] = started.to_recipe()
    recipe["versions"] = versions()
    recipe["saved_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if extra:
        recipe.update(extra)
    record = preprocessing_of(model)
    if record is not None:
        recipe["preprocessing"] = record.to_dict()
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
    if path.is_dir():
        raise UsageError(f"{str(path)!r} is a directory, not a model file. Give the path of a file written by "
                         "cheapconv (for example student.pt inside it).")
    if not path.is_file():
        raise UsageError(f"The file {str(path)!r} does not exist. Check the path.")
    try:
        torch_like = _looks_like_torch_file(path)
    except OSError as e:
        raise UsageError(f"Cannot read {str(path)!r}: {e.strerror or e}. Check the path and its "
                         "permissions.") from None
    if not torch_like:
        raise FileFormatError(f"Cannot read {str(path)!r}: it is not a torch or cheapconv file (neither a torch zip "
                              "archive nor a legacy torch pickle). Check the path.")
    if not zipfile.is_zipfile(path):
        # torch's legacy format allocates each storage at the size the pickle declares before reading it, so
        # it cannot be bounded by the file; cheapconv never writes it
        raise UntrustedFileError(
            f"{str(path)!r} is in torch's legacy (pre-1.6) format, which cheapconv never writes and cannot check "
            "before loading (it may declare storages far larger than the file). If you trust its origin, pass "
            "trust=True (--trust on the command line); otherwise re-save it with a current torch.save.")
    check_zip(path)   # stored records only, sizes within the file: torch never inflates a record for us
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
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise FileFormatError(f"{str(path)!r} is a malformed cheapconv file: its format_version is "
                              f"{type(version).__name__}, not a number. The file is damaged or was not written by "
                              "cheapconv; re-save the model with cheapconv.save.")
    if version > FORMAT_VERSION:
        raise FileFormatError(f"{str(path)!r} was written by a newer cheapconv (format version "
                              f"{payload['format_version']}); upgrade cheapconv to read it.")
    _check_payload(payload, path)
    return payload


def _malformed(path: Path, what: str) -> FileFormatError:
    return FileFormatError(f"{str(path)!r} is a malformed cheapconv file: {what}. The file is damaged or was not "
                           "written by cheapconv; re-save the model with cheapconv.save(model, path).")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: recipe fields the loaders read, with the types they must have (None is allowed for each)
_RECIPE_TYPES: dict[str, tuple[type, ...]] = {
    "source": (str,), "source_kwargs": (dict,), "model": (str,), "policy": (str,), "storage": (str,),
    "input_size": (list,), "leaf_modules": (list,), "plan": (dict,), "notes": (list,), "versions": (dict,),
    "saved_at": (str,), "init": (str,), "preprocessing": (dict,), "classes": (list,),
}


def _check_payload(payload: dict, path: Path) -> dict:
    """Check every field the loaders read has the structure they expect; returns the decoded recipe.

    Anything else (a missing key, a wrong type, JSON that is not an object) is a :class:`FileFormatError`,
    so a damaged or crafted file never reaches the loaders as a KeyError or TypeError."""
    recipe_json = payload.get("recipe_json")
    if not isinstance(recipe_json, str):
        raise _malformed(path, "its recipe is missing" if recipe_json is None else
                         f"its recipe is a {type(recipe_json).__name__}, not JSON text")
    try:
        recipe = json.loads(recipe_json)
    except (ValueError, RecursionError) as e:
        raise _malformed(path, f"its recipe is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(recipe, dict):
        raise _malformed(path, f"its recipe is a JSON {type(recipe).__name__}, not an object")
    for key, types in _RECIPE_TYPES.items():
        value = recipe.get(key)
        if value is not None and not isinstance(value, types):
            raise _malformed(path, f"the recipe field {key!r} is a {type(value).__name__}, not a "
                             f"{' or '.join(t.__name__ for t in types)}")
    size = recipe.get("input_size")
    if size is not None and (len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                          for v in size)):
        raise _malformed(path, "the recipe field 'input_size' is not three positive integers (C, H, W)")
    if recipe.get("preprocessing") is not None:
        try:
            Preprocessing.from_dict(recipe["preprocessing"])
        except UsageError as e:
            raise _malformed(path, f"its preprocessing record is invalid ({str(e)[:200]})") from None
    for key in ("leaf_modules", "notes", "classes"):
        if recipe.get(key) is not None and not _is_str_list(recipe[key]):
            raise _malformed(path, f"the recipe field {key!r} is not a list of strings")
    if recipe.get("source_kwargs") is not None and not all(isinstance(k, str) for k in recipe["source_kwargs"]):
        raise _malformed(path, "the recipe field 'source_kwargs' has keys that are not strings")
    stages = (recipe.get("plan") or {}).get("stages")
    if stages is not None and not _is_str_list(stages):
        raise _malformed(path, "the plan's 'stages' is not a list of strings")
    storage = recipe.get("storage")
    if storage == "recipe" and not isinstance(recipe.get("source"), str):
        raise _malformed(path, "it is stored as a recipe but names no source model")
    if storage == "recipe" and recipe.get("policy") and size is None:
        raise _malformed(path, "it is stored as a recipe with a policy but without an input_size")
    architecture = payload.get("architecture")
    if architecture is not None and not isinstance(architecture, str):
        raise _malformed(path, f"its architecture is a {type(architecture).__name__}, not JSON text")
    if storage == "graph" and architecture is None:
        raise _malformed(path, "it is stored as a graph but holds no architecture")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise _malformed(path, "its weights (state_dict) are missing" if state is None else
                         f"its weights (state_dict) are a {type(state).__name__}, not a dict")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise _malformed(path, f"its state_dict entry {str(bad)[:80]!r} is not a named tensor")
    real_size(state, where=repr(str(path)))   # refuses layouts whose declared size the file does not hold
    pickled = payload.get("pickled_module")
    if pickled is not None and not (isinstance(pickled, torch.Tensor) and pickled.dtype == torch.uint8):
        raise _malformed(path, "its pickled_module is not a byte tensor")
    if storage == "pickle" and pickled is None:
        raise _malformed(path, "it is stored as a pickle but holds no pickled module")
    return recipe


def _plan_of(recipe: dict):
    """The :class:`~cheapconv.surgery.plans.Plan` in a student's recipe, or None where it cannot be read (a
    file of another version: the model still loads; only what needs the plan says so)."""
    try:
        return Plan.from_dict(recipe["plan"])
    except (TypeError, KeyError, ValueError, AttributeError, IndexError):
        return None


def _looks_like_torch_file(path: Path) -> bool:
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol marker of torch's legacy format


def describe_file(path: str | Path) -> dict[str, Any]:
    """What a cheapconv file says about itself, without building the model (``cheapconv inspect``): its
    checked recipe, the number of state-dict tensors and their values in the paper convention."""
    payload = _read(path)
    recipe = _check_payload(payload, Path(path))
    state = payload["state_dict"]
    return {"recipe": recipe, "tensors": len(state), "paper_values": count_state(state, "paper")}


def read_recipe(path: str | Path) -> dict:
    """The recipe stored in a cheapconv file, without building the model."""
    return _check_payload(_read(path), Path(path))


def load(path: str | Path, *, trust: bool = False, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save` without executing code from the file.

    ``trust=True`` additionally allows files that need unpickling (cheapconv files of the ``pickle`` kind,
    and plain ``torch.save(model)`` files) — only for files whose origin you trust. The model is returned in
    eval mode with ``cheapconv_recipe`` attached, and ``cheapconv_preprocessing`` (how it must be fed: a
    :class:`~cheapconv.models.preprocessing.Preprocessing`, None where the file records none).
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
    state = payload["state_dict"]
    if kind == "graph":
        # a file cannot make us allocate much more than the weights it brings (graph_codec checks on meta)
        weights = real_size(state)   # the bytes the file really brings, never the sizes it declares
        try:
            desc = json.loads(payload["architecture"])
            model = graph_codec.build_graph_module(desc, max_bytes=graph_codec.max_bytes_for(weights[0]),
                                                   input_size=recipe.get("input_size"), expected=state,
                                                   weights=weights)
        except graph_codec.WeightsMismatch as e:
            raise FileFormatError(f"The weights in {str(path)!r} do not fit its architecture: {e}.") from None
        except (graph_codec.NotDescribable, ValueError, RecursionError) as e:
            raise FileFormatError(f"{str(path)!r} describes a graph this cheapconv refuses to build "
                                  f"({str(e)[:300]}). The file is damaged or crafted; re-save the model with "
                                  "cheapconv.save(model, path).") from None
    elif kind == "recipe":
        model = rebuild_from_recipe(recipe, expected=state)
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
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FileFormatError(f"The weights in {str(path)!r} do not fit its architecture: "
                              f"{mismatch(state, model.state_dict()) or str(e).splitlines()[0]}.") from None
    model.cheapconv_recipe = recipe
    if recipe.get("plan") and getattr(model, "cheapconv_plan", None) is None:
        model.cheapconv_plan = _plan_of(recipe)   # what reconstruct and init_from_teacher pair sites by
    record = recipe.get("preprocessing")
    model.cheapconv_preprocessing = Preprocessing.from_dict(record) if record is not None else None
    model.cheapconv_stages = [t.stage for t in model.modules() if type(t).__name__ == "Tap"] or \
        recipe.get("plan", {}).get("stages", [])
    keep_through_copies(model)
    return model.to(map_location).eval()
