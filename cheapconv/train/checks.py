"""First-batch checks of a training run: data against models, teacher taps against student taps.

Both run once, on the first batch and before any weight changes, and turn what would otherwise be a shape
error deep inside a forward pass (or a silently wrong loss) into a :class:`~cheapconv.errors.UsageError`
that says how to fix it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import UsageError
from ..surgery.taps import find_stages, taps_of

__all__ = ["check_inputs", "check_taps"]


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def check_inputs(x: Tensor, y: Tensor, student: nn.Module, teacher: nn.Module | None, data: Any) -> None:
    """Channel and class-count mismatches between data and models, as errors that say how to fix them."""
    for role, m in (("student", student), ("teacher", teacher)):
        conv = _first_conv(m) if m is not None else None
        if conv is not None and conv.in_channels != x.shape[1]:
            raise UsageError(
                f"The {role} expects {conv.in_channels}-channel images but the data has {x.shape[1]} channel(s). "
                f"For grayscale data and an RGB model, load the data with in_chans={conv.in_channels} "
                f"(--in-chans {conv.in_channels}), which repeats the channel; or build the model for "
                f"{x.shape[1]}-channel input (e.g. create_model('wrn_16_2', in_chans={x.shape[1]})).")
    info = getattr(data, "info", None)
    head = next((m for m in reversed(list(student.modules())) if isinstance(m, nn.Linear)), None)
    classes = getattr(info, "num_classes", None)
    if head is not None and classes is not None and head.out_features != classes:
        raise UsageError(f"The student has {head.out_features} outputs but the dataset has {classes} classes; "
                         f"build it with num_classes={classes} (--num-classes {classes}).")
    if head is not None and int(y.max()) >= head.out_features:
        raise UsageError(f"A label ({int(y.max())}) is out of range for the student's {head.out_features} outputs.")


def _stage_names(model: nn.Module | None) -> list[str]:
    if model is None:
        return []
    taps = taps_of(model)
    if taps:
        return [t.stage for t in taps]
    inner = getattr(model, "module", model)
    try:
        return find_stages(inner)
    except Exception:  # noqa: BLE001 - only used to name stages in an error message
        return []


def check_taps(student: nn.Module, teacher: nn.Module | None, s_taps: list[Tensor], t_taps: list[Tensor]) -> None:
    """Teacher and student stage outputs must pair up by position with equal spatial sizes."""
    sizes_s = [tuple(a.shape[-2:]) for a in s_taps]
    sizes_t = [tuple(a.shape[-2:]) for a in t_taps]
    if len(s_taps) == len(t_taps) and sizes_s == sizes_t and s_taps:
        return

    def describe(names: list[str], sizes: list[tuple]) -> str:
        names = names if len(names) == len(sizes) else [f"#{i}" for i in range(len(sizes))]
        return ", ".join(f"{n} ({'×'.join(map(str, s))})" for n, s in zip(names, sizes, strict=True)) or "none"

    raise UsageError(
        "Attention transfer matches teacher and student stage outputs by position, and they do not match: "
        f"student {len(s_taps)} tap(s): {describe(_stage_names(student), sizes_s)}; teacher {len(t_taps)} "
        f"tap(s): {describe(_stage_names(teacher), sizes_t)}. Both need the same number of stages with the "
        "same spatial sizes (channels may differ): cheapen the teacher itself to get a matching student, "
        "feed both the same image size, or use the 'kd' loss, which needs no taps.")
