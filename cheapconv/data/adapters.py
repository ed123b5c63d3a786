"""Fitting a dataset to a model's input: which ``in_chans``/``image_size``/``preprocessing`` to pass to
:func:`~cheapconv.data.get_dataset`, and why; and the record of the data a model was trained on.

The policy, decided once for every caller (the CLI's ``train``, ``distill``, ``evaluate`` and ``cheapen
--calib-data``; :func:`cheapconv.reconstruct` given a dataset name). ``compare --data`` and the sweep
(:func:`cheapconv.measure.evaluate_accuracy`) feed each model at its input size instead (the same record
first, then the model's native size) with the same normalisation rule:

- channels: the caller's ``in_chans``, else the channels of the model's first convolution, else the
  dataset's own. Grayscale data read by a 3-channel model is repeated to 3 channels.
- size (segmentation data: the caller's ``image_size`` or the data's own; no padding of masks): the
  caller's ``image_size``, else the size the model declares where the dataset can take it. Declared, in
  this order: the model's preprocessing record (``model.cheapconv_preprocessing``: the size it was trained at,
  or its pretrained weights' size), ``default_input_size`` of built-in WRNs, ``input_size`` in the recipe of a
  cheapconv file. ImageFolder crops at any size. In-memory data (Fashion-MNIST, CIFAR, synthetic) is only
  ever zero-padded, so only a larger declared size is used (Fashion-MNIST 28×28 -> 32×32 for a WRN), and
  the size of a record taken from pretrained weights' metadata is not a declaration for it (ImageNet's 224
  describes photos; it would pad 28×28 images into a 224×224 canvas). A model that declares nothing (a timm
  network with random weights, say) gets the dataset's own size: no guessing 224.
- normalisation: the record's mean/std where the model has one (what it was trained with, or what its
  pretrained weights expect: timm's 0.5/0.5 for EfficientNet-Lite), for in-memory data and ImageFolder alike;
  ImageFolder also takes its resize-to-crop ratio and interpolation. Else the dataset's own statistics. A
  record whose channels differ from the data's (``in_chans`` given otherwise) is not used, with a note.

:func:`data_preprocessing` is the record of a dataset built this way (its test split's transform), what
``cheapconv train``/``distill`` store in the file they write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..models.preprocessing import Preprocessing, default_channel_order, preprocessing_of
from .info import DatasetInfo, dataset_info, parse_name, source_of

__all__ = ["ModelAdapters", "adapt_for_model", "data_preprocessing"]


@dataclass(frozen=True)
class ModelAdapters:
    """The adapters :func:`adapt_for_model` chose: pass ``in_chans``, ``image_size`` and ``preprocessing`` to
    :func:`~cheapconv.data.get_dataset`.

    ``notes`` says what each adapter does to the data, keyed by the ``get_dataset`` argument responsible
    (``"in_chans"``, ``"image_size"``), so that a caller can tell the user how to override it; empty when
    the data is used as it is stored. ``native`` describes the stored data, before any adapter.
    ``preprocessing`` is the model's record whose normalisation the data takes (None: the dataset's own).
    """

    in_chans: int
    image_size: int | None
    native: DatasetInfo
    notes: dict[str, str] = field(default_factory=dict)
    preprocessing: Preprocessing | None = None


def _declared_input(model: nn.Module, in_memory: bool) -> tuple[int | None, int | None]:
    """(channels of the first convolution, image size the model declares for this kind of data), None where
    unknown (the order is in the module docstring).

    Deliberately not :func:`cheapconv.models.default_input_size`: that one falls back to ImageNet's 224,
    which would zero-pad small images into a huge canvas; here an undeclared size means "leave the data be".
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    record = preprocessing_of(model)
    size = None
    if record is not None and not (in_memory and record.source == "weights"):
        size = record.input_size
    if size is None:
        size = getattr(model, "default_input_size", None)
    if size is None:
        size = (getattr(model, "cheapconv_recipe", None) or {}).get("input_size")
    return (conv.in_channels if conv is not None else None), (int(size[-1]) if size else None)


def adapt_for_model(name: str, model: nn.Module, *, in_chans: int | None = None,
                    image_size: int | None = None) -> ModelAdapters:
    """The adapters that make dataset ``name`` fit ``model``'s input and normalisation (the policy is in the
    module docstring).

    ``in_chans`` and ``image_size`` given by the caller win. Nothing is loaded (an ``imagefolder:`` tree is
    listed for its classes); whether the adapters are possible is checked by ``get_dataset``.

    Example::

        fit = adapt_for_model("fashion-mnist", create_model("wrn_16_2"))
        train = get_dataset("fashion-mnist", "train", in_chans=fit.in_chans, image_size=fit.image_size,
                            preprocessing=fit.preprocessing)
        # fit.notes: {"in_chans": "fashion-mnist has 1 channel(s) and the model reads 3: repeating ...", ...}
    """
    native = dataset_info(name)
    in_memory = source_of(parse_name(name)[0]).in_memory
    model_chans, model_size = _declared_input(model, in_memory)
    chans = in_chans or model_chans or native.channels
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
    record = preprocessing_of(model)
    if record is not None and len(record.mean) != chans:
        notes["in_chans"] = (notes.get("in_chans", "") + "; " if "in_chans" in notes else "") + (
            f"the model's recorded normalisation is for {len(record.mean)} channel(s), not {chans}: using "
            f"{native.name}'s own")
        record = None
    return ModelAdapters(chans, image_size, native, notes, record)


def data_preprocessing(info: DatasetInfo) -> Preprocessing:
    """The record of data described by ``info`` (a dataset's ``.info``, after adapters): how its test split
    turns image files into tensors, which is what a model trained on it must be fed. ImageFolder: its resize,
    centre crop and interpolation; in-memory data: the zero padding from the stored size, if any."""
    c, s = info.channels, info.image_size
    pad_from = None
    if source_of(parse_name(info.name)[0]).in_memory:
        stored = dataset_info(info.name).image_size
        pad_from = stored if stored < s else None
    resize = info.resize
    return Preprocessing((c, s, s), info.mean, info.std, resize=resize, crop=s if resize is not None else None,
                         pad_from=pad_from, interpolation=info.interpolation, channel_order=default_channel_order(c),
                         source="data")
