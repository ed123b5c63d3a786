"""The optimiser's parameter groups: weight decay scaled by compression on structured blocks.

The deficient-efficient recipe (``spec/blockswap-and-structured.md`` §2) scales the weight decay of a
structured block's parameters by its compression ratio, compressed parameters / dense parameters of the conv
it replaced: a block holding a tenth of the conv's parameters gets a tenth of the decay. Without it the
heavily compressed substitutes (``Shuffle`` most of all) are pulled towards zero much harder, per remaining
parameter, than the dense layers around them. ``DistillConfig(structured_wd=False)`` (``--no-structured-wd``)
gives every parameter the same decay.

Structured blocks are the pointwise substitutes and factorisations, which have no norm inside: ``Sep``,
``LR``, ``LRp``, ``Shuffle``, ``ACDC``, ``TT``, ``Tucker``, ``Tucker2``, ``SVDk``. Moonshine's ``G``/``B``/``BG``
blocks keep the plain decay, as in that paper's recipe. Which block replaced which conv, and both parameter
counts, come from the student's plan (``cheapconv_plan``); a model without one gets a single group.
"""

from __future__ import annotations

from torch import nn

__all__ = ["STRUCTURED_FAMILIES", "parameter_groups"]

STRUCTURED_FAMILIES = frozenset({"Sep", "LR", "LRp", "Shuffle", "ACDC", "TT", "Tucker", "Tucker2", "SVDk"})


def _family(block: str | None) -> str:
    return (block or "").split("(", 1)[0]


def parameter_groups(student: nn.Module, weight_decay: float, *, structured: bool = True) -> list[dict]:
    """SGD parameter groups for ``student``: one ``{"params", "weight_decay", "name"}`` per structured site
    (decay × params after / params before of its plan entry) when ``structured``, and one group with the plain
    ``weight_decay`` for every other trainable parameter. Each parameter appears once."""
    trainable = [p for p in student.parameters() if p.requires_grad]
    plan = getattr(student, "cheapconv_plan", None)
    groups, taken = [], set()
    if structured and plan is not None:
        for entry in plan.replaced:
            if _family(entry.block) not in STRUCTURED_FAMILIES or entry.params_before <= 0:
                continue
            try:
                block = student.get_submodule(entry.convs[0])
            except AttributeError:
                continue
            params = [p for p in block.parameters() if p.requires_grad and id(p) not in taken]
            if not params:
                continue
            taken.update(id(p) for p in params)
            ratio = entry.params_after / entry.params_before
            groups.append({"params": params, "weight_decay": weight_decay * ratio,
                           "name": f"{entry.layer} {entry.block} (decay × {ratio:.3g})"})
    rest = [p for p in trainable if id(p) not in taken]
    if rest or not groups:
        groups.insert(0, {"params": rest, "weight_decay": weight_decay, "name": "default"})
    return groups
