"""What a dataset is, by name, without loading it: :class:`DatasetInfo`, name parsing, :func:`dataset_info`;
and what a dataset's file registers (:class:`DatasetSource`) and is asked (:class:`LoadRequest`).

Datasets are registered one file each in :mod:`cheapconv.data.sets` (:data:`~cheapconv.extensions.DATASETS`,
file ``fashion_mnist.py`` for the name ``fashion-mnist``). Also the ``in_chans``/``image_size`` adapters' effect on
a description, and a model's normalisation taking the place of the dataset's (``preprocessing=``)
(:func:`adapt_info`), shared by every loader so that ``dataset_info(name, ...)`` and
``get_dataset(name, ...).info`` agree.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import UsageError
from ..extensions import DATASETS
from ..models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from torch.utils.data import Dataset

__all__ = ["CROP_PCT", "DatasetInfo", "DatasetSource", "LoadRequest", "dataset_info", "parse_name", "source_of"]

#: ImageFolder's default evaluation transform, the ImageNet convention: resize to S/0.875 (256 for 224), crop S
CROP_PCT = 0.875

@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, input shape, normalisation.

    ``channels`` and ``image_size`` describe the tensors the dataset yields (after any ``in_chans`` or
    ``image_size`` adapter); ``mean``/``std`` have one entry per yielded channel. ``task`` is
    ``"classification"`` (labels are class indices) or ``"segmentation"`` (labels are S×S masks of class
    indices, ``ignore_index`` marking unlabelled pixels, if any). ``resize`` and ``interpolation``: for
    files read at any size (ImageFolder), the test split's shorter side is resized to ``resize`` pixels, then
    centre-cropped to ``image_size``; ``resize`` is None for data used at its stored size (zero-padded when
    ``image_size`` is larger).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None
    task: str = "classification"
    ignore_index: int | None = None
    resize: int | None = None
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class LoadRequest:
    """What :func:`~cheapconv.data.get_dataset` was asked, handed to the dataset's :meth:`DatasetSource.load`
    (see get_dataset for each): the ``split``, where to look (``data_dir``, resolved) and whether to
    ``download``, the training ``augment``ation (segmentation data: True or False, checked already), the
    ``in_chans``/``image_size`` adapters, the ``seed`` of generated data, a model's ``preprocessing``."""

    split: str
    data_dir: Path
    download: bool = False
    augment: bool | str | None = None
    in_chans: int | None = None
    image_size: int | None = None
    seed: int = 0
    preprocessing: Preprocessing | None = None


class DatasetSource:
    """What a dataset's file registers in :data:`~cheapconv.extensions.DATASETS`: the dataset (or a family of
    them, such as ``synthetic:...``) by name.

    - ``syntax``: what may follow the name, e.g. ``":PATH"`` (an argument it needs) or ``"[:SIZE[:ITEMS]]"``
      (one it may take); empty: it takes none. ``argument``: what the argument is, for the message when it is
      missing.
    - ``in_memory``: its images are held in memory at their stored size, so a model's larger input size is
      reached by zero padding, never by resizing (see :func:`~cheapconv.data.adapt_for_model`).
    - :meth:`info`: its :class:`DatasetInfo` for the argument (before adapters), loading nothing.
    - :meth:`load`: the split :class:`LoadRequest` asks for, as a dataset with ``.info`` (after adapters).
    """

    syntax: ClassVar[str] = ""
    argument: ClassVar[str] = ""
    in_memory: ClassVar[bool] = False

    def info(self, arg: str) -> DatasetInfo:
        raise NotImplementedError

    def load(self, arg: str, request: LoadRequest) -> Dataset:
        raise NotImplementedError


def _key(text: str) -> str:
    return text.strip().lower().replace("-", "").replace("_", "")


def _unknown(name: str) -> UsageError:
    """Unknown ``name``: the valid names with their arguments (every dataset's file is imported to list them)."""
    valid = [f"{e.name}{e.obj.syntax}" for e in DATASETS.entries()]
    close = difflib.get_close_matches(name.partition(":")[0].strip().lower(), DATASETS.names(), n=2, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UsageError(f"Unknown dataset {name!r}. Valid names: {', '.join(valid)}.{hint}")


def parse_name(name: str) -> tuple[str, str]:
    """Split a dataset name into (kind, argument); raise UsageError for unknown names. Case does not matter,
    nor ``-`` and ``_`` in the name (``Fashion_MNIST``); aliases (``voc2012``) resolve."""
    head, sep, arg = name.strip().partition(":")
    kind = {_key(n): n for n in DATASETS.names()}.get(_key(head))
    if kind is None:
        try:
            kind = DATASETS.entry(head.strip().lower()).name   # an alias, declared in its dataset's file
        except UsageError:
            raise _unknown(name) from None
    source = DATASETS.get(kind)
    if sep and not source.syntax:
        raise _unknown(name)
    if source.syntax.startswith(":") and not arg:
        raise UsageError(f"{kind!r} needs {source.argument}: {kind}{source.syntax}.")
    return kind, arg


def adapt_info(info: DatasetInfo, in_chans: int | None, image_size: int | None,
               preprocessing: Preprocessing | None = None) -> DatasetInfo:
    """Apply the ``in_chans`` adapter (grayscale -> k channels by repetition), record ``image_size``, and take
    a model's ``preprocessing``: its mean/std replace the dataset's (after the channel adapter: it must have
    one entry per channel) and, for data read at any size (ImageFolder), its resize-to-crop ratio and
    interpolation replace the ImageNet convention's. Its size is not used here (pass ``image_size``)."""
    if in_chans is not None and in_chans != info.channels:
        if info.channels != 1 or in_chans < 1:
            raise UsageError(
                f"{info.name} has {info.channels} channels but {in_chans} were asked for (in_chans). The "
                "only adapter is grayscale -> k channels by repeating the channel; build the model with "
                f"in_chans={info.channels} instead."
            )
        info = replace(info, channels=in_chans, mean=info.mean * in_chans, std=info.std * in_chans)
    if image_size is not None:
        if image_size < 1:
            raise UsageError(f"image_size must be positive, got {image_size}.")
        info = replace(info, image_size=image_size)
    if preprocessing is not None:
        if len(preprocessing.mean) != info.channels:
            raise UsageError(f"The preprocessing given has {len(preprocessing.mean)} channel(s) of mean/std but "
                             f"{info.name} yields {info.channels}; give in_chans={len(preprocessing.mean)} or leave "
                             "the preprocessing out (the dataset's own statistics).")
        info = replace(info, mean=preprocessing.mean, std=preprocessing.std)
    if info.resize is not None:
        s, p = info.image_size, preprocessing
        if p is not None and p.resize is not None and p.input_size[1:] == (s, s):
            resize, interpolation = p.resize, p.interpolation
        elif p is not None and p.crop_pct is not None:
            resize, interpolation = max(s, round(s / p.crop_pct)), p.interpolation
        else:
            resize, interpolation = round(s / CROP_PCT), info.interpolation
        info = replace(info, resize=resize, interpolation=interpolation)
    return info


def dataset_info(name: str, *, in_chans: int | None = None, image_size: int | None = None,
                 preprocessing: Preprocessing | None = None) -> DatasetInfo:
    """Describe dataset ``name`` without loading it (an ``imagefolder:`` tree is only listed for its classes).

    ``in_chans``, ``image_size`` and ``preprocessing`` are the arguments of :func:`~cheapconv.data.get_dataset`;
    the result describes what the dataset built with the same arguments yields.
    """
    kind, arg = parse_name(name)
    return adapt_info(source_of(kind).info(arg), in_chans, image_size, preprocessing)


def source_of(kind: str) -> DatasetSource:
    """The :class:`DatasetSource` registered as ``kind`` (a name :func:`parse_name` returned)."""
    return DATASETS.get(kind)
