"""Graph edits shared by the layers above: marking a node's output with an identity module."""

from __future__ import annotations

from torch import fx, nn

__all__ = ["insert_after"]


def insert_after(gm: fx.GraphModule, node: fx.Node, target: str, module: nn.Module) -> fx.Node:
    """Register ``module`` (an identity, such as a :class:`~cheapconv.fx.tap.Tap`) at ``target`` and call it on
    ``node``'s output right after ``node``; every other user of ``node`` then reads the new node instead.

    The caller recompiles ``gm`` once after its last insertion. Used to give a hook a module to sit on where
    the graph has none (stage outputs for attention transfer, branch outputs for Fisher scoring).
    """
    parent, _, name = target.rpartition(".")
    gm.get_submodule(parent).add_module(name, module)  # first: call_module checks that its target exists
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(target, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new
