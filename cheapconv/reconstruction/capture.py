"""Streaming what a model computes at one site, batch by batch, without running the rest of it.

:func:`prefix_input` and :func:`prefix_output` run a model only as far as the module they watch: a hook
captures the tensor and raises :class:`_Reached`, which stops the forward there. Nothing is kept beyond the
one batch in hand, and the hooks are removed whatever happens, so the model is left as it was found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["call_order", "eval_flags", "prefix_input", "prefix_output", "site_outputs"]


class _Reached(Exception):
    """Raised by a capture hook to stop the forward pass once the watched tensor exists."""


def prefix_input(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The input of ``model``'s module ``path`` when ``model`` reads ``x`` (the rest of the model is not run)."""
    return _run_until(model, path, x, want_output=False)


def prefix_output(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``model``'s module ``path`` when ``model`` reads ``x`` (the rest of the model is not run)."""
    return _run_until(model, path, x, want_output=True)


def _run_until(model: nn.Module, path: str, x: torch.Tensor, *, want_output: bool) -> torch.Tensor:
    """Run ``model`` on ``x`` until module ``path`` has read its input (or produced its output), then stop."""
    got: list[torch.Tensor] = []

    def hook(module, args, out=None):
        got.append(out if want_output else args[0])
        raise _Reached

    module = model.get_submodule(path)
    handle = module.register_forward_hook(hook) if want_output else module.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not got:
        raise RuntimeError(f"{path} was never called")
    return got[0]


def site_outputs(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of every module in ``paths`` in one whole forward of ``model`` on ``x``."""
    got: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(p).register_forward_hook(lambda m, a, out, _p=p: got.__setitem__(_p, out))
               for p in paths]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return got


@contextlib.contextmanager
def eval_flags(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode and restore every submodule's own training flag on exit."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for flags in saved:
            for m, flag in flags:
                m.training = flag


def call_order(model: nn.Module, modules: list[nn.Module], example: torch.Tensor) -> list[int]:
    """The indices of ``modules`` that ``model`` calls in one forward on ``example``, in the order it first calls
    them (a module never called is left out)."""
    order: dict[int, int] = {}

    def seen(i: int):
        def hook(module, args) -> None:   # returns None: a pre-hook's return value would replace the input
            order.setdefault(i, len(order))
        return hook

    handles = [m.register_forward_pre_hook(seen(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return sorted(order, key=order.get)
