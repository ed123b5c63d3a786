"""``synthetic[:CxHxW[:classes[:samples]]]``: deterministic random images that a network can learn (for tests,
demos and benchmarks), default ``synthetic:3x32x32:10:512``; :func:`synthetic_dataset` takes the sizes as keyword
arguments. The seed is ``seed=`` of either."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UsageError
from ...extensions import DATASETS
from ..augment import InMemorySource, TensorImageDataset, in_memory_dataset
from ..info import DatasetInfo, LoadRequest, dataset_info

__all__ = ["Synthetic", "parse_synthetic", "synthetic_dataset"]


def parse_synthetic(arg: str) -> tuple[int, int, int, int]:
    """``CxHxW[:classes[:samples]]`` -> (channels, size, classes, samples), with the documented defaults."""
    parts = arg.split(":") if arg else []
    try:
        if len(parts) > 3:
            raise ValueError
        c, h, w = (int(v) for v in parts[0].lower().split("x")) if parts and parts[0] else (3, 32, 32)
        k = int(parts[1]) if len(parts) > 1 else 10
        n = int(parts[2]) if len(parts) > 2 else 512
    except ValueError:
        raise UsageError(
            f"Cannot parse synthetic dataset spec {'synthetic:' + arg!r}; expected "
            "synthetic[:CxHxW[:classes[:samples]]], e.g. synthetic:1x28x28:10:256."
        ) from None
    if h != w:
        raise UsageError(f"Synthetic images must be square, got {h}x{w}.")
    if min(c, h, k, n) < 1:
        raise UsageError(f"Synthetic dataset sizes must be positive, got {c}x{h}x{w}:{k}:{n}.")
    return c, h, k, n


def synthetic_tensors(c: int, s: int, k: int, n: int, seed: int, split: str) -> tuple[Tensor, Tensor]:
    """uint8 images N×C×S×S and labels of the ``split`` (see :func:`synthetic_dataset`)."""
    protos_gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(k, c, 4, 4, generator=protos_gen)
    protos = F.interpolate(protos, size=(s, s), mode="bilinear", align_corners=False)
    # Distinct, fixed stream per split; the offsets only need to differ from each other.
    sample_gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "train" else 2))
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=sample_gen)]
    noise = torch.randn(n, c, s, s, generator=sample_gen)
    pixels = (0.25 + 0.5 * protos[labels] + 0.15 * noise).clamp(0.0, 1.0)
    return (pixels * 255.0).round().to(torch.uint8), labels


def synthetic_dataset(
    split: Literal["train", "test"] = "train",
    *,
    channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    num_samples: int = 512,
    seed: int = 0,
    augment: bool | str | None = None,
    in_chans: int | None = None,
) -> TensorImageDataset:
    """Deterministic random images that a network can learn (for tests, demos and benchmarks).

    Each class has a smooth prototype (4×4 uniform noise upsampled bilinearly, so a 4-px crop shift keeps it
    recognisable); a sample is its prototype plus Gaussian pixel noise (σ = 0.15), quantised to uint8. The
    prototypes depend on ``seed`` only, the samples on ``seed`` and ``split``: train and test share classes
    but not images. Labels are balanced (``i % num_classes``, shuffled). Same arguments, same tensors.
    """
    name = f"synthetic:{channels}x{image_size}x{image_size}:{num_classes}:{num_samples}"
    info = dataset_info(name)  # validates the sizes exactly as the name form does
    images, labels = synthetic_tensors(channels, image_size, num_classes, num_samples, seed, split)
    return in_memory_dataset(images, labels, info, split, augment, in_chans, None)


class Synthetic(InMemorySource):
    """Synthetic images in memory (see :func:`synthetic_dataset`)."""

    syntax = "[:CxHxW[:classes[:samples]]]"

    def info(self, arg: str) -> DatasetInfo:
        c, s, k, n = parse_synthetic(arg)
        # Synthetic pixels are spread around 0.5 by construction (see synthetic_tensors).
        return DatasetInfo(f"synthetic:{c}x{s}x{s}:{k}:{n}", k, c, s, (0.5,) * c, (0.25,) * c)

    def read(self, arg: str, request: LoadRequest) -> tuple[Tensor, Tensor, None]:
        c, s, k, n = parse_synthetic(arg)
        return (*synthetic_tensors(c, s, k, n, request.seed, request.split), None)


DATASETS.add("synthetic", Synthetic(), help="deterministic random images a network can learn (tests, demos)")
