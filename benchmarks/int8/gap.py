"""Stage ``gap``: where the EfficientNet-Lite0 students' int8 loss comes from.

The study found the fine-tuned Lite0 teacher holding its accuracy in int8 (+0.4 points) and its low-rank ``LRp``
students losing 0.6–3.2 points. The suspect: a low-rank pointwise block is two 1×1 convs with nothing between, and
the narrow tensor between them is quantised per tensor (uint8), as every activation is. The test: quantise each
model again with its low-rank blocks kept in float32 (``quantize_onnx(keep_float=...)``: both convs, so the narrow
tensor is never quantised), and the teacher with *the same layers* kept in float32 (the convs those blocks
replaced), as the control. If the students' gap closes while the teacher's does not move, the low-rank blocks are
the cause, not the number of layers left in float32.

One record per (model, variant): fp32 and int8 top-1 on the group's test split and the export's agreement check.
Beside it, per student, the statistic that decides how much per-tensor uint8 loses: a tensor's range (max − min,
what the calibration maps onto 256 levels) over its standard deviation, for each low-rank block's narrow tensor
(``down``'s output) and for the tensor entering the block (which the teacher's pointwise conv reads too), on the
calibration images. A larger ratio leaves most values fewer levels.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

import cheapconv
from cheapconv.blocks import LowRankPointwise
from cheapconv.data import adapt_for_model, get_dataset

from ..common.report import say
from .measure import accuracy_record


def low_rank_paths(model_file: Path) -> list[str]:
    """The module paths of ``model_file``'s low-rank pointwise blocks (empty for the teacher)."""
    model = cheapconv.load(model_file)
    return [name for name, module in model.named_modules() if isinstance(module, LowRankPointwise)]


def calibration_draw(data: str, model, shape: tuple[int, ...], samples: int, seed: int = 0) -> torch.Tensor:
    """The first ``samples`` images the export's calibration draws from ``data``'s training split (the same seeded
    permutation, sorted, fed as the model records: ``cheapconv.measure.quantization.calibration_images``)."""
    _, h, w = shape
    fit = adapt_for_model(data, model, image_size=h if h == w else None)
    train = get_dataset(data, "train", augment=False, in_chans=fit.in_chans, image_size=fit.image_size,
                        preprocessing=fit.preprocessing)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    return torch.stack([train[i][0] for i in sorted(order[:samples])]).float()


def range_over_std(model_file: Path, data: str, shape: tuple[int, ...], samples: int = 64) -> dict:
    """Range ÷ standard deviation of each low-rank block's narrow tensor and of the tensor entering it, on
    ``samples`` calibration images (median and largest over the blocks)."""
    model = cheapconv.load(model_file).eval()
    images = calibration_draw(data, model, shape, samples)
    ratios: dict[str, list[float]] = {"narrow": [], "entering": []}

    def ratio(t: torch.Tensor) -> float:
        t = t.detach().float()
        return float((t.max() - t.min()) / t.std().clamp_min(1e-12))

    handles = []
    for module in model.modules():
        if isinstance(module, LowRankPointwise):
            handles.append(module.down.register_forward_hook(lambda m, i, o: ratios["narrow"].append(ratio(o))))
            handles.append(module.register_forward_pre_hook(lambda m, i: ratios["entering"].append(ratio(i[0]))))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return {k: {"median": statistics.median(v), "max": max(v), "blocks": len(v)} for k, v in ratios.items() if v}


def gap_records(models: dict[str, Path], data: str, out: Path, group: str, done: set[str],
                shape: tuple[int, ...]):
    """Yield (key, record) for every model of ``models`` kept whole in int8 and with the students' low-rank block
    paths in float32 (the teacher: the union of those paths, the layers they replaced)."""
    paths = {name: low_rank_paths(f) for name, f in models.items() if name != "teacher"}
    union = sorted({p for ps in paths.values() for p in ps})
    for name, file in models.items():
        keep = paths.get(name, union)
        if not keep:
            continue
        key = f"gap {group} {name} low-rank-float"
        if key in done:
            continue
        say(f"== {key}")
        record = accuracy_record(f"{group}-{name}-lrfloat", file, data, out, keep_float=keep)
        if name != "teacher":
            record["range_over_std"] = range_over_std(file, data, shape)
        yield key, {**record, "variant": "low-rank blocks float32" if name != "teacher"
                    else "the students' low-rank paths float32", "float32_modules": keep}
