"""The node vocabulary of graph analysis: which fx nodes are activations, adds, norms, pass-throughs.

Shared by :mod:`cheapconv.fx.analysis` (residual pairs), :mod:`cheapconv.surgery.taps` (stage ends) and the
block search (:mod:`cheapconv.blockswap.space`), so the three agree on what a residual branch looks like.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["ACT_FUNCTIONS", "ACT_METHODS", "ACT_MODULES", "ADD_FUNCTIONS", "ADD_METHODS", "FUNCTIONAL_CONVS",
           "MUL_FUNCTIONS", "MUL_METHODS", "NORM_TYPES", "is_activation", "is_add", "is_passthrough", "layers_between",
           "module_of", "single_user"]

#: norms: fx leaves, and pass-throughs inside a residual branch
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU,
                nn.CELU, nn.SELU, nn.Tanh)
ACT_FUNCTIONS = {F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.elu, F.mish, torch.relu,
                  torch.relu_, F.relu_}
ACT_METHODS = {"relu", "relu_"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
MUL_METHODS = {"mul", "mul_"}
FUNCTIONAL_CONVS = {F.conv2d, torch.conv2d}


def module_of(gm: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(node.target)


def is_passthrough(gm: nn.Module, node: fx.Node) -> bool:
    """A node that may sit between the two convs of a pair (norm, activation, dropout, identity...)."""
    if node.op == "call_module":
        m = module_of(gm, node)
        if isinstance(m, nn.Conv2d):
            return False
        if isinstance(m, (*NORM_TYPES, *ACT_MODULES, nn.Identity, nn.Dropout, nn.Dropout2d)):
            return True
        # parameter-free leaves such as drop-path / drop-block
        return next(iter(m.parameters()), None) is None and not any(True for _ in m.children())
    if node.op == "call_function":
        return node.target in ACT_FUNCTIONS
    if node.op == "call_method":
        return node.target in ACT_METHODS
    return False


def is_activation(gm: nn.Module, node: fx.Node) -> bool:
    """An activation (module, function or method) or an identity: what may sit inside a factorised pair."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), (*ACT_MODULES, nn.Identity))
    if node.op == "call_function":
        return node.target in ACT_FUNCTIONS
    if node.op == "call_method":
        return node.target in ACT_METHODS
    return False


def is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or \
        (node.op == "call_method" and node.target in ADD_METHODS)


def single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


#: activation functions and methods with no extra argument, as the module that computes the same
_ACT_AS_MODULE = {F.relu: nn.ReLU, torch.relu: nn.ReLU, torch.relu_: nn.ReLU, F.relu_: nn.ReLU, "relu": nn.ReLU,
                  "relu_": nn.ReLU, F.relu6: nn.ReLU6, F.silu: nn.SiLU, F.hardswish: nn.Hardswish, F.mish: nn.Mish}


def layers_between(gm: nn.Module, nodes: list[fx.Node]) -> list[nn.Module | str]:
    """The layers a residual pair's ``between`` nodes apply, in order: each module, an argument-free activation
    function (``F.relu(x)``, ``x.relu()``) as its module, and anything else as a string naming it. Blocks that
    rebuild these layers (``W(f)``) read them; ``gm`` is not changed."""
    layers: list[nn.Module | str] = []
    for node in nodes:
        if node.op == "call_module":
            layers.append(gm.get_submodule(node.target))
            continue
        plain = len(node.args) == 1 and not {k for k in node.kwargs if k != "inplace"}
        module = _ACT_AS_MODULE.get(node.target) if plain else None
        name = getattr(node.target, "__name__", str(node.target))
        layers.append(module() if module is not None else f"{name}(...) (a {node.op.replace('_', ' ')})")
    return layers
