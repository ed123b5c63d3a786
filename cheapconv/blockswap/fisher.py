"""Fisher potential: how much a randomly initialised network's loss responds to its residual branches.

BlockSwap (``blockswap-and-structured.md`` section 1) ranks candidate students without training them: one
minibatch goes through the randomly initialised student in train mode, cross-entropy against the labels, one
backward pass. For each residual branch take its output ``a`` (before the residual add) and the gradient ``g``
of the loss with respect to ``a``; per channel c::

    Δc = ½ · mean over the batch of (Σ over h,w of a·g)²

A block's score is Σc Δc, the network's the sum over its blocks. ``g`` is the gradient of the *batch-mean*
cross-entropy, as in the reference code (a constant factor for every candidate, so rankings do not depend on
it).

Where ``a`` is taken: the tensor that enters the residual add from the branch. In cheapconv's pre-activation
WRNs that is the output of the branch's last conv (or of the bottleneck that replaced the pair); in
post-activation ResNets (torchvision, timm) it is the output of the branch's last norm. The block search
(:mod:`cheapconv.blockswap`) finds that module for every block; :func:`fisher_potential` takes module names.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
>>> x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 10, (8,))
>>> scores = fisher_potential(model, x, y, ["0"])
>>> scores.total > 0
True
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["FisherScores", "channel_fisher", "fisher_potential", "module_seed", "seeded_init_"]


def channel_fisher(a: Tensor, g: Tensor) -> Tensor:
    """Δc = ½ · mean_b (Σ_hw a·g)² for an activation ``a`` (B×C×H×W, or B×C) and its gradient ``g``.

    Returns one value per channel (float64, so sums over many blocks do not lose digits)."""
    if a.shape != g.shape:
        raise ValueError(f"activation {tuple(a.shape)} and gradient {tuple(g.shape)} differ in shape")
    prod = (a.detach().double() * g.detach().double())
    per_sample = prod.flatten(2).sum(-1) if prod.dim() > 2 else prod
    return per_sample.pow(2).mean(0).mul(0.5)


@dataclass
class FisherScores:
    """The result of :func:`fisher_potential`: the network score and its parts."""

    total: float
    per_site: dict[str, float]
    per_channel: dict[str, Tensor] = field(repr=False)
    loss: float


@contextlib.contextmanager
def _scoring_state(model: nn.Module) -> Iterator[None]:
    """Train mode, no parameter gradients; flags, ``requires_grad`` and buffers (BN statistics) restored."""
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train()
    for p, _ in grads:
        p.requires_grad_(False)  # only activation gradients are needed: skips every weight-gradient kernel
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def fisher_potential(model: nn.Module, inputs: Tensor, targets: Tensor, sites: Sequence[str], *,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> FisherScores:
    """Fisher potential of ``model`` on one minibatch, summed over ``sites``.

    ``sites`` are qualified names of modules (each called exactly once per forward) whose outputs are the
    residual-branch outputs ``a``. The model runs in train mode (batch statistics in BatchNorm) with
    ``loss_fn`` (cross-entropy) against ``targets`` and one backward pass that computes activation gradients
    only. Nothing is left behind: hooks are removed, and training flags, ``requires_grad`` and buffers
    (BatchNorm running statistics) are restored. The weights are used as they are: seed and initialise them
    first (:func:`seeded_init_`) to score a randomly initialised student as BlockSwap does.
    """
    modules = dict(model.named_modules())
    missing = [s for s in sites if s not in modules]
    if missing:
        raise UsageError(f"fisher_potential: no module named {', '.join(map(repr, missing))} in the model. "
                         "Pass qualified module names, as model.named_modules() lists them.")
    if not sites:
        raise UsageError("fisher_potential needs at least one site (a module whose output is a branch "
                         "output).")
    acts: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module, args, out):
            if not isinstance(out, Tensor):
                raise UsageError(f"fisher_potential: module {name!r} does not return a tensor.")
            if name in acts:
                raise UsageError(f"fisher_potential: module {name!r} ran twice in one forward pass; a site "
                                 "must be called exactly once.")
            if not out.requires_grad:
                out.requires_grad_(True)   # the first site: start the graph here, nothing upstream is needed
            acts[name] = out
            # A copy goes on, so in-place ops after the module (``out += shortcut``) cannot change ``a``.
            return out.clone()
        return hook

    with _scoring_state(model), torch.enable_grad():
        handles = [modules[s].register_forward_hook(make_hook(s)) for s in sites]
        try:
            logits = model(inputs)
        finally:
            for h in handles:
                h.remove()
        never = [s for s in sites if s not in acts]
        if never:
            raise UsageError(f"fisher_potential: module(s) {', '.join(map(repr, never))} never ran in "
                             "forward.")
        loss = loss_fn(logits, targets)
        grads = torch.autograd.grad(loss, [acts[s] for s in sites], allow_unused=True)
    per_channel = {}
    for s, g in zip(sites, grads, strict=True):
        a = acts[s]
        per_channel[s] = channel_fisher(a, torch.zeros_like(a) if g is None else g)
    per_site = {s: float(v.sum()) for s, v in per_channel.items()}
    return FisherScores(total=float(sum(per_site.values())), per_site=per_site, per_channel=per_channel,
                        loss=float(loss.detach()))


# --- seeded initialisation ---------------------------------------------------------------------------------
def module_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from ``seed`` and a module's qualified name (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        module.reset_parameters()
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif hasattr(module, "reset_parameters") and callable(module.reset_parameters):
        module.reset_parameters()   # norms: weight 1, bias 0, running statistics reset
    elif hasattr(module, "reset_running_stats"):
        module.reset_running_stats()


def seeded_init_(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer of ``model`` in place, reproducibly; returns ``model``.

    The scheme is that of cheapconv's WRN and torchvision's ResNets (and of the BlockSwap reference code):
    convs kaiming-normal (fan-out, ReLU gain) with zero bias, norms weight 1 / bias 0 with fresh running
    statistics, Linear torch's default with zero bias; other layers with ``reset_parameters`` use it.
    Each module draws from its own generator seeded by :func:`module_seed` (``seed``, its qualified name), so
    a layer that two candidate students share gets the same weights in both: a ranking then reflects the
    blocks that differ, not a reshuffled random stream. torch's global random state is left as it was.
    """
    cuda = sorted({t.device.index or 0 for t in model.state_dict().values() if t.is_cuda})
    with torch.no_grad():
        for name, module in model.named_modules():
            own = any(True for _ in module.parameters(recurse=False)) or \
                any(True for _ in module.buffers(recurse=False))
            if not own:
                continue
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(module_seed(seed, name))
                _init_module(module)
    return model
