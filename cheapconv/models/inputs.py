"""The one rule for a model's input size: what cheapconv feeds a model when nobody says otherwise.

Precedence, everywhere (cheapen, plan, profile, search, train, the file format): an explicit size from the
caller; else the size the model declares (``default_input_size`` on built-in WRNs, timm's
``pretrained_cfg["input_size"]``); else ImageNet's 224×224 with the first conv's input channels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["default_input_size", "example_input_for", "resolve_input_size"]


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The model's native (C, H, W): declared by the model, timm's pretrained config, or ImageNet's 224."""
    size = getattr(model, "default_input_size", None)
    if size is not None:
        return tuple(size)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return tuple(cfg["input_size"])
    in_chans = 3
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            in_chans = m.in_channels
            break
    return (in_chans, 224, 224)


def resolve_input_size(model: nn.Module, input_size: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """``input_size`` (C, H, W) when given, else :func:`default_input_size` of ``model``."""
    return tuple(input_size) if input_size else default_input_size(model)


def example_input_for(model: nn.Module, input_size: tuple[int, ...] | None = None) -> torch.Tensor:
    """A batch-1 zero input at ``input_size`` (C, H, W) or the model's native size."""
    size = resolve_input_size(model, input_size)
    param = next(iter(model.parameters()), None)
    kw = dict(device=param.device, dtype=param.dtype) if param is not None else {}
    if param is not None and not param.dtype.is_floating_point:
        kw["dtype"] = torch.float32
    return torch.zeros((1, *size), **kw)
