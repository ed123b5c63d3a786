"""Resume checkpoints: everything a training run needs to continue exactly where it stopped.

A checkpoint is a ``torch.save`` of plain data, loadable with ``weights_only=True`` (no code from the file
runs), written atomically (temporary file beside the target, fsync, rename: an interrupted write never
leaves a broken checkpoint behind)::

    {"format": "cheapconv-checkpoint", "format_version": 1,
     "config_json": "<DistillConfig as JSON>", "epoch": int, "step": int, "batch_in_epoch": int,
     "model": student state dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": [per-rank RNG states], "world_size": int, "info_json": "<JSON: loss, teacher, last metrics>"}

It is not a model file: the trained model is written separately with :func:`cheapconv.save`, which stores
the architecture. A checkpoint holds the student's state dict only and is loaded into a student built the
same way.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from .errors import FileFormatError, UsageError
from .io import atomic_save

__all__ = ["CHECKPOINT_FORMAT", "capture_rng", "checkpoint_path_for", "load_checkpoint", "restore_rng",
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
    import sys

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
        import numpy as np

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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ``info_json`` is decoded into ``info``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"No checkpoint to resume from at {str(path)!r}. Start without --resume, or pass the "
                         "checkpoint written by the interrupted run (--checkpoint PATH).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
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
    payload["info"] = json.loads(payload.pop("info_json", "{}"))
    return payload
