"""Parameter and MAC counting exactly as ``moonshine.md`` section 3 defines them.

* ``trainable``: the sum of parameters with ``requires_grad``.
* ``paper``: every state-dict tensor except BatchNorm's ``num_batches_tracked`` (trainable + BN running
  mean and variance). The paper's tables use this convention.
* MACs: multiply-accumulates of Conv and Linear layers (stem, shortcuts and classifier included) for the
  given input shape. They are MACs, not FLOPs (FLOPs ≈ 2 × MACs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

Convention = Literal["trainable", "paper"]


def count_params(model: nn.Module, convention: Convention = "trainable") -> int:
    """Count parameters; ``convention`` is ``"trainable"`` or ``"paper"`` (see the module docstring).

    >>> from cheapconv.models import WideResNet
    >>> count_params(WideResNet(40, 2), "paper")
    2248954
    """
    if convention == "trainable":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if convention == "paper":
        return sum(t.numel() for name, t in model.state_dict().items()
                   if not name.endswith("num_batches_tracked"))
    raise ValueError(f"convention must be 'trainable' or 'paper', not {convention!r}")


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


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one Conv or Linear call, given its output (the batch dimension included)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_macs(model: nn.Module, input_shape: tuple[int, ...] | torch.Size, *,
               per_layer: bool = False) -> int | tuple[int, dict[str, int]]:
    """Multiply-accumulates of one forward pass on an input of ``input_shape`` (batch included, e.g.
    ``(1, 3, 32, 32)``); the count covers the whole batch, so use batch 1 for "MACs per image".

    With ``per_layer=True`` returns ``(total, {module_name: macs})``. A module called several times is
    counted at every call. The model runs once in eval mode under no_grad on a zero input.

    >>> from cheapconv.models import WideResNet
    >>> round(count_macs(WideResNet(40, 2), (1, 3, 32, 32)) / 1e6, 1)
    327.6
    """
    counts: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            def hook(mod, args, out, _name=name):
                counts[_name] = counts.get(_name, 0) + layer_macs(mod, out)
            handles.append(m.register_forward_hook(hook))
    try:
        shape_forward(model, input_shape, on_retry=counts.clear)
    finally:
        for h in handles:
            h.remove()
    total = sum(counts.values())
    return (total, counts) if per_layer else total


def shape_forward(model: nn.Module, input_shape: tuple[int, ...] | torch.Size, on_retry=None) -> None:
    """Run ``model`` once on a zero input of ``input_shape`` in eval mode, for its hooks' sake.

    Shapes are all that counting needs, so this first runs on the meta device (no arithmetic: ResNet-34 at
    224 in ~50 ms instead of a real forward), swapping meta stand-ins for the weights with
    ``torch.func.functional_call`` (the model's own tensors are untouched). Models that cannot run on meta
    tensors (data-dependent Python, ops without meta kernels) fall back to a real forward; ``on_retry`` is
    called first so hooks can forget what the failed attempt recorded.
    """
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    with eval_mode(model), torch.no_grad():
        try:
            from torch.func import functional_call

            stand_ins = {name: torch.empty_like(t, device="meta")
                         for name, t in [*model.named_parameters(), *model.named_buffers()]}
            functional_call(model, stand_ins, (torch.zeros(tuple(input_shape), device="meta", dtype=dtype),),
                            strict=False)
            return
        except Exception:  # noqa: BLE001 - any failure on meta means: measure for real
            if on_retry is not None:
                on_retry()
        device = param.device if param is not None else None
        model(torch.zeros(tuple(input_shape), device=device, dtype=dtype))
