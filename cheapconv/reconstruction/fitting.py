"""Fitting one site: the student's block is made to reproduce the teacher's output at that site.

For each site, in the order the student runs them:

1. One streaming pass over the calibration set: the student runs up to the block (its own, already
   reconstructed, inputs), the teacher up to the end of the site (the target). Each batch is used and
   dropped; a bounded sample of (input, target) pairs is kept (``cache_bytes``). Linear blocks (``Sep``,
   ``LR``/``LRp``) accumulate the second moments of their pointwise stage here, over every calibration image.
2. Closed forms: ``Sep``/``LR``/``LRp`` take their depthwise k×k part from the per-input-channel rank-1
   factorisation of the teacher's kernel and their pointwise part from least squares / activation-aware
   low rank on the moments (:mod:`.linear`). Other blocks get their BatchNorm statistics from the sample
   (their eval-mode function kept) and their last dense 1×1 conv, when they end with one (``G``: pointwise,
   ``B``/``BG``: expand, Tucker-2), refitted by least squares given everything before it; ``W(f)``'s last conv,
   the consumer of the kept channels, whatever its kernel (least squares on its input patches).
3. A short optimisation: Adam on the block's parameters alone, relative squared error to the teacher's
   output, on minibatches of the cached sample, cosine-decayed learning rate; BatchNorm layers inside the
   block run in train mode (batch statistics, as after recalibration), then are recalibrated on the sample
   and the last 1×1 conv refitted once more. The state with the lower error on the sample is kept, so the
   optimisation never makes a closed form worse.
4. An exact rescaling for training (:mod:`.balance`): convs followed by a BatchNorm get the row norm of the
   teacher's conv at the site, and each BatchNorm → ReLU → conv pair balanced norms; the eval-mode function
   is unchanged, SGD at the teacher's learning rate then moves the block at a normal relative speed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..blocks import LowRankPointwise, SamePadded, SeparablePointwise, Thin
from ..blocks.factorize import depthwise_pointwise
from ..surgery.teacher_init import as_kxk
from .balance import balance_block
from .batchnorm import batchnorms, recalibrate
from .capture import prefix_input, prefix_output
from .linear import Moments, conv_features, dense_solution, pointwise_features, reduced_rank_solution
from .report import ADAM_NOT_KEPT
from .sites import Site

__all__ = ["FitSettings", "SiteFit", "fit_site"]


@dataclass(frozen=True)
class FitSettings:
    steps: int = 200
    lr: float = 1e-2
    batch_size: int = 32
    cache_bytes: int = 512 * 2**20
    seed: int = 0
    balance: bool = True


@dataclass
class SiteFit:
    """What fitting one site did: the method, its relative errors on the data it saw, what it kept."""

    method: str
    start: float              # relative error when the fit began, over the whole calibration set
    fitted: float             # relative error after the fit, on the cached sample
    cached_images: int
    streamed_images: int
    cache_bytes: int


class _Cache:
    """At most ``limit`` bytes of (student input, teacher target) pairs, preallocated at the first batch."""

    def __init__(self, limit: int, most: int):
        self.limit, self.most, self.x, self.y, self.n = limit, most, None, None, 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.x is None:
            per_image = (x[0].numel() * x.element_size() + y[0].numel() * y.element_size())
            capacity = min(self.limit // max(per_image, 1), self.most)
            if capacity < 1:
                self.x = self.y = x[:0]
                return
            self.x = x.new_empty((capacity, *x.shape[1:]))
            self.y = y.new_empty((capacity, *y.shape[1:]))
        take = min(len(x), len(self.x) - self.n)
        if take > 0:
            self.x[self.n:self.n + take] = x[:take]
            self.y[self.n:self.n + take] = y[:take]
            self.n += take

    @property
    def nbytes(self) -> int:
        if self.x is None:
            return 0
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size()

    def chunks(self, size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, self.n, size):
            yield self.x[i:i + size], self.y[i:i + size]


def _inner(block: nn.Module) -> nn.Module:
    return block.block if isinstance(block, SamePadded) else block


def _capture_input(block: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block output, input of its submodule ``module``) for block input ``x``."""
    got = []
    handle = module.register_forward_pre_hook(lambda m, a: got.append(a[0]))
    try:
        out = block(x)
    finally:
        handle.remove()
    return out, got[0]


def last_pointwise(block: nn.Module, x: torch.Tensor) -> nn.Conv2d | None:
    """The dense, bias-free, unpadded 1×1 conv whose output *is* the block's output, if there is one. A block
    whose last conv *consumes* channels it keeps from the teacher (``Thin``, of ``W(f)``) has that conv refitted
    whatever its kernel (zero padding, no bias): there least squares is what re-mixes the kept channels."""
    any_kernel = isinstance(_inner(block), Thin)
    candidates = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.bias is None
                  and m.padding_mode == "zeros" and not isinstance(m.padding, str)
                  and ((m.kernel_size == (1, 1) and tuple(m.padding) == (0, 0)) or any_kernel)]
    outputs: dict[int, nn.Conv2d] = {}
    handles = [m.register_forward_hook(lambda mod, a, out: outputs.__setitem__(id(out), mod)) for m in candidates]
    try:
        with torch.no_grad():
            out = block(x[:2])
    finally:
        for h in handles:
            h.remove()
    return outputs.get(id(out))


def _relative_sums(out: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    return float((out.float() - y.float()).pow(2).sum()), float(y.float().pow(2).sum())


def _cache_error(block: nn.Module, cache: _Cache, size: int) -> float:
    num = den = 0.0
    with torch.no_grad():
        for x, y in cache.chunks(size):
            a, b = _relative_sums(block(x), y)
            num, den = num + a, den + b
    return math.sqrt(num / max(den, 1e-30))


def _refit_last(block: nn.Module, last: nn.Conv2d, cache: _Cache, size: int) -> None:
    """Least-squares refit of ``last`` (the block's final dense 1×1 conv) on the cached sample."""
    m = Moments()
    with torch.no_grad():
        for x, y in cache.chunks(size):
            _, f = _capture_input(block, last, x)
            m.add(conv_features(f, last), y)
    if m.count:
        last.weight.data.copy_(dense_solution(m).reshape_as(last.weight).to(last.weight))


def _adam(block: nn.Module, cache: _Cache, s: FitSettings) -> None:
    params = [p for p in block.parameters() if p.requires_grad]
    if not params or cache.n == 0 or s.steps < 1:
        return
    opt = torch.optim.Adam(params, lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / s.steps)))
    gen = torch.Generator().manual_seed(s.seed)
    flags = [(m, m.training) for m in block.modules()]
    block.train()
    try:
        for _ in range(s.steps):
            idx = torch.randint(cache.n, (min(s.batch_size, cache.n),), generator=gen).to(cache.x.device)
            x, y = cache.x[idx], cache.y[idx]
            loss = (block(x) - y).pow(2).sum() / y.pow(2).sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        for m, flag in flags:
            m.training = flag


def _settle(block: nn.Module, cache: _Cache, size: int, last: nn.Conv2d | None, *, preserve: bool) -> None:
    """BatchNorm statistics of the block from the sample (``preserve``: its eval function unchanged), then
    its last 1×1 conv refitted."""
    bns = batchnorms(block)
    if bns and cache.n:
        recalibrate(bns, block, (x for x, _ in cache.chunks(size)), preserve=preserve)
    if last is not None and cache.n:
        _refit_last(block, last, cache, size)


def _teacher_conv(teacher: nn.Module, site: Site) -> nn.Conv2d:
    # a factorised pair's site reads as the k×k conv it composes to
    return as_kxk(tuple(teacher.get_submodule(name) for name in site.entry.convs))[0]


def _typical_row_norm(conv: nn.Module) -> float:
    """The median output-row norm of a teacher conv (1 where it has no weight to measure)."""
    w = getattr(conv, "weight", None)
    if not isinstance(w, torch.Tensor) or w.numel() == 0:
        return 1.0
    norm = float(w.detach().float().reshape(w.shape[0], -1).norm(dim=1).median())
    return norm if norm > 0 else 1.0


def fit_site(site: Site, student: nn.Module, teacher: nn.Module, batches: Callable[[], Iterable[torch.Tensor]],
             settings: FitSettings, device: torch.device, samples: int) -> SiteFit:
    """Fit ``site``'s block (see the module docstring); both models must already be in eval mode."""
    block, inner = site.block, _inner(site.block)
    linear = isinstance(inner, (LowRankPointwise, SeparablePointwise))
    if linear and inner.depthwise is not None:
        # the depthwise part from the kernel's per-input-channel rank-1 split; the pointwise part is fitted on data
        dw, _ = depthwise_pointwise(_teacher_conv(teacher, site).weight.detach())
        inner.depthwise.weight.data.copy_(dw.to(inner.depthwise.weight))
    stage = (inner.down if isinstance(inner, LowRankPointwise) else inner.pointwise) if linear else None
    cache, moments = _Cache(settings.cache_bytes, samples), Moments()
    num = den = 0.0
    streamed = 0
    t_dev = next((p.device for p in teacher.parameters()), device)
    with torch.no_grad():
        for x in batches():
            xs = prefix_input(student, site.student_path, x.to(device))
            yt = prefix_output(teacher, site.teacher_out, x.to(t_dev)).to(device)
            if stage is not None:
                out, f = _capture_input(block, stage, xs)
                moments.add(pointwise_features(f, stage.stride), yt)
            else:
                out = block(xs)
            a, b = _relative_sums(out, yt)
            num, den = num + a, den + b
            cache.add(xs, yt)
            streamed += len(x)
    if not streamed:
        raise ValueError("the calibration data yielded no batch")
    start = math.sqrt(num / max(den, 1e-30))
    size = settings.batch_size
    last = None
    if linear and moments.count:
        if isinstance(inner, LowRankPointwise):
            down, up = reduced_rank_solution(moments, inner.down.out_channels)
            inner.down.weight.data.copy_(down.reshape_as(inner.down.weight).to(inner.down.weight))
            inner.up.weight.data.copy_(up.reshape_as(inner.up.weight).to(inner.up.weight))
            method = "activation-aware low rank + Adam"
        else:
            w = dense_solution(moments)
            inner.pointwise.weight.data.copy_(w.reshape_as(inner.pointwise.weight).to(inner.pointwise.weight))
            method = "least squares + Adam"
    else:
        last = last_pointwise(block, cache.x[:2] if cache.n else xs)
        kernel = "1×1" if last is None or tuple(last.kernel_size) == (1, 1) else "×".join(map(str, last.kernel_size))
        method = f"BN from data + least-squares last {kernel} + Adam" if last is not None else "Adam"
        _settle(block, cache, size, last, preserve=True)
    before_adam = _cache_error(block, cache, size)
    kept = copy.deepcopy(block.state_dict())
    _adam(block, cache, settings)
    _settle(block, cache, size, last, preserve=False)
    fitted = _cache_error(block, cache, size)
    if not fitted <= before_adam:   # the optimisation made it worse on the sample (or not finite): undo it
        block.load_state_dict(kept)
        fitted = before_adam
        method = method.replace(" + Adam", "") + "; " + ADAM_NOT_KEPT
    if settings.balance and balance_block(inner, _typical_row_norm(_teacher_conv(teacher, site))):
        method += " + rescaled for training"
    return SiteFit(method, start, fitted, cache.n, streamed, cache.nbytes + moments.nbytes)
