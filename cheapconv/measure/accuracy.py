"""Top-1 accuracy of a model on a named dataset, adapted to the model's input: what ``compare --data`` and
the sweep report next to the measured costs."""

from __future__ import annotations

import torch
from torch import nn

from ..counting import eval_mode
from ..errors import UsageError
from ..models.inputs import input_shape_of
from .latency import prepared_copy

__all__ = ["evaluate_accuracy"]


def evaluate_accuracy(model: nn.Module, data: str, *, input_shape: tuple[int, ...] | None = None,
                      data_dir: str | None = None, split: str = "test", batch_size: int = 256,
                      limit: int | None = None, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on the ``split`` of dataset ``data`` (a :mod:`cheapconv.data` name),
    through :func:`cheapconv.train.metrics.evaluate`. The dataset is adapted to the model's input (grayscale
    repeated to C channels, padded to the size); ``limit`` evaluates the first that many images only."""
    from ..data import get_dataset
    from ..train.metrics import evaluate

    c, h, _ = input_shape_of(model, input_shape)
    dataset = get_dataset(data, split, data_dir=data_dir, augment=False, in_chans=c, image_size=h)
    classes = dataset.info.num_classes
    # one forward on zeros finds the number of outputs, so that a model trained for another dataset is
    # refused with a message instead of a confusing accuracy or an index error inside evaluate
    with eval_mode(model), torch.inference_mode():
        param = next(iter(model.parameters()), None)
        outputs = model(torch.zeros(1, c, h, h, device=param.device if param is not None else None)).shape[-1]
    if outputs < classes:
        raise UsageError(f"The model has {outputs} outputs but {data} has {classes} classes; evaluate it on "
                         "the dataset it was trained for.")
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    work = model if device is None else prepared_copy(model, torch.device(device), False)
    return float(evaluate(work, dataset, batch_size=batch_size)["top1"])
