"""Training and distillation: the loop (and the run state around it), its config, losses, callbacks, checkpoints,
resume, distributed runs, metrics.

The names below are imported from their modules when first used (PEP 562, as in :mod:`cheapconv`), so that
importing :mod:`cheapconv.train.config` and :mod:`cheapconv.train.objectives`, which load no torch, stays
cheap: the command line makes its options from them.
"""

from __future__ import annotations

import importlib
import importlib.util

#: public name -> the module of this package that defines it
_EXPORTS = {
    "Callback": "callbacks", "JsonlLogger": "callbacks", "RichProgress": "callbacks", "RunInfo": "callbacks",
    "TensorBoardLogger": "callbacks",
    "checkpoint_path_for": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "DistillConfig": "config",
    "DistillResult": "loop", "Interrupted": "loop", "NonFiniteLossError": "loop", "distill": "loop",
    "DistillationLoss": "losses", "at_loss": "losses", "attention_map": "losses", "distillation_loss": "losses",
    "kd_loss": "losses",
    "LOSSES": "objectives", "Objective": "objectives",
    "Phase": "phases", "erfnet_phases": "phases", "phase_checkpoint": "phases", "run_phases": "phases",
    "evaluate": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import a public name from its module on first use (and keep it here); a submodule on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
