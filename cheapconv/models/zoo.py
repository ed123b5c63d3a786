"""Model names -> modules: built-in WRNs, torchvision classification models, timm models, saved files.

Accepted names (files are loaded by :func:`cheapconv.store.resolve.create_model`, which the top-level
``cheapconv.create_model`` is):

* ``wrn_<depth>_<width>`` (also ``wrn-40-2``): the built-in pre-activation Wide ResNet for 32×32 input;
* ``torchvision:<name>`` or a bare torchvision classification or segmentation name (``resnet34``,
  ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``, ``lraspp_mobilenet_v3_large``; segmentation models take
  ``num_classes`` and ``aux_loss``, and are built without hub backbone weights unless ``pretrained=True``);
  likewise a torchvision detection name (``fasterrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn``,
  ``ssdlite320_mobilenet_v3_large``, ...), which also takes the detector's own keywords (``min_size``, ...);
* ``segwrn_<depth>_<width>``: the built-in small segmentation network (:mod:`cheapconv.models.segwrn`);
* ``erfnet``: ERFNet, the Moonshine paper's segmentation teacher (:mod:`cheapconv.models.erfnet`; 20 classes
  unless ``num_classes`` says otherwise);
* ``timm:<name>``;

``pretrained`` is False, True (the hub's weights: needs network) or a local weights file (works offline; a new
classifier head with ``num_classes``, by position on request: :mod:`cheapconv.models.weights`).
torchvision and timm are imported only when a name needs them.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from torch import nn

from ..errors import CheapconvError, UnknownModelError, UsageError
from .erfnet import ERFNet
from .hub import download_error, is_network_error
from .preprocessing import weights_preprocessing
from .segwrn import SegWRN
from .weights import load_weights_file
from .wrn import WideResNet

_WRN = re.compile(r"wrn[_-](\d+)[_-](\d+)$")
_SEGWRN = re.compile(r"segwrn[_-](\d+)[_-](\d+)$")


def canonical_name(name: str) -> str:
    """The unambiguous spelling recorded in recipes: ``wrn_40_2``, ``torchvision:resnet34``, ``timm:...``."""
    m = _WRN.fullmatch(name)
    if m:
        return f"wrn_{m.group(1)}_{m.group(2)}"
    m = _SEGWRN.fullmatch(name)
    if m:
        return f"segwrn_{m.group(1)}_{m.group(2)}"
    if name.startswith(("torchvision:", "timm:")) or name == "erfnet":
        return name
    return f"torchvision:{name}"


def _torchvision_names() -> list[str]:
    import torchvision  # optional (vision extra), slow to import: only for torchvision names

    return sorted(torchvision.models.list_models(module=torchvision.models)
                  + torchvision.models.list_models(module=torchvision.models.segmentation)
                  + torchvision.models.list_models(module=torchvision.models.detection))


def _is_segmentation(tv_name: str) -> bool:
    import torchvision  # optional (vision extra), slow to import: only for torchvision names

    return tv_name in torchvision.models.list_models(module=torchvision.models.segmentation)


def _is_detection(tv_name: str) -> bool:
    import torchvision  # optional (vision extra), slow to import: only for torchvision names

    return tv_name in torchvision.models.list_models(module=torchvision.models.detection)


def _timm_names() -> list[str]:
    import timm  # optional (vision extra), slow to import: only for timm names

    return timm.list_models()


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _unknown(name: str, detail: str = "") -> UnknownModelError:
    return UnknownModelError(
        f"Unknown model {name!r}.{detail} Use wrn_<depth>_<width> (e.g. wrn_40_2), segwrn_<depth>_<width>, "
        "erfnet, a torchvision "
        "classification model (resnet34 or torchvision:resnet34), a timm model (timm:resnet50), or the path "
        "of a file saved by cheapconv."
    )


def create_model(name: str, *, num_classes: int | None = None, pretrained: bool | str | Path = False,
                 weights_by_position: bool = False, **kwargs) -> nn.Module:
    """Build a model by name (see the module docstring for the accepted names).

    ``pretrained`` is a local weights file (or True: the hub's). With ``num_classes`` too, a file with another
    number of classes loads with a new classifier head (fine-tuning onto your classes); without it, such a file
    is an error that names the head's keys and shapes. ``weights_by_position=True`` loads a file whose tensor
    names differ from the model's in order (see :mod:`cheapconv.models.weights`). What was loaded is in
    ``model.cheapconv_weights`` (a :class:`~cheapconv.models.weights.WeightsRecord`; ``.notes()`` says it).

    The model remembers where it came from (``cheapconv_source``, ``cheapconv_source_kwargs``) so that a
    student cheapened from it can be rebuilt from its recipe. With pretrained weights it also carries how they
    expect to be fed, ``cheapconv_preprocessing`` (:mod:`cheapconv.models.preprocessing`: timm's
    ``pretrained_cfg``, torchvision's ``weights.transforms()``, the ImageNet defaults for a local file of a
    torchvision classifier).

    >>> m = create_model("wrn_16_2", num_classes=100)
    >>> m.fc.out_features, m.cheapconv_source
    (100, 'wrn_16_2')
    """
    local = pretrained if pretrained is not True and pretrained else None
    if weights_by_position and local is None:
        raise UsageError("weights_by_position (--weights-by-position) pairs the tensors of a local weights file "
                         "with the model's; pass the file too (pretrained=PATH, --weights PATH).")
    try:
        model = _create_model(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    except CheapconvError:
        raise
    except Exception as e:
        if pretrained is True and is_network_error(e):
            raise download_error(name, e) from e
        raise
    if local is not None:
        model.cheapconv_weights = load_weights_file(model, local, by_position=weights_by_position,
                                                    new_head=num_classes is not None)
    if not hasattr(model, "cheapconv_source") or getattr(model, "cheapconv_recipe", None) is None:
        model.cheapconv_source = canonical_name(name)
        model.cheapconv_source_kwargs = dict(kwargs, **({"num_classes": num_classes} if num_classes else {}))
    if pretrained:   # how the weights expect to be fed (timm's pretrained_cfg, torchvision's transforms)
        model.cheapconv_preprocessing = weights_preprocessing(model, canonical_name(name), hub=pretrained is True)
    return model


def _create_model(name: str, *, num_classes: int | None = None, pretrained: bool | str | Path = False,
                  **kwargs) -> nn.Module:
    m = _WRN.fullmatch(name) or _SEGWRN.fullmatch(name)
    if m:
        depth, width = int(m.group(1)), int(m.group(2))
        cls, default_classes = (SegWRN, 11) if name.startswith("seg") else (WideResNet, 10)
        try:
            model = cls(depth, width, num_classes=num_classes or default_classes, **kwargs)
        except ValueError as e:
            raise UsageError(f"Cannot build {name!r}: {e}.") from None
        if pretrained is True:
            raise UsageError(f"There are no hub weights for the built-in {name!r}; pass a local weights file "
                             "(pretrained=PATH, --weights PATH) or train one with `cheapconv train`.")
        return model
    if name == "erfnet":
        if pretrained is True:
            raise UsageError("There are no hub weights for the built-in 'erfnet'; pass a local weights file "
                             "(pretrained=PATH, --weights PATH) or train one with `cheapconv train`.")
        try:
            return ERFNet(num_classes=num_classes or 20, **kwargs)
        except (TypeError, ValueError) as e:
            raise UsageError(f"Cannot build 'erfnet': {e}.") from None
    if name.startswith("timm:"):
        return _create_timm(name[5:], num_classes, pretrained, **kwargs)
    tv_name = name[len("torchvision:"):] if name.startswith("torchvision:") else name
    return _create_torchvision(name, tv_name, num_classes, pretrained, **kwargs)


def _create_torchvision(name, tv_name, num_classes, pretrained, **kwargs) -> nn.Module:
    try:
        import torchvision  # optional (vision extra), slow to import: only for torchvision names
    except ImportError:
        raise UsageError(f"{name!r} needs torchvision, which is not installed: "
                         "pip install 'cheapconv[vision]'.") from None
    names = _torchvision_names()
    if tv_name not in names:
        detail = _suggest(tv_name, names + [f"timm:{n}" for n in _timm_suggestions(tv_name)])
        raise _unknown(name, detail)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    weights = "DEFAULT" if pretrained is True else None
    hub_classes = 1000
    if _is_segmentation(tv_name):
        hub_classes = 21   # torchvision's segmentation weights: the 20 VOC classes + background
        # the backbone's ImageNet weights are a download too: only with pretrained=True (offline users pass a file)
        kwargs.setdefault("weights_backbone", "DEFAULT" if pretrained is True else None)
    elif _is_detection(tv_name):
        hub_classes = 2 if tv_name.startswith("keypointrcnn") else 91   # COCO's person keypoints / 90 + background
        kwargs.setdefault("weights_backbone", "DEFAULT" if pretrained is True else None)
    if weights and num_classes not in (None, hub_classes):
        raise UsageError(f"Hub weights for torchvision {tv_name} have {hub_classes} classes; drop --num-classes or "
                         "pass a local weights file.")
    return torchvision.models.get_model(tv_name, weights=weights, **kwargs)


def _timm_suggestions(name: str) -> list[str]:
    try:
        return [n for n in _timm_names() if n.startswith(name[:4])][:200]
    except ImportError:
        return []


def _create_timm(timm_name: str, num_classes, pretrained, **kwargs) -> nn.Module:
    try:
        import timm  # optional (vision extra), slow to import: only for timm names
    except ImportError:
        raise UsageError(f"timm:{timm_name} needs timm, which is not installed: "
                         "pip install 'cheapconv[vision]'.") from None
    if not timm.is_model(timm_name):
        raise _unknown(f"timm:{timm_name}", _suggest(timm_name, _timm_names()))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return timm.create_model(timm_name, pretrained=pretrained is True, **kwargs)
