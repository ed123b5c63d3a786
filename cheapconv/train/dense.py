"""Dense prediction (segmentation) pieces of the objectives: which output entry is the prediction, per-pixel
cross-entropy with an ignore index, per-pixel knowledge distillation. :mod:`cheapconv.train.losses` combines
them with AT into the training objectives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError

__all__ = ["cross_entropy", "dense_kd_parts", "split_output"]


def split_output(output: Any) -> tuple[Tensor, Tensor | None]:
    """``(prediction, auxiliary prediction or None)`` of a model's output.

    A tensor is the prediction itself. A mapping holds it under ``"out"`` and an auxiliary head's logits,
    if any, under ``"aux"`` (torchvision's FCN / DeepLabV3 / LR-ASPP). A tuple or list holds the prediction
    first (the rest is not used: its meaning differs between models). Anything else is a
    :class:`~cheapconv.errors.UsageError`.
    """
    if isinstance(output, Tensor):
        return output, None
    if isinstance(output, Mapping):
        if "out" not in output:
            raise UsageError(f"The model returns a dict with the keys {', '.join(map(repr, output))}; cheapconv takes "
                             "the prediction from the key 'out' (and an auxiliary head's from 'aux'), as torchvision's "
                             "segmentation models return them. Wrap the model so that it returns {'out': logits}.")
        aux = output.get("aux")
        return output["out"], aux if isinstance(aux, Tensor) else None
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0], None
    raise UsageError(f"The model returns a {type(output).__name__}; cheapconv needs the logits as a tensor, a dict "
                     "with the key 'out', or a tuple whose first entry is the logits.")


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy in float32: per sample for B×K logits, per valid pixel for B×K×H×W logits and B×H×W
    masks (pixels labelled ``ignore_index`` are left out of the mean; the index applies to dense labels only,
    so that class 255 of a 1000-class classifier stays a class)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def dense_kd_parts(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, t: float,
                    reduction: str, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Per-pixel KD: the KL of the class distributions (temperature over the class axis) at each pixel,
    averaged over the pixels whose label is not ``ignore_index`` (``batchmean``), or additionally over the
    classes and times 2 (``reference``, the classifier formula read per pixel)."""
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    p_teacher = F.softmax(teacher_logits.detach().float() / t, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1)        # B×H×W
    valid = (labels != ignore_index).to(kl.dtype)
    kl_mean = (kl * valid).sum() / valid.sum().clamp(min=1.0)
    ce = F.cross_entropy(student_logits.float(), labels, ignore_index=ignore_index)
    if reduction == "batchmean":
        return ce, alpha * t * t * kl_mean
    return ce, 2.0 * alpha * t * t * kl_mean / student_logits.shape[1]
