"""A local weights file into a built model: by name, by position on request, with a new classifier head.

:func:`load_weights_file` is what ``create_model(NAME, pretrained=PATH)`` and ``--weights PATH`` do:

* every tensor of the file goes to the model tensor of the same name and shape; any other difference is a
  :class:`~cheapconv.errors.UsageError` naming the keys and both shapes (a few, then "and N more");
* only the classifier head (:func:`head_keys`: timm's ``pretrained_cfg['classifier']``, torchvision's ``fc`` /
  ``classifier`` / ``heads`` / ``head``, the built-in models' ``fc`` / ``classifier``) may differ in shape, and
  only with ``new_head=True`` (``num_classes`` given): then its tensors are not loaded and the model keeps the new
  head it was built with, untrained;
* a file whose names differ from the model's (another implementation of the same network) loads only with
  ``by_position=True``: its tensors are paired with the model's in order (:func:`pair_by_position`), each pair
  with the same shape (the head's may differ, as above). Without it, the error says when that would work.

What was done is returned as a :class:`WeightsRecord` (the file's name and SHA-256, the pairs, the replaced
head), which ``create_model`` attaches to the model as ``cheapconv_weights`` and :func:`cheapconv.save` records
in the recipe (never the path: a later load must not read other files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["WeightsRecord", "head_keys", "load_weights_file", "mismatch", "pair_by_position", "read_state_dict"]

#: how many keys an error or note names before "and N more"
_SHOWN = 3
#: module names that hold the classifier head of torchvision and the built-in models, in order of preference
_HEAD_NAMES = ("fc", "classifier", "heads", "head")


@dataclass
class WeightsRecord:
    """What :func:`load_weights_file` did: ``file`` (the name, without its folder), ``sha256``, whether the
    tensors were paired ``by_position`` (and the first ``pairs``, file key -> model key, of ``paired`` in all),
    and ``new_head``: model key -> (shape in the file, shape in the model) for a replaced classifier head."""

    file: str
    sha256: str
    by_position: bool = False
    paired: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)
    new_head: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)

    def to_recipe(self) -> dict:
        """The JSON-able record kept in a saved file's recipe (informative only: loading never reads it)."""
        out: dict = {"file": self.file, "sha256": self.sha256, "loaded": "by position" if self.by_position else
                     "by name"}
        if self.new_head:
            out["new_head"] = {k: {"file": a, "model": b} for k, (a, b) in self.new_head.items()}
        return out

    def notes(self) -> list[str]:
        """One line per thing the user should know: the pairing by position, the replaced head."""
        lines = []
        if self.by_position:
            shown = ", ".join(f"{a} -> {b}" for a, b in self.pairs[:_SHOWN])
            more = f" and {self.paired - len(self.pairs[:_SHOWN])} more" if self.paired > _SHOWN else ""
            lines.append(f"loaded the {self.paired} tensors of {self.file} by position (their names differ from "
                         f"the model's): {shown}{more}")
        if self.new_head:
            shapes = "; ".join(f"{k} {_shape(a)} -> {_shape(b)}" for k, (a, b) in self.new_head.items())
            lines.append(f"replaced the classifier head of {self.file} with a new, untrained one: {shapes}")
        return lines


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _few(items: Sequence[str]) -> str:
    """The first few ``items`` joined, then "and N more"."""
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def mismatch(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> str:
    """How the tensors of ``state`` (a file's) differ from ``target`` (a model's): the keys missing on either
    side and those of another shape, with both shapes, a few of each then "and N more"; empty if none."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [f"{k} is {_shape(state[k].shape)} in the file and {_shape(target[k].shape)} in the model"
             for k in target if k in state and state[k].shape != target[k].shape]
    parts = []
    if missing:
        parts.append(f"the model's {_few(missing)} {'is' if len(missing) == 1 else 'are'} not in the file")
    if unexpected:
        parts.append(f"the file's {_few(unexpected)} {'is' if len(unexpected) == 1 else 'are'} not in the model")
    if wrong:
        parts.append(_few(wrong))
    return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local state dict: ``.safetensors``, or a torch file read with ``weights_only=True`` (a
    ``{"state_dict": ...}`` checkpoint is unwrapped). No code in the file runs."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"The weights file {str(path)!r} does not exist. Pass the path of a state dict saved "
                         "with torch.save(model.state_dict(), ...) or a .safetensors file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # optional dependency, needed only for this format

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means: not a plain state dict
        raise UsageError(f"Cannot read {str(path)!r} as a plain state dict ({type(e).__name__}). "
                         "cheapconv reads weights with weights_only=True so no code in the file runs; "
                         "save the weights with torch.save(model.state_dict(), path).") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UsageError(f"{str(path)!r} is not a state dict (a dict of named tensors); save the weights with "
                         "torch.save(model.state_dict(), path).")
    return state


def _head_modules(model: nn.Module) -> list[str]:
    """Names of the modules that hold ``model``'s classifier head."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    named = cfg.get("classifier") if isinstance(cfg, dict) else None   # timm: "classifier", "head.fc", a tuple
    names = [named] if isinstance(named, str) else list(named or [])
    if not names:
        names = [next((n for n in _HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)), "")][:1]
        if isinstance(getattr(model, "aux_classifier", None), nn.Module):   # segmentation: the auxiliary head too
            names.append("aux_classifier")
    found = []
    for name in filter(None, names):
        try:
            model.get_submodule(name)
        except AttributeError:
            continue
        found.append(name)
    return found


def head_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of ``model``'s classifier head: the tensors that depend on the number of classes.

    The head is found by name (see the module docstring); within it, only its last module with parameters counts
    (VGG's ``classifier`` holds three Linear layers; only the last one maps to the classes). Empty when the
    model has no head cheapconv knows of.

    >>> from cheapconv.models import WideResNet
    >>> head_keys(WideResNet(10, 1))
    ['fc.weight', 'fc.bias']
    """
    keys = []
    for name in _head_modules(model):
        head = model.get_submodule(name)
        leaves = [(n, m) for n, m in head.named_modules() if any(True for _ in m.parameters(recurse=False))]
        if not leaves:
            continue
        sub, leaf = leaves[-1]
        prefix = ".".join(filter(None, (name, sub)))
        keys += [f"{prefix}.{k}" for k in leaf.state_dict()]
    return keys


def pair_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                     head: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Pair the tensors of ``source`` (a weights file) with those of ``target`` (the model's state dict) in
    order: the i-th of the file with the i-th of the model. Returns the pairs (file key, model key).

    For weights of the same network written by another implementation (the EfficientNet-Lite0 reference
    weights in timm's ``tf_efficientnet_lite0``): same tensors, same order, other names. Each pair must have the
    same shape, except at the model's ``head`` keys (a new classifier may replace the file's: the caller decides);
    anything else raises :class:`ValueError` naming the first pairs that differ, so that nothing is guessed.
    """
    if len(source) != len(target):
        raise ValueError(f"the file has {len(source)} tensors and the model {len(target)}")
    pairs = list(zip(source, target, strict=True))
    wrong = [f"#{i} {a} {_shape(source[a].shape)} / {b} {_shape(target[b].shape)}"
             for i, (a, b) in enumerate(pairs) if b not in head and source[a].shape != target[b].shape]
    if wrong:
        raise ValueError(f"in order, {len(wrong)} pairs differ in shape (file / model): {_few(wrong)}")
    return pairs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights_file(model: nn.Module, path: str | Path, *, by_position: bool = False,
                      new_head: bool = False) -> WeightsRecord:
    """Load the weights file at ``path`` into ``model`` (in place), as the module docstring says.

    ``new_head``: the model was built for other classes than the file's (``num_classes`` given), so a head of
    another shape is replaced rather than refused. ``by_position``: pair the file's tensors with the model's in
    order (:func:`pair_by_position`), for files whose names differ from the model's.
    """
    path = Path(path)
    state = read_state_dict(path)
    target = model.state_dict()
    head = head_keys(model)
    record = WeightsRecord(file=path.name, sha256=_sha256(path), by_position=by_position)
    if by_position:
        try:
            pairs = pair_by_position(state, target, head)
        except ValueError as e:
            raise UsageError(f"The weights in {str(path)!r} cannot be loaded by position: {e}. They are not the "
                             "same network in the same order; check the model name.") from None
        state = {b: state[a] for a, b in pairs}
        record.paired, record.pairs = len(pairs), pairs[:_SHOWN]
    _check_names(state, target, head, path, new_head)
    wrong = [k for k in target if state[k].shape != target[k].shape]
    if any(k not in head for k in wrong):
        raise UsageError(f"The weights in {str(path)!r} do not fit the model: "
                         + _few([f"{k} is {_shape(state[k].shape)} in the file and {_shape(target[k].shape)} in "
                                 "the model" for k in wrong])
                         + ". Only the classifier head may differ; check the model name and its options (in_chans,"
                         " --in-chans).")
    if wrong and not new_head:
        raise _head_error(path, state, target, head)
    if wrong:
        record.new_head = {k: (list(state[k].shape), list(target[k].shape)) for k in head}
        state = {k: v for k, v in state.items() if k not in head}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == set(record.new_head), (missing, unexpected)   # checked above
    return record


def _check_names(state: dict, target: dict, head: Sequence[str], path: Path, new_head: bool) -> None:
    """Every model tensor has a tensor of its name in the file and the other way round, or a UsageError that
    says which, and whether loading by position would work."""
    if set(state) == set(target):
        return
    names = {k: v for k, v in state.items() if k not in target}, {k: v for k, v in target.items() if k not in state}
    message = f"The weights in {str(path)!r} do not fit the model by name: {mismatch(*names)}."
    try:
        pairs = pair_by_position(state, target, head)
    except ValueError:
        message += " Check the model name (and a checkpoint's prefix, e.g. 'module.')."
    else:
        differ = [b for a, b in pairs if state[a].shape != target[b].shape]
        head = " with --num-classes N (num_classes=N) for a new head" if differ and not new_head else ""
        message += (f" In order, the file's {len(pairs)} tensors have the model's shapes"
                    + (" except the classifier head's" if differ else "") + ": they are the same network under "
                    "other names. To load them in that order, pass --weights-by-position (--teacher-weights-by-"
                    f"position for distill's --teacher-weights; weights_by_position=True in Python){head}.")
    raise UsageError(message)


def _head_error(path: Path, state: dict, target: dict, head: Sequence[str]) -> UsageError:
    """The file's classifier has another size than the model's and no new head was asked for."""
    shapes = "; ".join(f"{k} {_shape(state[k].shape)} in the file, {_shape(target[k].shape)} in the model"
                       for k in head)
    theirs, ours = state[head[0]].shape[0], target[head[0]].shape[0]
    return UsageError(f"The classifier head of {str(path)!r} has {theirs} classes and the model {ours}: {shapes}. "
                      f"Pass num_classes={theirs} (--num-classes {theirs}) to keep the file's classifier, or "
                      f"num_classes=N (--num-classes N) for your N classes to replace it with a new, untrained "
                      "one (fine-tuning).")
