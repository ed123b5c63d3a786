""""Is this a file or a zoo name?", decided in one place for the library and every command.

A spec that names an existing file, or ends in ``.pt``/``.pth``/``.ckpt``, is a saved cheapconv file and is
loaded safely (:func:`cheapconv.load`); anything else is a zoo name (:func:`cheapconv.models.create_model`),
optionally with a local weights file.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UsageError
from ..models import zoo
from .deployed import is_deployed_file, load_deployed
from .modelfile import load

__all__ = ["create_model", "is_model_file", "resolve_model"]

_MODEL_SUFFIXES = (".pt", ".pth", ".ckpt")


def is_model_file(spec: str | Path) -> bool:
    """Whether ``spec`` means a saved file (existing, or spelled like one) rather than a zoo name."""
    path = Path(spec)
    return path.suffix in _MODEL_SUFFIXES or path.is_file()


def resolve_model(spec: str | Path, *, weights: str | Path | None = None, num_classes: int | None = None,
                  pretrained: bool = False, trust: bool = False, what: str = "model",
                  weights_by_position: bool = False, deployed: bool = False, **kwargs) -> nn.Module:
    """The model ``spec`` names: a cheapconv file (``weights`` must then be None) or a zoo name built with
    ``num_classes``, ``pretrained`` (hub weights) or ``weights`` (a local state dict, paired by position with
    ``weights_by_position``; a new classifier head where ``num_classes`` differs from the file's) and zoo
    keywords.

    ``deployed=True`` also accepts a deployed file (``.onnx``, ``.pt2``:
    :func:`cheapconv.store.deployed.load_deployed`), for the commands that only run a model (evaluate); elsewhere
    such a file is a usage error that says so.

    Raises :class:`UsageError` for a missing file, weights given for a file, or keywords the zoo model does
    not take.
    """
    path = Path(spec)
    if is_deployed_file(spec):
        if not deployed:
            raise UsageError(f"The {what} {str(spec)!r} is a deployed {path.suffix[1:]} file: it can be evaluated "
                             "(cheapconv evaluate FILE --data ...), not trained, cheapened or profiled. Give the "
                             "cheapconv .pt file it was exported from.")
        if weights is not None or weights_by_position:
            raise UsageError(f"{str(spec)!r} is a deployed file with its own weights; --weights applies only to zoo "
                             "names.")
        return load_deployed(path)
    if is_model_file(spec):
        if path.is_dir():
            raise UsageError(f"The {what} {str(spec)!r} is a directory, not a model file. Give the file's path.")
        if not path.is_file():
            raise UsageError(f"The {what} file {str(spec)!r} does not exist. Check the path.")
        if weights is not None or weights_by_position:
            raise UsageError(f"{str(spec)!r} is a model file with its own weights; separate weights (and loading "
                             "them by position) apply only to zoo names.")
        return load(path, trust=trust)
    try:
        return zoo.create_model(str(spec), num_classes=num_classes,
                                pretrained=str(weights) if weights else pretrained,
                                weights_by_position=weights_by_position, **kwargs)
    except TypeError as e:  # a zoo model that does not take e.g. in_chans
        raise UsageError(f"Cannot build {str(spec)!r} with {kwargs}: {e}.") from None


def create_model(name: str | Path, *, num_classes: int | None = None, pretrained: bool | str | Path = False,
                 **kwargs) -> nn.Module:
    """Build a model by zoo name, or load a saved cheapconv file (see :mod:`cheapconv.models.zoo`).

    >>> m = create_model("wrn_16_2", num_classes=100)
    >>> m.fc.out_features, m.cheapconv_source
    (100, 'wrn_16_2')
    """
    if is_model_file(name):
        return resolve_model(name)
    return zoo.create_model(str(name), num_classes=num_classes, pretrained=pretrained, **kwargs)
