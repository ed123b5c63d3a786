"""Rebuilding a model from the recipe in a file, within limits the file cannot move.

A recipe names a zoo model (``wrn_40_2``, ``torchvision:resnet34``, ``timm:resnet50``), a few constructor
keywords and a policy. Loading a ``recipe``-kind file, or profiling a student against its teacher, builds
that model, so a crafted recipe must not be able to make us read other files (a path as the source, a
``pretrained`` or ``checkpoint_path`` keyword), reach the network, or allocate without bound
(``wrn_16_1000``: 170 billion parameters). So:

* the source must be a zoo *name*, never a path; only the keywords in :data:`SOURCE_KWARGS` are accepted,
  with bounded values; the input size is bounded;
* every source (WRN, torchvision, timm, detectors) is first built on the meta device (no memory); there,
  ``num_classes`` may not exceed the largest dimension of the file's weights, the teacher may not take more
  than :func:`teacher_budget` (64 × the bytes the file's weights really hold + 256 MiB, and never more than
  :data:`MAX_TEACHER_BYTES`), and the student cheapened from it must have exactly the tensors the file
  holds. Only then is anything built for real. A source that cannot be built on the meta device is refused.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..counting import materialising_meta_models
from ..errors import FileFormatError
from ..models.weights import head_keys
from ..models.zoo import create_model
from ..surgery.rewrite import cheapen
from .file_checks import real_size
from .graph_limits import tensor_bytes

__all__ = ["MAX_TEACHER_BYTES", "SOURCE_KWARGS", "check_recipe", "rebuild_from_recipe", "recipe_for_classes",
           "teacher_budget", "teacher_for_student", "teacher_from_recipe"]

#: the largest model a recipe may name (8 GiB of parameters and buffers)
MAX_TEACHER_BYTES = 8 * 2**30
#: constructor keywords a recipe may pass to the zoo, and the values each may take
SOURCE_KWARGS = {"num_classes": (int, 1, 100_000), "in_chans": (int, 1, 64), "drop_rate": (float, 0.0, 1.0)}
_ZOO_NAME = re.compile(r"(seg)?wrn_\d{1,3}_\d{1,3}|torchvision:[A-Za-z0-9_]{1,80}|timm:[A-Za-z0-9_.]{1,120}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence cheapen's warnings while rebuilding: they were shown when the student was made (the fallback
    to module replacement, say), and a rebuild on every save and load would repeat them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _refuse(what: str) -> FileFormatError:
    return FileFormatError(f"The file's recipe {what}, which cheapconv refuses to build. The file is damaged or "
                           "crafted; re-save the model with cheapconv.save(model, path).")


def _source(recipe: dict) -> tuple[str, dict[str, Any]]:
    source = recipe.get("source")
    if not isinstance(source, str) or not _ZOO_NAME.fullmatch(source):
        raise _refuse(f"names the source {str(source)[:80]!r}, which is not a zoo model name")
    kwargs = recipe.get("source_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _refuse("has malformed constructor arguments")
    for key, value in kwargs.items():
        kind, low, high = SOURCE_KWARGS.get(key, (None, 0, 0))
        if kind is None or isinstance(value, bool) or not isinstance(value, int | float) or \
                not low <= value <= high or (kind is int and not isinstance(value, int)):
            raise _refuse(f"passes {str(key)[:40]}={str(value)[:40]} to the model (allowed: "
                          + ", ".join(f"{k} in [{lo}, {hi}]" for k, (_, lo, hi) in SOURCE_KWARGS.items()) + ")")
    return source, dict(kwargs)


def _input_size(recipe: dict) -> tuple[int, int, int] | None:
    size = recipe.get("input_size")
    if size is None:
        return None
    if not isinstance(size, list) or len(size) != 3 or \
            not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d for d in size) or \
            size[0] > 64 or max(size[1:]) > 4096 or math.prod(size) > 2**26:
        raise _refuse(f"has the input size {str(size)[:60]} (at most 64 channels and 4096×4096 pixels)")
    return tuple(size)


def teacher_budget(weight_bytes: int) -> int:
    """The most a teacher rebuilt for a file with ``weight_bytes`` of real weights may take: 64 × those bytes
    + 256 MiB (a cheapened student is rarely 10× smaller than its teacher), at most :data:`MAX_TEACHER_BYTES`."""
    return min(MAX_TEACHER_BYTES, 64 * weight_bytes + 256 * 2**20)


def _max_classes(state: dict[str, torch.Tensor]) -> int:
    """The most classes a file's weights can hold: a head of N classes has a dimension of at least N."""
    return max((d for t in state.values() for d in t.shape), default=1)


def _meta_teacher(recipe: dict, *, max_bytes: int = MAX_TEACHER_BYTES, max_classes: int | None = None) -> nn.Module:
    """The recipe's teacher built on the meta device (no memory), after the checks of the module docstring."""
    source, kwargs = _source(recipe)
    classes = kwargs.get("num_classes")
    if max_classes is not None and classes is not None and classes > max_classes:
        raise _refuse(f"builds {source!r} with {classes:,} classes, more than the file's weights can hold "
                      f"(their largest dimension is {max_classes:,})")
    try:
        with torch.device("meta"), _quiet():
            meta = create_model(source, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever stops a meta build, nothing real is built instead
        raise _refuse(f"names {source!r}, which cannot be built on the meta device to be checked before it is "
                      f"built for real ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
                      ) from None
    tensors = [*meta.parameters(), *meta.buffers()]
    if not all(t.is_meta for t in tensors):
        raise _refuse(f"names {source!r}, whose constructor allocates real memory even on the meta device")
    size = tensor_bytes(tensors)
    if size > max_bytes:
        raise _refuse(f"builds {source!r} with {size / 2**20:,.0f} MiB of parameters (the limit for this file "
                      f"is {max_bytes / 2**20:,.0f} MiB: 64 × the weights it holds + 256 MiB, at most "
                      f"{MAX_TEACHER_BYTES / 2**30:.0f} GiB)")
    return meta


def teacher_from_recipe(recipe: dict, *, max_bytes: int = MAX_TEACHER_BYTES,
                        max_classes: int | None = None) -> nn.Module:
    """The (randomly initialised) zoo model a recipe names, after the checks in the module docstring.

    It is built on the meta device first and checked against ``max_bytes`` (callers with a file pass
    :func:`teacher_budget` of its weights) and ``max_classes`` (the largest dimension of the file's weights);
    only then is it built for real.
    """
    _meta_teacher(recipe, max_bytes=max_bytes, max_classes=max_classes)
    source, kwargs = _source(recipe)
    return create_model(source, **kwargs)


def teacher_for_student(recipe: dict, student: nn.Module) -> nn.Module:
    """:func:`teacher_from_recipe` for a loaded student (``cheapconv profile`` times its blocks against the
    teacher its recipe names), bounded by the student's weights: its tensors were built by :func:`load` within
    the file's caps, so their sizes are real."""
    state = student.state_dict()
    return teacher_from_recipe(recipe, max_bytes=teacher_budget(tensor_bytes(state.values())),
                               max_classes=_max_classes(state))


def recipe_for_classes(recipe: dict, state: dict[str, torch.Tensor]) -> dict | None:
    """``recipe`` with the number of classes of the classifier head in ``state``, or None where the head's size
    is not what differs from the recipe.

    A model whose head was swapped after it was built by name (timm's ``reset_classifier(10)``, ``model.fc =
    nn.Linear(512, 10)``) still carries its source's keywords; built with the head's class count instead, it
    may have exactly its tensors again (:func:`check_recipe` decides), and save as a recipe rather than a pickle.
    """
    try:
        teacher = _meta_teacher(recipe)   # only the names and shapes are needed
        keys = [k for k in head_keys(teacher) if k in state and state[k].dim() >= 1]
    except Exception:  # noqa: BLE001 - a recipe that does not build has no head to read
        return None
    if not keys:
        return None
    classes = int(state[keys[0]].shape[0])
    kwargs = dict(recipe.get("source_kwargs") or {})
    if kwargs.get("num_classes") == classes or teacher.state_dict()[keys[0]].shape[0] == classes:
        return None
    return {**recipe, "source_kwargs": {**kwargs, "num_classes": classes}}


def check_recipe(recipe: dict, expected: dict[str, torch.Tensor] | None = None) -> None:
    """Raise :class:`FileFormatError` unless :func:`rebuild_from_recipe` would build ``recipe`` within the
    limits (and, with ``expected``, with exactly those tensor names and shapes). Nothing is built for real.
    ``expected`` is a model's own state dict here (saving), so its declared sizes are its real ones."""
    _checked_recipe(recipe, expected, None if expected is None else tensor_bytes(expected.values()))


def rebuild_from_recipe(recipe: dict, expected: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The model a recipe describes: its teacher, cheapened with its policy (random weights).

    ``expected`` (a state dict) is the file's weights: the teacher is bounded by the bytes they really hold
    (:func:`teacher_budget`) and the student rebuilt on the meta device must have exactly these tensor names
    and shapes before anything real is built.
    """
    policy, size, leaves = _checked_recipe(recipe, expected, None if expected is None else real_size(expected)[0])
    source, kwargs = _source(recipe)
    teacher = create_model(source, **kwargs)
    if not policy:
        return teacher
    with _quiet():
        return cheapen(teacher, policy, input_size=size, leaf_modules=leaves)


def _checked_recipe(recipe: dict, expected: dict[str, torch.Tensor] | None, weight_bytes: int | None):
    """The recipe's cheapen arguments, after every check, all on the meta device (the student is cheapened
    from the meta teacher and compared with ``expected``, whose real size is ``weight_bytes``)."""
    _source(recipe)
    policy = recipe.get("policy")
    if policy is not None and (not isinstance(policy, str) or len(policy) > 20_000):
        raise _refuse("has a malformed policy")
    leaves = recipe.get("leaf_modules") or []
    if not isinstance(leaves, list) or len(leaves) > 100 or \
            not all(isinstance(x, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,200}", x) for x in leaves):
        raise _refuse("names malformed leaf modules")
    size = _input_size(recipe)
    if policy and size is None:
        raise _refuse("has a policy but no input size")
    if expected is None:
        teacher = _meta_teacher(recipe)
    else:
        teacher = _meta_teacher(recipe, max_bytes=teacher_budget(weight_bytes), max_classes=_max_classes(expected))
    if not policy:
        student = teacher
    else:  # cheapened on the meta teacher: a policy cannot make us allocate without bound
        # (a teacher that cannot run on meta tensors, such as a detector, records its shapes on a zero-filled
        # copy: bounded by the teacher's budget, checked above)
        with materialising_meta_models(tensor_bytes([*teacher.parameters(), *teacher.buffers()])), _quiet():
            student = cheapen(teacher, policy, input_size=size, leaf_modules=leaves)
    if expected is not None:
        want = {k: tuple(v.shape) for k, v in expected.items()}
        if {k: tuple(v.shape) for k, v in student.state_dict().items()} != want:
            raise _refuse("builds a model whose tensors differ from the weights in the file")
    return policy, size, leaves
