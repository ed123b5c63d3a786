"""Scoring configurations: one fixed minibatch, a seeded initialisation, the Fisher potential of each block.

Every candidate is built by :func:`cheapconv.cheapen` from its policy, so the network that is scored is the
network the policy file will produce; the plan is checked against the configuration before scoring.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ..counting import eval_mode
from ..data import get_dataset
from ..errors import UsageError
from ..fx.edit import insert_after
from ..surgery.rewrite import cheapen
from ..train.metrics import autocast
from .fisher import FisherScores, fisher_potential, seeded_init_
from .space import SearchSpace, single_thread


@dataclass
class Minibatch:
    """The fixed minibatch every candidate is scored on, and where it came from."""

    inputs: Tensor
    targets: Tensor
    source: str          # e.g. "fashion-mnist (train), 128 images drawn with seed 0"
    synthetic: bool


def _num_classes(teacher: nn.Module, input_shape: tuple[int, ...]) -> int:
    param = next(iter(teacher.parameters()))
    with eval_mode(teacher), torch.no_grad():
        out = teacher(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    return int(out.shape[-1])


def _from_dataset(dataset, batch_size: int, seed: int, what: str) -> Minibatch:
    n = len(dataset)
    if n == 0:
        raise UsageError(f"The dataset {what} is empty.")
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=gen)[:batch_size]
    with torch.random.fork_rng(devices=[]):  # augmentations draw from the global generator: pin them too
        torch.manual_seed(seed)
        if hasattr(dataset, "transform_batch") and hasattr(dataset, "labels"):
            x, y = dataset.transform_batch(index), dataset.labels[index]
        else:
            items = [dataset[int(i)] for i in index]
            x = torch.stack([torch.as_tensor(it[0]) for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
    note = f"{what}, {len(index)} images drawn with seed {seed}"
    return Minibatch(x.float(), y.long(), note, False)


def fixed_minibatch(data, *, batch_size: int, seed: int, input_shape: tuple[int, ...],
                    teacher: nn.Module) -> Minibatch:
    """The scoring minibatch from ``data``: None (seeded synthetic images with random labels), an
    ``(inputs, targets)`` pair of tensors, a Dataset yielding ``(image, label)``, or a dataset name for
    :func:`cheapconv.data.get_dataset` (training split, no augmentation, adapted to the teacher's input)."""
    if data is None:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((batch_size, *input_shape), generator=gen)
        y = torch.randint(0, _num_classes(teacher, input_shape), (batch_size,), generator=gen)
        source = f"synthetic: {batch_size} Gaussian images with random labels (seed {seed})"
        return Minibatch(x, y, source, True)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise UsageError(f"data: {x.shape[0]} inputs but {y.shape[0]} targets.")
        if x.shape[0] > batch_size:
            gen = torch.Generator().manual_seed(seed)
            index = torch.randperm(x.shape[0], generator=gen)[:batch_size]
            x, y = x[index], y[index]
            source = f"given tensors, {batch_size} rows drawn with seed {seed}"
            return Minibatch(x.float(), y.long(), source, False)
        return Minibatch(x.float(), y.long(), f"given tensors ({x.shape[0]} rows)", False)
    if isinstance(data, str):
        c, h, w = input_shape
        if h != w:
            raise UsageError(f"Dataset names need a square model input; the teacher takes {h}×{w}. Pass the "
                             "minibatch as (inputs, targets) tensors instead.")
        dataset = get_dataset(data, "train", augment=False, in_chans=c, image_size=h, seed=seed)
        return _from_dataset(dataset, batch_size, seed, f"{data} (train)")
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return _from_dataset(data, batch_size, seed, type(data).__name__)
    raise UsageError(f"data must be None, a dataset name, a Dataset or an (inputs, targets) pair of tensors, "
                     f"not {type(data).__name__}.")


class _Probe(nn.Module):
    """Identity marking a branch output that no module produces alone (a hook needs a module)."""

    def forward(self, x):
        return x


def _probe_nodes(student: fx.GraphModule, node_names: dict[int, str]) -> dict[int, str]:
    nodes = {n.name: n for n in student.graph.nodes}
    sites = {}
    for i, name in node_names.items():
        sites[i] = f"cheapconv_probe_{i}"
        insert_after(student, nodes[name], sites[i], _Probe())
    if sites:
        student.recompile()
    return sites


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is a sensible Fisher precision on ``device`` (CPU; CUDA with native bf16)."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


PRECISIONS = ("bf16", "fp32")


class Scorer:
    """Builds and scores students of one search space (teacher, batch, seed fixed).

    ``precision`` is the Fisher pass's: ``"bf16"`` (autocast; the default) or ``"fp32"``. bf16 keeps the
    fp32 ranking (Spearman 0.988 on WRN-16-2 and 0.995 on WRN-40-2 over 50 configurations, closer than a
    second fp32 seed comes) at ~1.4x the speed; see ``benchmarks/reproduce/README.md``. On a device
    without native bf16 it is fp32 (``self.precision`` says which ran)."""

    def __init__(self, teacher: nn.Module, space: SearchSpace, batch: Minibatch, *, seed: int = 0,
                 input_size: tuple[int, ...] | None = None, leaf_modules: Sequence = (),
                 precision: str = "bf16"):
        if precision not in PRECISIONS:
            raise UsageError(f"Fisher precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
        self.teacher, self.space, self.batch, self.seed = teacher, space, batch, seed
        self.input_size, self.leaf_modules = input_size, tuple(leaf_modules)
        param = next(iter(teacher.parameters()))
        self.device = param.device
        self.precision = precision if precision == "fp32" or bf16_supported(self.device) else "fp32"
        self.inputs = batch.inputs.to(self.device, param.dtype)
        self.targets = batch.targets.to(self.device)
        self.seconds = {"build": 0.0, "init": 0.0, "fisher": 0.0}

    def build(self, config: Sequence[int]) -> nn.Module:
        """The student of ``config`` exactly as ``cheapen(teacher, policy)`` makes it (plan checked)."""
        with single_thread():  # cheapen runs only batch-1 forwards (shapes, MACs)
            student = cheapen(self.teacher, self.space.policy(config), input_size=self.input_size,
                              leaf_modules=self.leaf_modules, taps=False, strict=True,
                              model_name=self.space.model_name)
        self.space.check_plan(config, student.cheapconv_plan)
        return student

    def score(self, config: Sequence[int], *, seed: int | None = None, batch: Minibatch | None = None,
              precision: str | None = None) -> FisherScores:
        """Fisher potential of ``config``'s student: seeded init (``seed``, default the scorer's) and the
        fixed minibatch (or ``batch``), in the scorer's precision (or ``precision``)."""
        t0 = time.perf_counter()
        student = self.build(config)
        t1 = time.perf_counter()
        seeded_init_(student, self.seed if seed is None else seed)
        t2 = time.perf_counter()
        sites, nodes = {}, {}
        for block, i in zip(self.space.blocks, config, strict=True):
            site = block.site(block.candidates[i])
            if site is None:
                nodes[block.index] = block.branch_node
            else:
                sites[block.index] = site
        if nodes:
            sites.update(_probe_nodes(student, nodes))
        names = [sites[b.index] for b in self.space.blocks]
        x, y = (self.inputs, self.targets) if batch is None else \
            (batch.inputs.to(self.inputs), batch.targets.to(self.targets.device))
        with autocast(self.device, precision or self.precision):
            scores = fisher_potential(student, x, y, names)
        t3 = time.perf_counter()
        self.seconds["build"] += t1 - t0
        self.seconds["init"] += t2 - t1
        self.seconds["fisher"] += t3 - t2
        return scores
