"""A stretch of a traced graph, runnable on its own: the original layers a block replaced, for timing.

Both the profiler (a student's block against the layers it replaced) and the block search (latency tables)
time an original ``conv -> norm -> act -> conv`` pair as one small module; this is that module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import fx, nn

__all__ = ["Chain", "node_steps"]


class Chain(nn.Module):
    """Run modules and graph functions one after another (an original pair, or two replaced convs).

    The modules among ``steps`` are registered as submodules, so that ``.to(device)``, copies and
    ``eval()`` reach them; the functions are called as they are.
    """

    def __init__(self, steps: list[nn.Module | Callable]):
        super().__init__()
        self.mods = nn.ModuleList([s for s in steps if isinstance(s, nn.Module)])
        self.steps = steps

    def forward(self, x):
        for step in self.steps:
            x = step(x)
        return x


def node_steps(gm: fx.GraphModule, nodes: list[fx.Node]) -> list[nn.Module | Callable]:
    """One step per graph node, each taking the running tensor as its first argument.

    A node's other arguments and keyword arguments are kept (``F.leaky_relu(x, 0.2)`` stays a slope of 0.2,
    ``x.clamp(max=6)`` keeps its bound): dropping them would time, or fail on, a different operation.
    Modules are copied, so that timing (which may move or convert them) leaves ``gm`` as it was.
    """
    steps: list[nn.Module | Callable] = []
    for node in nodes:
        if node.op == "call_module":
            steps.append(copy.deepcopy(gm.get_submodule(node.target)))
        elif node.op == "call_function":
            steps.append(lambda x, _f=node.target, _a=node.args[1:], _k=node.kwargs: _f(x, *_a, **_k))
        else:  # call_method
            steps.append(lambda x, _m=node.target, _a=node.args[1:], _k=node.kwargs:
                         getattr(x, _m)(*_a, **_k))
    return steps
