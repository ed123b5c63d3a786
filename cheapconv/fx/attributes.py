"""Keep cheapconv's records on a graph module through ``copy.deepcopy``.

cheapconv hangs its records on the models it returns as ``cheapconv_*`` attributes: the plan, the recipe that
:func:`cheapconv.save` writes, how the model must be fed, its stages. Most students are ``torch.fx.GraphModule``
objects, and ``GraphModule.__deepcopy__`` rebuilds the copy from its graph: it keeps only the submodules the graph
calls, the state-dict hooks and the attributes listed in ``meta["_user_preserved_attributes"]``. Without this, a
deep copy of a student (which users are told to make before training in place, and which the library makes before
timing or exporting) silently lost its recipe and preprocessing, so the copy could not be evaluated at step 0, fed
as its teacher, or saved with its recipe.
"""
from __future__ import annotations

import torch.fx as fx

try:  # the key torch reads in GraphModule.__deepcopy__ (private, so read it from torch where it is defined)
    from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY as _PRESERVED_KEY
except ImportError:  # pragma: no cover - older torch
    _PRESERVED_KEY = "_user_preserved_attributes"

PREFIX = "cheapconv_"


def keep_through_copies(model) -> None:
    """Register every ``cheapconv_*`` attribute of ``model`` (a graph module) to survive ``copy.deepcopy``.

    Call it after setting the attributes: it records their current values (a later reassignment needs another
    call; changes made inside the same object are seen, as the record holds the object itself). Models that are not
    graph modules keep their attributes through ``deepcopy`` anyway, so they are left alone.
    """
    if not isinstance(model, fx.GraphModule):
        return
    preserved = model.meta.setdefault(_PRESERVED_KEY, {})
    for name, value in vars(model).items():
        if name.startswith(PREFIX):
            preserved[name] = value
