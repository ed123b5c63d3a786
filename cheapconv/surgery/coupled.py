"""Thinning a channel group: the same channels removed from every layer that writes, normalises or reads them.

A :class:`cheapconv.fx.groups.ChannelGroup` is a set of channels that can only shrink together (a stage's residual
stream, or a pair's inner width). :func:`thin_groups` keeps the given channel indices in every writer's output rows
(and bias), every BatchNorm's entries (affine parameters and running statistics), every depthwise conv's filters and
every reader's input columns (convs and the classifier), on a copy of the model: at keep-all it is the teacher
exactly. Several groups can be thinned at once; a conv that reads one group and writes another is sliced on both
axes.

Which channels: :func:`group_importance` scores each channel by what the group's BatchNorms let through and what
its readers read of it,

    importance_c = (Σ_bn √(γ_c² + β_c²) / mean) · (Σ_readers ‖R[:, c]‖ / mean)

each layer's term divided by its mean over the channels, so no layer outweighs the others by its scale alone; where
no BatchNorm is on the group the writers' row norms stand in for the first factor. On a pair's inner width (one
BatchNorm, one reader) it ranks the channels as :func:`cheapconv.surgery.block_init.channel_importance` does for
``W(f)``. The readers are then refitted by least squares on calibration data
(:func:`cheapconv.reconstruction.refit_readers`). :func:`thinned_counts` gives the exact parameters and MACs of a
set of choices without building the model, for pricing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..blocks.thin import kept_channels
from ..counting import Convention, count_macs, count_params, shape_forward
from ..errors import UsageError
from ..fx.groups import ChannelGroup

__all__ = ["group_importance", "thin_group", "thin_groups", "thinned_counts", "top_channels"]

Choices = Sequence[tuple[ChannelGroup, torch.Tensor]]


def _normalised(values: torch.Tensor) -> torch.Tensor:
    return values / values.mean().clamp_min(1e-30)


def group_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Each of the group's channels' importance in ``model`` (float64, see the module docstring)."""
    _check_thinnable(group)
    norms = [model.get_submodule(n) for n in group.norms]
    if norms:
        passed = sum(_normalised((bn.weight.detach().double().square() + bn.bias.detach().double().square()).sqrt())
                     for bn in norms)
    else:
        passed = sum(_normalised(w.reshape(w.shape[0], -1).norm(dim=1))
                     for w in (model.get_submodule(n).weight.detach().double() for n in group.writers))
    read = sum(_normalised(w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1))
               for w in (model.get_submodule(n).weight.detach().double() for n in group.readers))
    if not group.readers:
        read = torch.ones(group.channels, dtype=torch.float64)
    return passed * read


def top_channels(model: nn.Module, group: ChannelGroup, fraction: float) -> torch.Tensor:
    """The indices (ascending) of the ``kept_channels(fraction, channels)`` most important channels of ``group``
    (ties: the lower index), as ``W(f)`` counts them."""
    keep = kept_channels(fraction, group.channels)
    order = torch.sort(-group_importance(model, group), stable=True).indices
    return order[:keep].sort().values


def _check_thinnable(group: ChannelGroup) -> None:
    if group.fixed is not None:
        raise UsageError(f"The channel group at {group.label} cannot be thinned: {group.fixed}. Choose a group whose "
                         "'fixed' is None (cheapconv.fx.groups.channel_groups lists them).")


def _indices(group: ChannelGroup, keep) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() < 1 or int(keep.min()) < 0 or int(keep.max()) >= group.channels or \
            keep.unique().numel() != keep.numel():
        raise UsageError(f"The channels to keep of the group at {group.label} must be distinct indices in "
                         f"[0, {group.channels}), at least one; got {keep.numel()} from "
                         f"{int(keep.min()) if keep.numel() else '-'} to {int(keep.max()) if keep.numel() else '-'}.")
    return keep


def _parameter(old: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.clone(), requires_grad=old.requires_grad)


def _slice(module: nn.Module, name: str, dim: int, keep: torch.Tensor, channels: int) -> None:
    """Keep ``keep`` along ``dim`` (0: outputs, 1: inputs) of a conv, BatchNorm or Linear, in place."""
    have = module.weight.shape[dim] if not isinstance(module, nn.BatchNorm2d) else module.num_features
    if have != channels:
        raise UsageError(f"{name} has {have} channels where the group has {channels}: the group was found on "
                         "another model. Find the groups on the model you thin.")
    idx = keep.to(module.weight.device)
    with torch.no_grad():
        if isinstance(module, nn.BatchNorm2d):
            module.weight = _parameter(module.weight, module.weight[idx])
            module.bias = _parameter(module.bias, module.bias[idx])
            module.running_mean = module.running_mean[idx].clone()
            module.running_var = module.running_var[idx].clone()
            module.num_features = len(keep)
            return
        module.weight = _parameter(module.weight, module.weight.index_select(dim, idx))
        if dim == 0 and module.bias is not None:
            module.bias = _parameter(module.bias, module.bias[idx])
    if isinstance(module, nn.Linear):
        module.in_features = len(keep)
    elif module.groups > 1:   # depthwise: one filter per channel, so channels in, out and groups shrink together
        module.in_channels = module.out_channels = module.groups = len(keep)
    elif dim == 0:
        module.out_channels = len(keep)
    else:
        module.in_channels = len(keep)


def thin_groups(model: nn.Module, choices: Choices) -> nn.Module:
    """A copy of ``model`` with each ``(group, keep)`` of ``choices`` thinned to the channels ``keep`` (indices
    into the group's channels, kept in their order); ``model`` is unchanged. The groups must be distinct groups of
    ``model`` (or of the traced model, whose module names are the same) that are not fixed."""
    seen: set[ChannelGroup] = set()
    prepared = []
    for group, keep in choices:
        _check_thinnable(group)
        if group in seen:
            raise UsageError(f"The group at {group.label} is chosen twice; give each group one set of channels.")
        seen.add(group)
        prepared.append((group, _indices(group, keep)))
    student = copy.deepcopy(model)
    for group, keep in prepared:
        for name in group.writers:
            _slice(student.get_submodule(name), name, 0, keep, group.channels)
        for name in (*group.norms, *group.depthwise):
            _slice(student.get_submodule(name), name, 0, keep, group.channels)
        for name in group.readers:
            _slice(student.get_submodule(name), name, 1, keep, group.channels)
    return student


def thin_group(model: nn.Module, group: ChannelGroup, keep) -> nn.Module:
    """:func:`thin_groups` for one group."""
    return thin_groups(model, [(group, keep)])


def _module_cost(module: nn.Module, out_ch: int, in_ch: int, pixels: int, convention: Convention
                 ) -> tuple[int, int]:
    """(params in ``convention``, MACs) of a dense conv, BatchNorm or Linear at the given widths."""
    def counted(p) -> bool:
        return p is not None and (p.requires_grad or convention == "paper")

    if isinstance(module, nn.BatchNorm2d):
        stats = 2 * out_ch if convention == "paper" and module.running_mean is not None else 0
        return out_ch * counted(module.weight) + out_ch * counted(module.bias) + stats, 0
    kernel = module.weight[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
    weights = out_ch * in_ch * kernel
    return weights * counted(module.weight) + out_ch * counted(module.bias), weights * pixels


def thinned_counts(model: nn.Module, choices: Sequence[tuple[ChannelGroup, int]],
                   input_shape: tuple[int, ...], convention: Convention = "trainable") -> tuple[int, int]:
    """(params in ``convention``, MACs at ``input_shape``) of ``model`` with each ``(group, kept)`` of ``choices``
    thinned to ``kept`` channels: exactly what :func:`thin_groups` builds counts (:func:`cheapconv.count_params`,
    :func:`cheapconv.count_macs`), computed from the layers' shapes."""
    widths: dict[str, list[int | None]] = {}    # module -> [out, in]; None: as it is
    for group, kept in choices:
        _check_thinnable(group)
        for name in (*group.writers, *group.norms, *group.depthwise):   # a depthwise conv's weight is C×1×k×k
            widths.setdefault(name, [None, None])[0] = int(kept)
        for name in group.readers:
            widths.setdefault(name, [None, None])[1] = int(kept)
    pixels: dict[str, int] = {}

    def positions(name: str):
        def hook(module, args, out) -> None:   # returns None: a forward hook's return value replaces the output
            # output positions over the batch: each costs one MAC per weight (a Linear's output is one position)
            pixels.setdefault(name, out[0, 0].numel() * out.shape[0])
        return hook

    handles = [model.get_submodule(name).register_forward_hook(positions(name)) for name in widths]
    try:
        shape_forward(model, input_shape, on_retry=pixels.clear)
    finally:
        for h in handles:
            h.remove()
    params, macs = count_params(model, convention), count_macs(model, input_shape)
    for name, (out_ch, in_ch) in widths.items():
        module = model.get_submodule(name)
        if isinstance(module, nn.BatchNorm2d):
            full = (module.num_features, module.num_features)
        else:
            full = tuple(module.weight.shape[:2])
        old = _module_cost(module, *full, pixels.get(name, 0), convention)
        new = _module_cost(module, out_ch or full[0], in_ch or full[1], pixels.get(name, 0), convention)
        params += new[0] - old[0]
        macs += new[1] - old[1]
    return params, macs
