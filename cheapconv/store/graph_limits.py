"""Caps on what a data-only graph may make us allocate and compute, checked on the meta device before anything
is real.

Every cap is relative to the weights the file really brings (:func:`cheapconv.store.file_checks.real_size`:
the bytes of its distinct storages, never the sizes it declares), so a crafted file costs nothing to refuse:

* :func:`check_module_sizes`: the parameters and buffers that the described modules and attributes would
  create, in bytes, against a cap the loader derives from those weights.
* :func:`dry_run`: the graph is interpreted node by node on a meta input of its recorded size, batch 2,
  under a dispatch mode (:class:`Accountant`) that sees every aten operation, those *inside* allow-listed
  layers included (a ``LocalResponseNorm(size=2**21)`` pads its input internally). Per value and in all,
  it bounds:

  - **bytes**: no single tensor, and no set of tensors alive at once (the input included), above
    :func:`memory_budget` = 64 × the weights' bytes + 256 MiB;
  - **work**: FLOPs as torch's ``FlopCounterMode`` counts them (matrix products, convolutions, attention)
    plus one per element every operation writes, at most :func:`work_budget` = 16 × the weights' MACs at the
    recorded size (every weight element applied once at every input position, batch 2: 2 × 2 × elements ×
    positions) + 2³² (a model with no weights still gets 4 GFLOP);
  - before each arithmetic operator its operands are checked to be numbers or tensors (``"a" * 10**12``
    never runs); integers up to 2**48, strings and containers up to 4096 entries; the check itself stops
    after :data:`MAX_CHECK_SECONDS`.

  An ``nn.Upsample(scale_factor=10**6)``, a chain of squarings or 40 products of a 4096×4096 ``expand``ed
  view is refused here, at load time.

A forward at another input size than the recorded one is the caller's choice; these checks bound what the
file alone can make cheapconv do.
"""

from __future__ import annotations

import math
import operator
import time
import weakref
from typing import Any

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from .graph_vocab import NUMERIC_OPERATORS, NotDescribable

__all__ = ["BATCH", "MAX_CHECK_SECONDS", "Accountant", "LimitError", "check_module_sizes", "dry_run",
           "memory_budget", "tensor_bytes", "work_budget"]

#: a real model's graph is checked in well under a second; a crafted one is stopped here
MAX_CHECK_SECONDS = 30
#: the batch the dry run uses
BATCH = 2
_MAX_INT = 2**48
_MAX_LEN = 4096
_NUMBER = (bool, int, float, torch.Tensor, torch.SymInt, torch.SymFloat)


class LimitError(NotDescribable):
    """A description that would make us allocate or compute far more than a real model needs."""


def tensor_bytes(tensors) -> int:
    """Bytes of ``tensors`` (an iterable), counted from shapes and dtypes: meta tensors count too."""
    return sum(t.numel() * t.element_size() for t in tensors)


def check_module_sizes(modules: dict[str, nn.Module], attrs: dict[str, torch.Tensor], max_bytes: int) -> None:
    """Raise :class:`LimitError` when meta-built ``modules`` and ``attrs`` together exceed ``max_bytes``."""
    total = tensor_bytes(attrs.values())
    for module in modules.values():
        total += tensor_bytes(module.parameters()) + tensor_bytes(module.buffers())
        if total > max_bytes:
            break
    if total > max_bytes:
        raise LimitError(f"its layers would allocate more than {max_bytes / 2**20:.0f} MiB, far more than the "
                         "weights the file holds")


def _check_operands(target: Any, args: tuple, kwargs: dict) -> None:
    if target in NUMERIC_OPERATORS:
        for a in (*args, *kwargs.values()):
            if not isinstance(a, _NUMBER):
                raise LimitError(f"operator.{target.__name__} on a {type(a).__name__}; only numbers and tensors "
                                 "are allowed")
        if target is operator.pow and all(isinstance(a, int) for a in args) and abs(args[1]) > 64:
            raise LimitError("an integer power above 64")


def memory_budget(weight_bytes: int) -> int:
    """The most bytes one value, or all values alive at once, may take in the dry run: 64 × the weights + 256 MiB."""
    return 64 * weight_bytes + 256 * 2**20


def work_budget(weight_elements: int, input_size: tuple[int, ...]) -> int:
    """The most work (FLOPs plus elements written) one dry-run forward may take: 16 × the weights' MACs at the
    recorded size (each weight element once at every input position, batch 2, two FLOPs a MAC) + 2**32."""
    positions = math.prod(input_size[1:]) if len(input_size) > 1 else 1
    return 16 * 2 * BATCH * weight_elements * positions + 2**32


def _check_value(value: Any, depth: int = 0) -> None:
    if depth > 8:
        raise LimitError("values nested too deeply")
    if isinstance(value, bool | float | type(None) | torch.dtype | torch.device | torch.Size | torch.Tensor):
        pass
    elif isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise LimitError("an integer above 2**48")
    elif isinstance(value, str):
        if len(value) > _MAX_LEN:
            raise LimitError("a string longer than 4096 characters")
    elif isinstance(value, tuple | list):
        if len(value) > _MAX_LEN:
            raise LimitError("a sequence longer than 4096 entries")
        for v in value:
            _check_value(v, depth + 1)
    elif isinstance(value, dict):
        if len(value) > _MAX_LEN:
            raise LimitError("a mapping with more than 4096 entries")
        for v in value.values():
            _check_value(v, depth + 1)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


class Accountant(TorchDispatchMode):
    """A dispatch mode that sums what every aten operation allocates and computes (meta tensors included)
    and raises :class:`LimitError` as soon as one value, the values alive at once, or the work passes its
    budget. Storages are counted once (views are free) and given back when torch frees them."""

    def __init__(self, max_bytes: int, max_work: int):
        super().__init__()
        self.max_bytes, self.max_work = max_bytes, max_work
        self.live = self.peak = self.work = 0
        self._storages: dict[int, int] = {}

    def track(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage as alive (once), until torch frees it."""
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._storages:
            return
        nbytes = storage.nbytes()
        if nbytes > self.max_bytes:
            raise LimitError(f"a tensor of {_mib(nbytes)} at the recorded input size (batch {BATCH}); the limit "
                             f"is {_mib(self.max_bytes)}, 64 × the weights the file brings + 256 MiB")
        self._storages[key] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)
        if self.live > self.max_bytes:
            raise LimitError(f"more than {_mib(self.max_bytes)} of tensors alive at once at the recorded input "
                             f"size (batch {BATCH}): 64 × the weights the file brings + 256 MiB")

    def _free(self, key: int) -> None:
        self.live -= self._storages.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry:   # count what a composite computes through the operations it runs
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if packet in flop_registry:
            self.work += int(flop_registry[packet](*args, **kwargs, out_val=out))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.work += t.numel()
                if t.layout == torch.strided and not t.is_nested:
                    self.track(t)
        if self.work > self.max_work:
            raise LimitError(f"more than {self.max_work:.2e} FLOPs in one forward at the recorded input size "
                             f"(batch {BATCH}): 16 × the MACs the file's weights justify + 2**32")
        return out


class _CheckedInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)
        self.deadline = time.monotonic() + MAX_CHECK_SECONDS

    def call_function(self, target, args, kwargs):
        _check_operands(target, args, kwargs)
        return super().call_function(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        if time.monotonic() > self.deadline:
            raise LimitError(f"checking the graph took more than {MAX_CHECK_SECONDS} s on shapes alone")
        value = super().run_node(n)
        _check_value(value)
        return value


def dry_run(meta_gm: fx.GraphModule, input_size: tuple[int, ...], *, weight_bytes: int,
            weight_elements: int) -> Accountant:
    """Interpret ``meta_gm`` (built on the meta device) on a batch of 2 inputs of ``input_size``, checking
    every value and every aten operation against budgets derived from the weights the file brings (see the
    module docstring). Returns the :class:`Accountant` (peak bytes, work); raises :class:`LimitError`, or
    whatever the graph raises."""
    accountant = Accountant(memory_budget(weight_bytes), work_budget(weight_elements, input_size))
    x = torch.empty((BATCH, *input_size), device="meta")
    accountant.track(x)
    try:
        with torch.no_grad(), accountant:
            _CheckedInterpreter(meta_gm.eval()).run(x)
    except LimitError as e:   # one paragraph: fx appends the node it was executing on lines of its own
        raise LimitError(str(e).split("\n")[0]) from None
    return accountant
