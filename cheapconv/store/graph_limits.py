"""Caps on what a data-only graph may make us allocate, checked on the meta device before anything is real.

Two checks, both run on tensors without storage (``device="meta"``), so a crafted file costs nothing to refuse:

* :func:`check_module_sizes`: the parameters and buffers that the described modules and attributes would
  create, in bytes, against a cap the loader derives from the weights actually present in the file (a file
  cannot make us allocate much more than it brought).
* :func:`dry_run`: the graph is interpreted node by node on a meta input of its recorded size. Before each
  arithmetic operator its operands are checked to be numbers or tensors (``"a" * 10**12`` never runs); after
  each node its value is checked: tensors up to :data:`MAX_TENSOR_ELEMENTS`, all tensors together up to
  :data:`MAX_TOTAL_ELEMENTS`, integers up to 2**48, strings and containers up to 4096 entries. An
  ``nn.Upsample(scale_factor=10**6)`` or a chain of squarings is refused here, at load time.

A forward at another input size than the recorded one is the caller's choice; these checks bound what the
file alone can make cheapconv do.
"""

from __future__ import annotations

import operator
import time
from typing import Any

import torch
from torch import fx, nn

from .graph_vocab import NUMERIC_OPERATORS, NotDescribable

__all__ = ["MAX_CHECK_SECONDS", "MAX_TENSOR_ELEMENTS", "MAX_TOTAL_ELEMENTS", "LimitError", "check_module_sizes",
           "dry_run", "tensor_bytes"]

#: a real model's graph is checked in well under a second; a crafted one is stopped here
MAX_CHECK_SECONDS = 30
#: the largest tensor a graph may produce at its recorded input size (batch 2)
MAX_TENSOR_ELEMENTS = 2**30
#: all tensors a graph produces at its recorded input size, together
MAX_TOTAL_ELEMENTS = 2**34
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


def _check_value(value: Any, totals: list[int], depth: int = 0) -> None:
    if depth > 8:
        raise LimitError("values nested too deeply")
    if isinstance(value, torch.Tensor):
        n = value.numel()
        totals[0] += n
        if n > MAX_TENSOR_ELEMENTS:
            raise LimitError(f"a tensor of {n:,} elements at the recorded input size")
        if totals[0] > MAX_TOTAL_ELEMENTS:
            raise LimitError(f"more than {MAX_TOTAL_ELEMENTS:,} tensor elements in one forward")
    elif isinstance(value, bool | float | type(None) | torch.dtype | torch.device | torch.Size):
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
            _check_value(v, totals, depth + 1)
    elif isinstance(value, dict):
        if len(value) > _MAX_LEN:
            raise LimitError("a mapping with more than 4096 entries")
        for v in value.values():
            _check_value(v, totals, depth + 1)


class _CheckedInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)
        self.totals = [0]
        self.deadline = time.monotonic() + MAX_CHECK_SECONDS

    def call_function(self, target, args, kwargs):
        _check_operands(target, args, kwargs)
        return super().call_function(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        if time.monotonic() > self.deadline:
            raise LimitError(f"checking the graph took more than {MAX_CHECK_SECONDS} s on shapes alone")
        value = super().run_node(n)
        _check_value(value, self.totals)
        return value


def dry_run(meta_gm: fx.GraphModule, input_size: tuple[int, ...]) -> None:
    """Interpret ``meta_gm`` (built on the meta device) on a batch of 2 inputs of ``input_size``, checking
    every value (see the module docstring). Raises :class:`LimitError`, or whatever the graph raises."""
    x = torch.empty((2, *input_size), device="meta")
    with torch.no_grad():
        _CheckedInterpreter(meta_gm.eval()).run(x)
