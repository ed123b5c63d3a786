"""Parameter and MAC counting exactly as ``moonshine.md`` section 3 defines them.

* ``trainable``: the sum of parameters with ``requires_grad``.
* ``paper``: every state-dict tensor except BatchNorm's ``num_batches_tracked`` (trainable + BN running
  mean and variance). The paper's tables use this convention.
* MACs: multiply-accumulates of every operator of one forward pass for the given input shape, counted at
  the aten level by torch's own ``FlopCounterMode`` (MACs = its FLOPs / 2): convolutions, linear layers,
  matrix products, ``einsum`` (ACDC's DCTs), attention. For networks of Conv and Linear layers this is
  exactly the paper's convention (stem, shortcuts and classifier included); elementwise operations (norms,
  activations, adds) are not multiply-accumulates and count zero, as in the paper.

Counting never changes the model it is given: the forward pass runs on a throw-away copy whose weights are
storage-less meta tensors (or, for models that cannot run on meta tensors, on a real copy).
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import UsageError

Convention = Literal["trainable", "paper"]

# How large a storage-less (meta) model shape_forward may give real, zero-filled storage when it cannot run on
# meta tensors; 0 (the default): never. Set only by callers that have already bounded the model's size.
_MATERIALISE_META_BYTES: ContextVar[int] = ContextVar("materialise_meta_bytes", default=0)


def count_params(model: nn.Module, convention: Convention = "trainable") -> int:
    """Count parameters; ``convention`` is ``"trainable"`` or ``"paper"`` (see the module docstring).

    >>> from cheapconv.models import WideResNet
    >>> count_params(WideResNet(40, 2), "paper")
    2248954
    """
    if convention == "trainable":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    return count_state(model.state_dict(), convention)


def count_state(state: dict[str, torch.Tensor], convention: Convention = "paper") -> int:
    """Values of a state dict in the ``paper`` convention (every tensor but ``num_batches_tracked``): a
    model's size from its weights alone, e.g. a saved file's."""
    if convention != "paper":
        raise ValueError(f"convention must be 'trainable' or 'paper', not {convention!r}"
                         + ("; a state dict does not say which tensors are trainable" if convention == "trainable"
                            else ""))
    return sum(t.numel() for name, t in state.items() if not name.endswith("num_batches_tracked"))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put every submodule in eval mode; restore each one's own flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def count_macs(model: nn.Module, input_shape: tuple[int, ...] | torch.Size, *,
               per_layer: bool = False) -> int | tuple[int, dict[str, int]]:
    """Multiply-accumulates of one forward pass on an input of ``input_shape`` (batch included, e.g.
    ``(1, 3, 32, 32)``); the count covers the whole batch, so use batch 1 for "MACs per image".

    Every operator is counted (see the module docstring), so cheap blocks that compute with matrices
    (ACDC's DCT, low-rank products) are charged what they really cost. With ``per_layer=True`` returns
    ``(total, {module_name: macs})``, each module charged for the operators it runs itself, not those of its
    submodules. A module called several times is counted at every call. The model runs once in eval mode
    under no_grad on a zero input, on a copy.

    >>> from cheapconv.models import WideResNet
    >>> round(count_macs(WideResNet(40, 2), (1, 3, 32, 32)) / 1e6, 1)
    327.6
    """
    counters: list[FlopCounterMode] = []

    def counting():
        counters.append(FlopCounterMode(display=False))
        return counters[-1]

    shape_forward(model, input_shape, mode=counting)
    counter = counters[-1]  # the attempt that succeeded
    total = counter.get_total_flops() // 2
    if not per_layer:
        return total
    return total, _own_macs(counter.get_flop_counts())


def _own_macs(flop_counts: dict[str, dict]) -> dict[str, int]:
    """Per-module MACs from FlopCounterMode's nested totals: each module minus its direct children."""
    totals = {name.partition(".")[2]: sum(ops.values()) // 2 for name, ops in flop_counts.items()
              if "." in name and name != "Global"}
    own = dict(totals)
    for name, macs in totals.items():
        parent = name.rpartition(".")[0]
        while parent and parent not in totals:
            parent = parent.rpartition(".")[0]
        if parent:
            own[parent] -= macs
    return {name: macs for name, macs in own.items() if macs > 0}


def throwaway_copy(model: nn.Module, device: str | torch.device | None = "meta") -> nn.Module:
    """A deep copy of ``model`` to run passes on without touching it; with ``device="meta"`` its parameters
    and buffers are storage-less stand-ins of the same shapes (nothing is allocated or copied)."""
    if device is None:
        return copy.deepcopy(model)
    memo: dict[int, torch.Tensor] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in memo:
            stand_in = torch.empty_like(t, device=device)
            memo[id(t)] = nn.Parameter(stand_in, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                else stand_in
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def materialising_meta_models(max_bytes: int) -> Iterator[None]:
    """Within this context, :func:`shape_forward` on a meta model that cannot run on meta tensors (a
    detector's data-dependent post-processing) runs on a zero-filled real copy instead of failing, if its
    parameters and buffers take at most ``max_bytes``. For callers that have bounded the model already, such
    as rebuilding a file's recipe: the shapes a forward records do not depend on the weights' values."""
    token = _MATERIALISE_META_BYTES.set(max_bytes)
    try:
        yield
    finally:
        _MATERIALISE_META_BYTES.reset(token)


def _fallback_copy(model: nn.Module) -> nn.Module:
    """The copy :func:`shape_forward`'s real forward runs on: a deep copy, or for a meta model allowed by
    :func:`materialising_meta_models`, a zero-filled CPU copy (zeros keep every value finite)."""
    tensors = [*model.parameters(), *model.buffers()]
    if not any(t.is_meta for t in tensors) or \
            sum(t.numel() * t.element_size() for t in tensors) > _MATERIALISE_META_BYTES.get():
        return throwaway_copy(model, None)   # a meta model then fails again, with the error it failed with
    work = throwaway_copy(model, "cpu")
    for t in [*work.parameters(), *work.buffers()]:
        t.zero_()
    return work


#: the most elements an input given for counting may have (2^28: a 1 GiB float32 batch, 3×9000×9000 fits)
MAX_INPUT_ELEMENTS = 1 << 28


def check_input_shape(input_shape) -> None:
    """A :class:`~cheapconv.errors.UsageError` before any work for an input shape that is not whole positive
    sizes, or whose input alone would pass :data:`MAX_INPUT_ELEMENTS` (a real fallback forward would allocate it
    and more)."""
    try:
        dims = tuple(operator.index(d) for d in input_shape if not isinstance(d, bool))
        if len(dims) != len(input_shape):
            dims = ()
    except TypeError:   # not a sequence, or a size that is not a whole number (3.0, '3')
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"An input shape is whole positive sizes such as (1, 3, 32, 32), not {input_shape!r}.")
    numel = 1
    for d in dims:
        numel *= int(d)
    if numel > MAX_INPUT_ELEMENTS:
        raise UsageError(f"The input shape {dims} has {numel:,} elements, more than the {MAX_INPUT_ELEMENTS:,} "
                         "cheapconv runs a model on (a real forward would need several times that in memory). "
                         "Give a smaller image size or batch.")


def input_mismatch(model: nn.Module, input_shape: tuple[int, ...] | torch.Size) -> str | None:
    """Why ``model`` cannot read an input of ``input_shape``, judged by its first convolution (the first in
    module order): the wrong number of dimensions or of channels; None when that conv takes it (or there is
    none). A diagnosis for after a forward failed, not a promise that the forward works: a model whose first
    listed conv is not the first it runs could be misjudged, so callers ask only once the model has failed."""
    conv = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if conv is None or not conv.in_channels:   # no conv, or a lazy one (in_channels still 0)
        return None
    shape, rank = tuple(input_shape), conv.weight.dim()
    form = ", ".join(["batch", str(conv.in_channels), *["D", "H", "W"][3 - (rank - 2):]])
    if len(shape) != rank:
        return (f"an input of shape {shape} has {len(shape)} dimensions, but the model's first conv takes "
                f"({form})")
    if shape[1] != conv.in_channels:
        return (f"the input has {shape[1]} channel(s) (shape {shape}), but the model's first conv takes "
                f"{conv.in_channels}: ({form})")
    return None


def shape_forward(model: nn.Module, input_shape: tuple[int, ...] | torch.Size, on_retry=None, *,
                  mode=None) -> None:
    """Run ``model`` once on a zero input of ``input_shape`` in eval mode, for its hooks' sake.

    Shapes are all that counting needs, so this first runs on a meta copy (no arithmetic: ResNet-34 at 224
    in ~50 ms instead of a real forward, and nothing the forward caches, such as a detector's anchors, lands
    on the model). Hooks registered on ``model``'s modules fire on the copy's. Models that cannot run on meta
    tensors (data-dependent Python, ops without meta kernels) fall back to a real forward on a copy;
    ``on_retry`` is called first so hooks can forget what the failed attempt recorded. ``mode`` is a factory
    of a context manager entered around each attempt (a fresh one per attempt).
    """
    check_input_shape(input_shape)
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    with torch.no_grad():
        try:
            work = throwaway_copy(model, "meta")
            with eval_mode(work), (mode() if mode else contextlib.nullcontext()):
                work(torch.zeros(tuple(input_shape), device="meta", dtype=dtype))
            return
        except Exception:  # noqa: BLE001 - any failure on meta means: measure for real
            problem = input_mismatch(model, input_shape)
            if problem is not None:   # a real forward would only fail the same way, after copying the model
                raise UsageError(f"The model cannot run on this input: {problem}. Give the input shape the model "
                                 "takes (batch, channels, height, width), e.g. its --input-size.") from None
            if on_retry is not None:
                on_retry()
        try:
            work = _fallback_copy(model)
        except Exception:  # noqa: BLE001 - a model that cannot be copied runs as it is (hooks only read)
            work = model
        param = next(iter(work.parameters()), None)
        device = param.device if param is not None else None
        with eval_mode(work), (mode() if mode else contextlib.nullcontext()):
            work(torch.zeros(tuple(input_shape), device=device, dtype=dtype))
