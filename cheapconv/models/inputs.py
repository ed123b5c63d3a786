"""The one rule for a model's input size: what cheapconv feeds a model when nobody says otherwise.

Precedence, everywhere (cheapen, plan, profile, search, train, the file format): an explicit size from the
caller; else the size the model declares (its preprocessing record, ``cheapconv_preprocessing``: what it
was trained at or its pretrained weights expect; ``default_input_size`` on built-in WRNs; timm's
``pretrained_cfg["input_size"]``); else ImageNet's 224×224 with the first conv's input channels.

Measuring and exporting a saved student add one step after the explicit size (``recipe=True``,
:func:`input_shape_of`): the size its preprocessing record says it is fed at, else the size its recipe records
(the one it was cheapened at), which a zoo teacher's declared size need not match.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from .preprocessing import preprocessing_of

__all__ = ["as_example_batch", "default_input_size", "example_input_for", "input_shape_of", "recipe_input_size",
           "resolve_input_size"]


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The model's native (C, H, W): the size its preprocessing record says it is fed at
    (``cheapconv_preprocessing``: what it was trained at, or its pretrained weights' size), declared by the
    model, timm's pretrained config, or ImageNet's 224."""
    record = preprocessing_of(model)
    if record is not None:
        return record.input_size
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


def recipe_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """The (C, H, W) a cheapconv student's recipe records (what it was cheapened at), or None."""
    recipe = getattr(model, "cheapconv_recipe", None) or {}
    return tuple(recipe["input_size"]) if recipe.get("input_size") else None


def resolve_input_size(model: nn.Module, input_size: tuple[int, ...] | None = None, *,
                       recipe: bool = False) -> tuple[int, ...]:
    """``input_size`` (C, H, W) when given, else the size of the model's preprocessing record, else (with
    ``recipe``) the student's :func:`recipe_input_size`, else :func:`default_input_size` of ``model``."""
    if input_size:
        return tuple(input_size)
    record = preprocessing_of(model)
    if record is not None:   # what it was trained at: wins over the size it was cheapened at
        return record.input_size
    recorded = recipe_input_size(model) if recipe else None
    return recorded or tuple(default_input_size(model))


def input_shape_of(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """(C, H, W) to measure or export ``model`` at: ``input_shape`` (a leading batch dimension is dropped),
    else the student's recipe, else the model's native size. A shape that is not three positive sizes is
    the caller's mistake (:class:`~cheapconv.errors.UsageError`)."""
    if input_shape is None:
        return resolve_input_size(model, recipe=True)
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"input_shape must be (C, H, W) such as (3, 224, 224); got {tuple(input_shape)}.")
    return shape


def example_input_for(model: nn.Module, input_size: tuple[int, ...] | None = None, *,
                      device: str | torch.device | None = None) -> torch.Tensor:
    """A batch-1 zero input at ``input_size`` (C, H, W) or the model's native size, on the model's device or
    ``device`` (``"meta"`` for a caller that reads only its shape: nothing is allocated, whatever the size)."""
    size = resolve_input_size(model, input_size)
    param = next(iter(model.parameters()), None)
    kw = dict(device=param.device, dtype=param.dtype) if param is not None else {}
    if param is not None and not param.dtype.is_floating_point:
        kw["dtype"] = torch.float32
    if device is not None:
        kw["device"] = device
    return torch.zeros((1, *size), **kw)


def as_example_batch(example_input) -> torch.Tensor:
    """``example_input`` as one N×C×H×W tensor: a batch passes through; a C×H×W image, or a list of them (what
    torchvision's detectors take, ``model([image])``), becomes a batch. Only its shape is used, to record the
    convs' sizes; images of different sizes are measured at the first one's (a detector resizes them anyway).

    >>> as_example_batch([torch.zeros(3, 96, 128)]).shape
    torch.Size([1, 3, 96, 128])
    """
    if isinstance(example_input, (list, tuple)):
        images = list(example_input)
        if not images or not all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in images):
            raise UsageError("example_input must be a tensor (N×C×H×W or C×H×W) or a non-empty list of C×H×W "
                             "image tensors, as torchvision's detectors take them.")
        first = images[0]
        return first.new_zeros((len(images), *first.shape))
    if not isinstance(example_input, torch.Tensor):
        raise UsageError(f"example_input must be a tensor or a list of image tensors, not "
                         f"{type(example_input).__name__}.")
    if example_input.dim() == 3:
        return example_input.unsqueeze(0)
    return example_input
