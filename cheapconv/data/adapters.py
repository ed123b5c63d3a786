"""Fitting a dataset to a model's input: which ``in_chans``/``image_size`` adapters to apply, and why.

The policy, decided once for every caller (the CLI's ``train``, ``distill`` and ``evaluate``):

- channels: the caller's ``in_chans``, else the channels of the model's first convolution, else the
  dataset's own. Grayscale data read by a 3-channel model is repeated to 3 channels.
- size (segmentation data: the caller's ``image_size`` or the data's own; no padding of masks): the
  caller's ``image_size``, else the size the model declares (``default_input_size`` of built-in
  WRNs, ``input_size`` in the recipe of a cheapconv file) where the dataset can take it: ImageFolder crops
  at any size; in-memory data (Fashion-MNIST, CIFAR, synthetic) is only ever zero-padded, so only a larger
  declared size is used (Fashion-MNIST 28×28 -> 32×32 for a WRN). A model that declares nothing (a timm
  network, say) gets the dataset's own size: no guessing 224 and padding 32×32 images into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .info import DatasetInfo, dataset_info, parse_name

__all__ = ["ModelAdapters", "adapt_for_model"]


@dataclass(frozen=True)
class ModelAdapters:
    """The adapters :func:`adapt_for_model` chose: pass ``in_chans`` and ``image_size`` to
    :func:`~cheapconv.data.get_dataset`.

    ``notes`` says what each adapter does to the data, keyed by the ``get_dataset`` argument responsible
    (``"in_chans"``, ``"image_size"``), so that a caller can tell the user how to override it; empty when
    the data is used as it is stored. ``native`` describes the stored data, before any adapter.
    """

    in_chans: int
    image_size: int | None
    native: DatasetInfo
    notes: dict[str, str] = field(default_factory=dict)


def _declared_input(model: nn.Module) -> tuple[int | None, int | None]:
    """(channels of the first convolution, image size the model declares), None where unknown.

    Deliberately not :func:`cheapconv.models.default_input_size`: that one falls back to ImageNet's 224,
    which would zero-pad small images into a huge canvas; here an undeclared size means "leave the data be".
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    size = getattr(model, "default_input_size", None)
    if size is None:
        size = (getattr(model, "cheapconv_recipe", None) or {}).get("input_size")
    return (conv.in_channels if conv is not None else None), (int(size[-1]) if size else None)


def adapt_for_model(name: str, model: nn.Module, *, in_chans: int | None = None,
                    image_size: int | None = None) -> ModelAdapters:
    """The adapters that make dataset ``name`` fit ``model``'s input (the policy is in the module docstring).

    ``in_chans`` and ``image_size`` given by the caller win. Nothing is loaded (an ``imagefolder:`` tree is
    listed for its classes); whether the adapters are possible is checked by ``get_dataset``.

    Example::

        fit = adapt_for_model("fashion-mnist", create_model("wrn_16_2"))
        train = get_dataset("fashion-mnist", "train", in_chans=fit.in_chans, image_size=fit.image_size)
        # fit.notes: {"in_chans": "fashion-mnist has 1 channel(s) and the model reads 3: repeating ...", ...}
    """
    native = dataset_info(name)
    model_chans, model_size = _declared_input(model)
    chans = in_chans or model_chans or native.channels
    in_memory = parse_name(name)[0] not in ("imagefolder", "voc", "cityscapes")
    # segmentation models are fully convolutional and masks are not padded: the data keeps its own size
    dense = native.task == "segmentation"
    if (image_size is None and model_size is not None and not dense
            and (not in_memory or model_size > native.image_size)):
        image_size = model_size
    notes = {}
    if chans != native.channels:
        notes["in_chans"] = (f"{native.name} has {native.channels} channel(s) and the model reads {chans}: "
                             "repeating the channel")
    if in_memory and image_size is not None and image_size != native.image_size:
        notes["image_size"] = (f"{native.name} images are {native.image_size}×{native.image_size}; zero-padding "
                               f"them to {image_size}×{image_size}, the model's native size")
    return ModelAdapters(chans, image_size, native, notes)
