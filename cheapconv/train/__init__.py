"""Training and distillation: the loop (and the run state around it), its config, losses, callbacks, checkpoints,
resume, distributed runs, metrics."""

from __future__ import annotations

from .callbacks import Callback, JsonlLogger, RichProgress, RunInfo, TensorBoardLogger
from .checkpoint import checkpoint_path_for, load_checkpoint, save_checkpoint
from .config import DistillConfig
from .loop import DistillResult, Interrupted, NonFiniteLossError, distill
from .losses import DistillationLoss, at_loss, attention_map, distillation_loss, kd_loss
from .metrics import evaluate

__all__ = [
    "Callback", "DistillConfig", "DistillResult", "DistillationLoss", "Interrupted", "JsonlLogger",
    "NonFiniteLossError", "RichProgress", "RunInfo", "TensorBoardLogger", "at_loss", "attention_map",
    "checkpoint_path_for", "distill", "distillation_loss", "evaluate", "kd_loss", "load_checkpoint",
    "save_checkpoint",
]
