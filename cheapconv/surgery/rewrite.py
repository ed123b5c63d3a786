"""Applying a plan: ``cheapen(model, policy)`` = trace -> plan -> apply -> taps -> recipe.

The input model is never modified: tracing works on a deep copy. Conv-level replacements swap the module
at the conv's name (its graph node is unchanged); block-level replacements put the bottleneck at the first
conv's name, route the second conv's users to it and delete the nodes in between.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx, nn

from ..blocks import BlockSpec
from ..errors import UsageError
from ..fx.analysis import Analysis
from ..fx.attributes import keep_through_copies
from ..fx.tap import Tap
from ..models.preprocessing import preprocessing_of
from .planner import build_plan, prepare
from .plans import Plan
from .policy import Policy, parse_policy
from .taps import insert_taps
from .teacher_init import init_from_teacher

#: how replaced blocks start: "random" (the papers) or "teacher" (closed forms from the replaced convs)
INITS = ("random", "teacher")


def apply_plan(analysis: Analysis, plan: Plan) -> nn.Module:
    """Mutate ``analysis.model`` (cheapconv's private working copy) as ``plan`` says; return it."""
    model = analysis.model
    for entry in plan.replaced:
        replacement = analysis.replacements[entry.layer]
        if len(entry.convs) == 1:
            model.set_submodule(entry.convs[0], replacement)
            continue
        # a factorised pair (k×1, 1×k) or a residual pair: the block takes the first conv's place either way
        pair = analysis.factored_starting_at(entry.convs[0]) or analysis.pair_starting_at(entry.convs[0])
        model.set_submodule(pair.a.name, replacement)
        graph = model.graph
        pair.b.node.replace_all_uses_with(pair.a.node)
        graph.erase_node(pair.b.node)
        for node in reversed(pair.between):
            graph.erase_node(node)
    if isinstance(model, fx.GraphModule):
        model.graph.lint()
        model.delete_all_unused_submodules()
        model.recompile()
    return model


def cheapen(model: nn.Module, policy: str | Policy | BlockSpec, *,
            example_input: torch.Tensor | list[torch.Tensor] | None = None,
            input_size: tuple[int, ...] | None = None, strict: bool = False, leaf_modules=(),
            stages: list[str] | None = None, taps: bool = True, model_name: str | None = None,
            init: str = "random", round_to: int | None = None) -> nn.Module:
    """Return a student: ``model`` with its convolutions replaced by cheap blocks as ``policy`` says.

    ``policy`` is a block spec (``"G(4)"``) or rules (``"conv1=keep; layer4.*=BG(2,4); G(4)"``); see
    :mod:`cheapconv.surgery.policy`. The result is a new module (an ``fx.GraphModule`` when the model traces, else a
    copy with replaced conv modules) with the same output shape; ``model`` is left untouched.
    Replacements inherit the replaced conv's device, dtype and training flag. With ``init="random"`` (the
    default, as in the papers) they start from random weights; with ``init="teacher"`` from the replaced convs'
    weights (:func:`~cheapconv.surgery.teacher_init.init_from_teacher`: closed forms, exact at full rank, for
    the linear blocks and a documented linear start for ``G``, ``B``, ``BG``), with one record per site in
    ``student.cheapconv_init``. Either way ``model`` is only read.

    The student carries ``cheapconv_plan`` (the :class:`~cheapconv.surgery.plans.Plan` that was applied),
    ``cheapconv_recipe`` (what :func:`cheapconv.save` records), Tap modules at the stage outputs, and the
    teacher's ``cheapconv_preprocessing`` (how it must be fed; at ``input_size`` where one is given).

    ``example_input`` (a batch, or a list of C×H×W images as torchvision's detectors take them) /
    ``input_size`` (C, H, W) set the resolution for MACs (default: the model's native one); ``strict`` turns
    every layer that cannot take its block into an error; ``leaf_modules`` are module classes or names that fx
    must not trace into. ``round_to`` (8 or 16) rounds every block's inner widths (ranks, bottleneck widths,
    channels per group) to multiples of it, as ``@8`` after a spec does (``B(2)@8``): where int8 and
    tensor-core kernels want them.

    >>> from cheapconv.models import WideResNet
    >>> student = cheapen(WideResNet(40, 2), "G(4)")
    >>> from cheapconv import count_params
    >>> count_params(student, "paper")
    825210
    """
    if init not in INITS:
        raise UsageError(f"init={init!r} is not a way to start the student: use 'random' (fresh weights, as in the "
                         "papers) or 'teacher' (set from the teacher's convs).")
    policy = parse_policy(policy).rounded(round_to)
    name = model_name or getattr(model, "cheapconv_source", None) or type(model).__name__
    analysis, found_stages, notes, totals = prepare(model, example_input=example_input, input_size=input_size,
                                                    leaf_modules=leaf_modules, stages=stages)
    the_plan = build_plan(analysis, policy, model_name=name, strict=strict, totals_before=totals,
                          stages=found_stages, notes=notes)
    for note in the_plan.notes:
        warnings.warn(note, stacklevel=2)
    student = apply_plan(analysis, the_plan)
    existing = [t.stage for t in student.modules() if isinstance(t, Tap)]
    if existing:  # the model came with taps (e.g. loaded from a file): they are already in the graph
        the_plan.stages = existing
    elif taps and isinstance(student, fx.GraphModule):
        the_plan.stages = insert_taps(student, found_stages)
        for tap in student.modules():  # new modules start in training mode; follow the student's flag
            if isinstance(tap, (Tap, nn.ModuleDict)):
                tap.training = student.training
    student.cheapconv_plan = the_plan
    if init == "teacher":
        student.cheapconv_init = init_from_teacher(student, model)
    student.cheapconv_stages = list(the_plan.stages)
    student.cheapconv_recipe = {
        "source": getattr(model, "cheapconv_source", None),
        "source_kwargs": dict(getattr(model, "cheapconv_source_kwargs", {}) or {}),
        "model": name,
        "policy": str(policy),
        "input_size": list(analysis.input_shape),
        "leaf_modules": [m if isinstance(m, str) else m.__name__ for m in leaf_modules],
        "plan": the_plan.to_dict(),
    }
    if init == "teacher":
        student.cheapconv_recipe["init"] = "teacher"
    classes = (getattr(model, "cheapconv_recipe", None) or {}).get("classes")
    if classes:
        student.cheapconv_recipe["classes"] = list(classes)
    record = preprocessing_of(model)
    if record is not None:   # fed as its teacher; at the size asked for, if one was
        shape = tuple(analysis.input_shape)
        explicit = (input_size is not None or example_input is not None) and len(shape) == 3
        student.cheapconv_preprocessing = record.at_size(shape) if explicit else record
    keep_through_copies(student)
    return student
