"""Accuracy of a model on a named dataset, adapted to the model's input: what ``compare --data`` and the sweep
report next to the measured costs. Top-1 for classification, mIoU for segmentation (:func:`accuracy_metric`
names which)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..counting import eval_mode
from ..data import DatasetInfo, dataset_info, get_dataset
from ..errors import UsageError
from ..models.inputs import input_shape_of
from ..models.preprocessing import Preprocessing, preprocessing_of
from ..train.losses import split_output
from ..train.metrics import evaluate
from .latency import prepared_copy

__all__ = ["accuracy_data_info", "accuracy_metric", "evaluate_accuracy"]


def accuracy_metric(data: str) -> str:
    """The figure :func:`evaluate_accuracy` reports for dataset ``data``: ``"top-1"``, or ``"mIoU"`` for a
    segmentation dataset. Nothing is loaded."""
    return "mIoU" if dataset_info(data).task == "segmentation" else "top-1"


def _fed_as(model: nn.Module, data: str, input_shape: tuple[int, ...] | None
            ) -> tuple[int, int, Preprocessing | None, bool]:
    """(channels, size, the model's preprocessing record if its normalisation applies, whether ``data`` is
    segmentation data): how :func:`evaluate_accuracy` feeds ``model`` dataset ``data``."""
    c, h, _ = input_shape_of(model, input_shape)
    record = preprocessing_of(model)
    if record is not None and len(record.mean) != c:
        record = None
    return c, h, record, dataset_info(data).task == "segmentation"


def accuracy_data_info(model: nn.Module, data: str, *, input_shape: tuple[int, ...] | None = None
                       ) -> tuple[DatasetInfo, Preprocessing | None]:
    """What :func:`evaluate_accuracy` will feed ``model``, without loading the data: the adapted
    :class:`~cheapconv.data.DatasetInfo` and the model's preprocessing record it takes the normalisation
    from (None: the dataset's own)."""
    c, h, record, dense = _fed_as(model, data, input_shape)
    return dataset_info(data, in_chans=c, image_size=None if dense else h, preprocessing=record), record


def evaluate_accuracy(model: nn.Module, data: str, *, input_shape: tuple[int, ...] | None = None,
                      data_dir: str | None = None, split: str = "test", batch_size: int = 256,
                      limit: int | None = None, device: str | torch.device | None = None,
                      progress: Callable[[int, int], None] | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on the ``split`` of dataset ``data`` (a :mod:`cheapconv.data` name),
    or its mIoU (0..1) when ``data`` is a segmentation dataset, through
    :func:`cheapconv.train.metrics.evaluate`. The dataset is adapted to the model's input (grayscale repeated
    to C channels; classification images padded to the size, segmentation scenes kept at their own size: the
    models are fully convolutional; the size and normalisation the model's preprocessing record says, where it
    has one: :func:`accuracy_data_info`); ``limit`` evaluates the first that many images only. A model whose
    output has fewer classes than the dataset is a :class:`~cheapconv.errors.UsageError`. ``progress(done,
    total)`` follows the images evaluated (see :func:`cheapconv.train.metrics.evaluate`)."""
    c, h, record, dense = _fed_as(model, data, input_shape)
    dataset = get_dataset(data, split, data_dir=data_dir, augment=False, in_chans=c,
                          image_size=None if dense else h, preprocessing=record)
    classes = dataset.info.num_classes
    size = dataset.info.image_size if dense else h
    # one forward on zeros finds the number of outputs (the class axis: 1), so that a model trained for another
    # dataset is refused with a message instead of a confusing figure or an index error inside evaluate
    with eval_mode(model), torch.inference_mode():
        param = next(iter(model.parameters()), None)
        out, _ = split_output(model(torch.zeros(1, c, size, size, device=param.device if param is not None else None)))
    outputs = out.shape[1]
    if dense and out.dim() != 4:
        raise UsageError(f"{data} is a segmentation dataset but the model predicts a tensor of shape "
                         f"{tuple(out.shape)}, not one map per class; evaluate a segmentation model on it.")
    if outputs < classes:
        raise UsageError(f"The model has {outputs} outputs but {data} has {classes} classes; evaluate it on "
                         "the dataset it was trained for.")
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
        dataset.info = dataset.dataset.info   # keeps the ignore index
    work = model if device is None else prepared_copy(model, torch.device(device), False)
    return float(evaluate(work, dataset, batch_size=batch_size, progress=progress)["miou" if dense else "top1"])
