"""A model as one training phase sees it: only some of its modules trained, and its prediction read at a side head.

ERFNet's recipe trains the encoder first, scored through its own 1×1 output conv at 1/8 of the input's size,
then the whole network. :class:`PhaseView` lets the ordinary training loop (:func:`cheapconv.distill`) run such a
phase unchanged: it is a view of the model that shares the model's modules, parameters and buffers (so module
names, taps, state-dict keys, checkpoints and the student's plan are the model's own), whose forward returns the
output of the :class:`~cheapconv.blocks.SideHead` named ``target`` (the forward stops there, so a decoder is not
run), and whose ``train()`` keeps the modules it does not train in eval mode (their BatchNorm statistics and
dropout unchanged). :func:`frozen_except` turns gradients off for the parameters outside the trained modules for
the length of a phase; the optimiser then never sees them.

:func:`modules_up_to` says which modules a forward runs up to a side head: what ``train="encoder"`` trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..blocks import SideHead, SideHeadReached, side_outputs
from ..counting import eval_mode
from ..errors import UsageError

__all__ = ["PhaseView", "frozen_except", "modules_up_to", "side_head_names"]


def side_head_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s :class:`~cheapconv.blocks.SideHead` modules (their ``name``, e.g. ``"encoder"``)."""
    return [m.name for m in model.modules() if isinstance(m, SideHead)]


def _under(name: str, prefixes: frozenset[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class PhaseView(nn.Module):
    """``model`` seen by one phase: ``trained`` module names (None: all) and the prediction at ``target`` (the
    name of a side head; None: the model's own output). See the module docstring.

    >>> from cheapconv import create_model
    >>> net = create_model("erfnet", num_classes=11)
    >>> view = PhaseView(net, trained=None, target="encoder")
    >>> view(torch.zeros(1, 3, 64, 64)).shape          # the encoder's own 1×1 conv, at 1/8 of the input
    torch.Size([1, 11, 8, 8])
    >>> sorted(view.state_dict()) == sorted(net.state_dict())
    True
    """

    def __init__(self, model: nn.Module, *, trained: Iterable[str] | None = None, target: str | None = None):
        super().__init__()
        if target is not None and target not in side_head_names(model):
            names = ", ".join(map(repr, side_head_names(model))) or "none"
            raise UsageError(f"A phase reads its prediction at the side head {target!r}, but the model has no side "
                             f"head of that name (its side heads: {names}). Use target='final' for the model's own "
                             "output, or a model whose encoder has its own output conv (ERFNet's 'encoder').")
        self.__dict__["wrapped"] = model            # not registered: the view *is* the model's modules
        self.__dict__["_modules"] = model._modules
        self.__dict__["_parameters"] = model._parameters
        self.__dict__["_buffers"] = model._buffers
        self.__dict__["trained"] = frozenset(trained) if trained is not None else None
        self.__dict__["target"] = target
        self.training = model.training

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:   # the model's own attributes: its plan, recipe, preprocessing record, ...
            return getattr(self.__dict__["wrapped"], name)

    @property
    def module(self) -> nn.Module:
        """The model itself, where code that unwraps a wrapper looks for it (as for DistributedDataParallel):
        taps are recorded on the model, so a traced model's hollow containers are handled as they always are."""
        return self.__dict__["wrapped"]

    def forward(self, x: torch.Tensor) -> Any:
        model, target = self.__dict__["wrapped"], self.__dict__["target"]
        if target is None:
            return model(x)
        with side_outputs(model, stop_at=target):
            try:
                model(x)
            except SideHeadReached as reached:
                return reached.output
        raise UsageError(f"The model's forward never ran its side head {target!r}, so a phase cannot read its "
                         "prediction there.")

    def train(self, mode: bool = True) -> PhaseView:
        super().train(mode)
        self.__dict__["wrapped"].training = mode
        trained = self.__dict__["trained"]
        if mode and trained is not None:   # modules this phase does not train keep their statistics and dropout off
            for name, m in self.named_modules():
                if name and not _under(name, trained) and not any(t.startswith(name + ".") for t in trained):
                    m.training = False
        return self

    def extra_repr(self) -> str:
        trained, target = self.__dict__["trained"], self.__dict__["target"]
        what = "all modules" if trained is None else f"{len(trained)} modules"
        return f"trains {what}, prediction at {target or 'the output'!r}"


@contextlib.contextmanager
def frozen_except(model: nn.Module, trained: Iterable[str] | None) -> Iterator[list[str]]:
    """Within the block, only the parameters of the modules named in ``trained`` (and their submodules) require
    gradients (None: every parameter keeps its flag). Yields the names of the parameters frozen; every flag is
    restored on exit."""
    if trained is None:
        yield []
        return
    keep = frozenset(trained)
    flags = [(n, p, p.requires_grad) for n, p in model.named_parameters()]
    frozen = [n for n, p, _ in flags if not _under(n.rsplit(".", 1)[0] if "." in n else "", keep)]
    try:
        for n, p, _ in flags:
            if n in frozen:
                p.requires_grad_(False)
        yield frozen
    finally:
        for _, p, flag in flags:
            p.requires_grad_(flag)


def modules_up_to(model: nn.Module, head: str, example: torch.Tensor) -> tuple[list[str], tuple[int, ...]]:
    """The modules ``model``'s forward runs on ``example`` up to and including the side head named ``head``
    (by name, in the order they run; in a traced model only the leaves run), and the shape of that head's output.
    Runs one forward in eval mode without gradients; the model is unchanged."""
    ran: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, _n=name: ran.append(_n))
               for name, m in model.named_modules() if name]
    try:
        with eval_mode(model), torch.no_grad(), side_outputs(model, stop_at=head):
            try:
                model(example)
            except SideHeadReached as reached:
                return list(dict.fromkeys(ran)), tuple(reached.output.shape)
    finally:
        for h in handles:
            h.remove()
    raise UsageError(f"The model's forward never ran its side head {head!r}.")
