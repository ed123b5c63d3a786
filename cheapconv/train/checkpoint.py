"""Resume checkpoints: everything a training run needs to continue exactly where it stopped.

A checkpoint is a ``torch.save`` of plain data, loadable with ``weights_only=True`` (no code from the file
runs), written atomically (temporary file beside the target, fsync, rename: an interrupted write never
leaves a broken checkpoint behind)::

    {"format": "cheapconv-checkpoint", "format_version": 1,
     "config_json": "<DistillConfig as JSON>", "epoch": int, "step": int, "batch_in_epoch": int,
     "model": student state dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": [per-rank RNG states], "world_size": int,
     "info_json": "<JSON: loss, last metrics, finished, data and teacher fingerprints, previous_step>"}

``info`` also fingerprints what the run trained on (:func:`data_fingerprint`, :func:`model_fingerprint` of the
teacher), so that a resume with other data or another teacher is refused, and says whether the run had
finished (``finished``: the final checkpoint, written after the last step and the last validation).

The checkpoint written before the current one is kept beside it as ``NAME.prev.ckpt`` (a hard link where the
file system allows, so no extra space): when a run stops on a non-finite loss, the current checkpoint may
already hold diverging weights, and the run goes back to the previous one (:func:`restore_previous`).

It is not a model file: the trained model is written separately with :func:`cheapconv.save`, which stores
the architecture. A checkpoint holds the student's state dict only and is loaded into a student built the
same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError, UsageError
from ..store.files import atomic_save, check_writable

__all__ = ["CHECKPOINT_FORMAT", "capture_rng", "check_run_paths", "checkpoint_path_for", "data_fingerprint",
           "discard_previous", "fingerprint_differences", "keep_previous", "load_checkpoint", "model_fingerprint",
           "non_finite_entries", "previous_checkpoint", "refuse_fresh_start", "restore_previous", "restore_rng",
           "save_checkpoint"]

CHECKPOINT_FORMAT = "cheapconv-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_path_for(output: str | Path) -> Path:
    """The conventional checkpoint beside a model file: ``trained.pt`` -> ``trained.ckpt``."""
    output = Path(output)
    return output.with_suffix(".ckpt") if output.suffix != ".ckpt" else output.with_suffix(".resume.ckpt")


def capture_rng() -> dict[str, Any]:
    """RNG states of this process as plain data: torch (CPU and every CUDA device), Python, NumPy if loaded."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _plain(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())

    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np  # not a dependency: only a state captured with NumPy loaded holds its RNG

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _plain(obj: Any) -> Any:
    """Python's RNG state as nested lists (weights_only-safe, and JSON-like)."""
    return [_plain(o) for o in obj] if isinstance(obj, tuple) else obj


def _python_state(obj: Any) -> Any:
    return tuple(_python_state(o) for o in obj) if isinstance(obj, list) else obj


def save_checkpoint(path: str | Path, *, config_json: str, epoch: int, step: int, batch_in_epoch: int,
                    model: dict, optimizer: dict, scheduler: dict, scaler: dict | None, rng: list[dict],
                    info: dict | None = None) -> Path:
    """Write a checkpoint atomically; returns its path. See the module docstring for the layout."""
    payload = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "config_json": config_json,
        "epoch": int(epoch), "step": int(step), "batch_in_epoch": int(batch_in_epoch),
        "model": {k: v.detach().cpu() for k, v in model.items()},
        "optimizer": _to_cpu(optimizer), "scheduler": scheduler, "scaler": scaler, "rng": rng,
        "world_size": len(rng), "info_json": json.dumps(info or {}),
    }
    path = Path(path)
    atomic_save(payload, path)
    return path


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ``info_json`` is decoded into ``info``. ``mmap=True``
    maps the tensors instead of reading them (cheap when only the config and ``info`` are needed)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"No checkpoint to resume from at {str(path)!r}. Start without --resume, or pass the "
                         "checkpoint written by the interrupted run (--checkpoint PATH).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - truncated, foreign, or needs unpickling: all unusable here
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FileFormatError(f"Cannot read the checkpoint {str(path)!r} ({type(e).__name__}: {first}). It is "
                              "not a cheapconv checkpoint, or it is truncated.") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        hint = (" It is a cheapconv model file; resume needs the .ckpt checkpoint written next to it."
                if isinstance(payload, dict) and payload.get("format") == "cheapconv" else "")
        raise FileFormatError(f"{str(path)!r} is not a cheapconv training checkpoint.{hint}")
    if payload.get("format_version", 0) > CHECKPOINT_VERSION:
        raise FileFormatError(f"{str(path)!r} was written by a newer cheapconv; upgrade to resume from it.")
    _check_fields(payload, path)
    return payload


#: the largest step a checkpoint may record (2^40 steps is centuries of training)
MAX_CHECKPOINT_STEP = 1 << 40


def _check_fields(payload: dict[str, Any], path: Path) -> None:
    """Every field a resume reads has the type and range cheapconv writes; ``info_json`` is decoded into
    ``info``. A hand-edited or foreign checkpoint (a negative or absurd ``step``) is a FileFormatError."""
    def bad(what: str) -> FileFormatError:
        return FileFormatError(f"The checkpoint {str(path)!r} is damaged or was edited: {what}. Resume from the "
                               "checkpoint the run wrote, or start over with --overwrite.")

    step = payload.get("step")
    if type(step) is not int or not 0 <= step <= MAX_CHECKPOINT_STEP:
        raise bad(f"its step is {step!r}, not a whole number from 0 to {MAX_CHECKPOINT_STEP:,}")
    for key, kind in (("config_json", str), ("model", dict), ("optimizer", dict), ("scheduler", dict),
                      ("rng", list)):
        if key in payload and not isinstance(payload[key], kind):
            raise bad(f"its {key!r} is a {type(payload[key]).__name__}, not a {kind.__name__}")
    info_json = payload.pop("info_json", "{}")
    try:
        info = json.loads(info_json) if isinstance(info_json, str) else None
    except (ValueError, RecursionError):
        info = None
    if not isinstance(info, dict):
        raise bad("its info_json is not a JSON object")
    payload["info"] = info


# ------------------------------------------------------------------------------------------ run safety


def check_run_paths(checkpoint: str | Path | None, metrics_file: str | Path | None) -> None:
    """Fail before any work when the checkpoint or the metrics file could not be written (a folder, or a
    missing or read-only folder), instead of at the first save, many steps later."""
    for role, option, example, path in (("checkpoint", "--checkpoint", "run.ckpt", checkpoint),
                                        ("metrics file", "metrics_file", "run.metrics.jsonl", metrics_file)):
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise UsageError(f"The {role} path {str(path)!r} is a directory; the {role} is a file: give a file "
                             f"name such as {str(path / example)!r} ({option}).")
        try:
            check_writable(path)
        except UsageError as e:
            raise UsageError(f"Cannot write the {role} {str(path)!r}: {e}") from None


def refuse_fresh_start(path: str | Path) -> None:
    """A new run (no resume, no overwrite) must not destroy an unfinished run's checkpoint and metrics.

    Nothing happens when ``path`` does not exist or holds a *finished* run's checkpoint (its trained model was
    written; starting again is a rerun). Otherwise :class:`~cheapconv.errors.UsageError` says to resume or
    to overwrite explicitly.
    """
    path = Path(path)
    if not path.exists():
        return
    try:
        payload = load_checkpoint(path, mmap=True)
    except (FileFormatError, UsageError):
        raise UsageError(f"{str(path)!r} already exists and is not a readable training checkpoint; a new run "
                         "would overwrite it. Choose another checkpoint path (--checkpoint PATH), or pass "
                         "--overwrite (overwrite=True) to replace it.") from None
    info = payload.get("info") or {}
    if info.get("finished"):
        return
    total = info.get("total_steps")
    of = f" of {total}" if total else ""
    raise UsageError(f"There is already a checkpoint of an unfinished run at {str(path)!r} (step "
                     f"{payload.get('step')}{of}). Starting a new run would overwrite it and its metrics. Pass "
                     "--resume (resume=True) to continue that run, or --overwrite (overwrite=True) to discard it "
                     "and start over.")


def previous_checkpoint(path: str | Path) -> Path:
    """Where the checkpoint before the current one is kept: ``run.ckpt`` -> ``run.prev.ckpt``."""
    path = Path(path)
    return path.with_name(f"{path.stem if path.suffix == '.ckpt' else path.name}.prev.ckpt")


def keep_previous(path: str | Path) -> None:
    """Before a new checkpoint replaces ``path``, keep the current one as :func:`previous_checkpoint`."""
    path, prev = Path(path), previous_checkpoint(path)
    if not path.is_file():
        return
    tmp = prev.with_name(f".{prev.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)          # the new checkpoint is renamed over path, so the old file lives on here
    except OSError:
        shutil.copy2(path, tmp)     # no hard links on this file system
    os.replace(tmp, prev)


def restore_previous(path: str | Path) -> bool:
    """Put the previous checkpoint back in place of the current one; False when there is none."""
    prev = previous_checkpoint(path)
    if not prev.is_file():
        return False
    os.replace(prev, path)
    return True


def discard_previous(path: str | Path) -> None:
    """Remove the previous checkpoint kept beside ``path`` (a finished run needs no going back)."""
    previous_checkpoint(path).unlink(missing_ok=True)


def non_finite_entries(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf (one host sync)."""
    names = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    ok = torch.stack([torch.isfinite(state[k]).all() for k in names]).cpu().tolist()
    return [k for k, good in zip(names, ok, strict=True) if not good]


def data_fingerprint(data: Any) -> dict[str, Any]:
    """What identifies a training set cheaply: name, sizes and classes (``data.info``), the augmentation
    strength where it is not the standard one, the number of samples, and a digest of the labels and a checksum
    of the images where the dataset keeps them in memory (or of the file list for image folders)."""
    fp: dict[str, Any] = {"size": len(data)}
    info = getattr(data, "info", None)
    for key in ("name", "num_classes", "channels", "image_size"):
        if hasattr(info, key):
            fp[key] = getattr(info, key)
    augmentation = getattr(data, "augmentation", None)
    if augmentation not in (None, "standard"):   # recorded when not the default, so older checkpoints still match
        fp["augmentation"] = augmentation
    digest = hashlib.sha256()
    found = False
    for attr in ("labels", "targets", "images", "samples"):
        value = getattr(data, attr, None)
        if torch.is_tensor(value):
            found = True
            if value.is_floating_point() or value.numel() > 1 << 20:   # images: a checksum, not a full hash
                digest.update(f"{attr}:{tuple(value.shape)}:{_checksums([value])[0]:.10g}".encode())
            else:
                digest.update(f"{attr}:{tuple(value.shape)}:".encode() + value.cpu().numpy().tobytes())
        elif isinstance(value, list) and value:
            found = True
            digest.update(f"{attr}:{len(value)}:{value[:64]!r}:{value[-64:]!r}".encode())
    if found:
        fp["content"] = digest.hexdigest()[:16]
    return fp


def model_fingerprint(model: torch.nn.Module | None) -> dict[str, Any] | None:
    """What identifies a (teacher) model cheaply: its recipe's source and policy, its class, its parameter
    count, and a digest of the state dict's names, shapes and per-tensor sums."""
    if model is None:
        return None
    recipe = getattr(model, "cheapconv_recipe", None) or {}
    state = model.state_dict()
    digest = hashlib.sha256()
    named = [(k, v) for k, v in state.items() if torch.is_tensor(v)]
    for (name, v), total in zip(named, _checksums([v for _, v in named]), strict=True):
        digest.update(f"{name}:{tuple(v.shape)}:{total:.10g};".encode())
    fp: dict[str, Any] = {"class": type(model).__name__,
                          "params": sum(p.numel() for p in model.parameters()),
                          "weights": digest.hexdigest()[:16]}
    if recipe.get("source"):
        fp["source"] = recipe["source"]
    if recipe.get("policy"):
        fp["policy"] = str(recipe["policy"])
    return fp


def _checksums(tensors: list[torch.Tensor], limit: int = 1 << 20) -> list[float]:
    """Per-tensor sums in float64 (one host transfer); a tensor larger than ``limit`` elements is summed over
    an evenly strided sample of about ``limit`` of them, which keeps this cheap for a large dataset."""
    if not tensors:
        return []
    sums = []
    for t in tensors:
        flat = t.detach().reshape(-1)
        if flat.numel() > limit:
            flat = flat[:: flat.numel() // limit + 1]
        sums.append(flat.double().sum())
    return torch.stack(sums).cpu().tolist()


def _describe_data(fp: dict[str, Any]) -> str:
    name = fp.get("name", "a dataset")
    return f"{name}, {fp.get('size')} samples"


def _describe_model(fp: dict[str, Any] | None) -> str:
    if fp is None:
        return "none (training from scratch)"
    what = fp.get("source") or fp.get("class")
    policy = f" cheapened with {fp['policy']!r}" if fp.get("policy") else ""
    return f"{what}{policy}, {fp.get('params'):,} parameters, weights {fp.get('weights')}"


def fingerprint_differences(info: dict[str, Any], data_fp: dict[str, Any] | None,
                            teacher_fp: dict[str, Any] | None) -> list[str]:
    """What differs between a checkpoint's recorded data/teacher and this run's (checkpoints written before
    fingerprints were recorded compare as equal)."""
    problems = []
    saved = info.get("data")
    if saved is not None and data_fp is not None and saved != data_fp:
        if _describe_data(saved) != _describe_data(data_fp):
            problems.append(f"the training data differs (checkpoint: {_describe_data(saved)}; now: "
                            f"{_describe_data(data_fp)})")
        else:
            keys = sorted(k for k in set(saved) | set(data_fp) if saved.get(k) != data_fp.get(k))
            problems.append(f"the training data differs ({_describe_data(data_fp)} in both, but "
                            f"{', '.join(keys)} differ: other images, labels or preprocessing)")
    if "teacher" in info and info["teacher"] != teacher_fp:
        problems.append(f"the teacher differs (checkpoint: {_describe_model(info['teacher'])}; now: "
                        f"{_describe_model(teacher_fp)})")
    return problems
