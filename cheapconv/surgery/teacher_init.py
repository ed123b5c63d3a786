"""Students that start from their teacher: closed-form initialisation of every replaced site, no data needed.

``cheapen(model, policy, init="teacher")`` calls :func:`init_from_teacher` on the new student. Each cheap block
class has an initialiser (a registry keyed by the module class, like the blocks themselves) that sets the
block's weights from the teacher conv(s) it replaced, using the factorisations of
:mod:`cheapconv.blocks.factorize`. Every site gets an :class:`InitRecord` with one of these kinds:

* ``exact``: a linear block whose closed form reproduces the teacher's kernel (relative weight error ≤ 1e-5);
* ``approximate``: a linear block, the closed form truncated (the relative weight error says how much);
* ``linear start``: a block with a norm and an activation inside (``G``, ``B``, ``BG``), which no closed form
  reproduces; the start is the best linear one we can justify (each initialiser's docstring says which);
* ``random``: no closed form (``ACDC``): random as before, only a depthwise part taken from the teacher.

The relative weight error ‖Ŵ − W‖/‖W‖ compares the kernel the block computes with the teacher's (for
``linear start`` blocks, the kernel of their linear path with the ReLU ignored, or None where there is no such
kernel). With ``example_input``, each site's relative *output* error on the teacher's own input to that site is
measured too. The teacher is only read, never changed (its training flags are restored after that pass).

:func:`replaced_sites` pairs every replaced site's teacher conv(s) with the student module that replaced them;
block-wise reconstruction builds on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..blocks import SamePadded
from ..blocks.factorize import compose_factorised
from ..counting import count_params, eval_mode
from ..errors import UsageError
from ..fx.analysis import factored_conv, is_factored
from .block_init import INITIALISERS, READS_BETWEEN, dilated_corners
from .plans import PlanEntry


@dataclass
class Site:
    """One replaced site: ``name`` (the plan's layer), the plan ``entry``, the teacher conv(s) it replaced
    (one, or the two of a residual pair ``conv_a → norm → act → conv_b``) and the ``student_block`` that
    replaced them (at ``entry.convs[0]`` in the student). The block reads what ``teacher_convs[0]`` read and
    stands for what ``teacher_convs[-1]`` wrote."""

    name: str
    entry: PlanEntry
    teacher_convs: tuple[nn.Conv2d, ...]
    student_block: nn.Module
    #: the teacher's modules between a pair's convs, where the block rebuilds them (``W(f)``; else empty)
    teacher_between: tuple[nn.Module, ...] = ()

    @property
    def teacher_conv(self) -> nn.Conv2d:
        """The conv whose input the block reads (the first of a pair)."""
        return self.teacher_convs[0]

    @property
    def teacher_last(self) -> nn.Conv2d:
        """The conv whose output the block replaces (the second of a pair, else the conv itself)."""
        return self.teacher_convs[-1]


@dataclass
class InitRecord:
    """What teacher-initialisation did at one site (see the module docstring for ``kind``)."""

    name: str
    block: str
    kind: str
    weight_error: float | None = None
    output_error: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def replaced_sites(student: nn.Module, teacher: nn.Module) -> list[Site]:
    """Every site ``student``'s plan replaced, with the teacher conv(s) and the student block, in plan order.

    ``student`` must come from :func:`cheapconv.cheapen` (it carries ``cheapconv_plan``; a student loaded with
    :func:`cheapconv.load` gets it from its file) applied to ``teacher`` or to a model with the same module names
    and shapes. Raises :class:`UsageError` otherwise."""
    plan = getattr(student, "cheapconv_plan", None)
    if plan is None:
        raise UsageError(_no_plan(student))
    _check_same_shapes(student, teacher, [c for entry in plan.replaced for c in entry.convs])
    _check_same_size(plan, teacher)
    sites = []
    for entry in plan.replaced:
        try:
            convs = tuple(teacher.get_submodule(name) for name in entry.convs)
            between = tuple(teacher.get_submodule(name) for name in entry.between)
            block = student.get_submodule(entry.convs[0])
        except AttributeError as e:
            raise UsageError(f"The teacher has no layer {entry.layer!r} that the student's plan replaced ({e}). "
                             "Pass the teacher the student was cheapened from.") from None
        if not all(isinstance(c, nn.Conv2d) for c in convs):
            raise UsageError(f"The teacher's {entry.layer!r} is not a Conv2d ({type(convs[0]).__name__}); pass "
                             "the teacher the student was cheapened from.")
        sites.append(Site(entry.layer, entry, convs, block, between))
    return sites


def _no_plan(student: nn.Module) -> str:
    """Why ``student`` has no plan, and what to pass instead."""
    recipe = getattr(student, "cheapconv_recipe", None)
    if not isinstance(recipe, dict):
        return ("The student carries no cheapconv plan, so its replaced sites are unknown. Pass the model "
                "cheapconv.cheapen(teacher, policy) returned, or a student file loaded with cheapconv.load.")
    if recipe.get("plan"):
        return ("The student's file holds a plan this version of cheapconv cannot read, so its replaced sites "
                "are unknown. Cheapen the teacher again (cheapconv.cheapen(teacher, policy), cheapconv cheapen "
                "TEACHER --block SPEC).")
    return ("The model passed as the student was not cheapened: its file records no plan (a teacher, or a model "
            "as built or trained). Pass the student file written by cheapconv cheapen (or "
            "cheapconv.save(cheapconv.cheapen(teacher, policy), path)), and its teacher as the teacher.")


def _check_same_shapes(student: nn.Module, teacher: nn.Module, replaced: list[str]) -> None:
    """The tensors the student kept from its teacher (same names, outside the ``replaced`` convs) have the
    teacher's shapes; else the teacher is another model (other classes, other widths) and pairing sites by
    name would be wrong."""
    theirs = teacher.state_dict()
    prefixes = tuple(f"{name}." for name in replaced)
    wrong = [f"{k} {list(v.shape)} in the student, {list(theirs[k].shape)} in the teacher"
             for k, v in student.state_dict().items()
             if k in theirs and not k.startswith(prefixes) and theirs[k].shape != v.shape]
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise UsageError(f"The teacher is not the model the student was cheapened from: {'; '.join(wrong[:3])}"
                         f"{more}. Pass the teacher the student was cheapened from (the same model and number of "
                         "classes, e.g. the file written by cheapconv train).")


def _check_same_size(plan, teacher: nn.Module) -> None:
    """The teacher holds as many values as the one the plan was made from (its ``paper_before``, or that less
    what tracing dropped, for a teacher saved as a traced graph). Shapes alone miss a deeper teacher that
    holds every tensor of the student's (WRN-16-1 for a WRN-10-1 student): its outputs at the same names
    are another network's, and blocks fitted to them would be silently wrong."""
    totals = plan.totals if isinstance(getattr(plan, "totals", None), dict) else {}
    before, after = totals.get("paper_before"), totals.get("paper_after")
    if not isinstance(before, int) or not isinstance(after, int) or before <= 0:
        return   # a plan without totals (an older file): nothing to compare
    dropped = before + sum(e.paper_after - e.paper_before for e in plan.entries) - after
    have = count_params(teacher, "paper")
    if have in (before, before - dropped):
        return
    raise UsageError(f"The teacher is not the model the student was cheapened from: it holds {have:,} values "
                     f"(weights and BatchNorm statistics), the student's teacher held {before:,} ({plan.model!r}). "
                     "Pass the teacher the student was cheapened from (the same model, depth, width and number of "
                     "classes, e.g. the file written by cheapconv train).")


def as_kxk(convs: tuple[nn.Conv2d, ...]) -> tuple[nn.Conv2d, ...]:
    """A factorised pair (k×1 then 1×k) as the one k×k conv it computes without the activation between (the
    composed kernel, of rank at most the middle width: :func:`~cheapconv.blocks.factorize.compose_factorised`);
    other sites' convs unchanged. The closed forms of square-conv blocks then apply to the pair."""
    if len(convs) != 2 or not is_factored(*convs):
        return convs
    a, b = convs
    conv = factored_conv(a, b)
    with torch.no_grad():
        weight, bias = compose_factorised(a.weight, b.weight, a.bias, b.bias)
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return (conv,)


def _unwrap(block: nn.Module) -> nn.Module:
    return block.block if isinstance(block, SamePadded) else block


def _initialise(site: Site) -> InitRecord:
    block = _unwrap(site.student_block)
    record = InitRecord(site.name, site.entry.block or "", "random")
    if type(block) is nn.Conv2d and tuple(block.kernel_size) == (2, 2) and len(site.teacher_convs) == 1:
        kind, error, note = dilated_corners(block, site.teacher_convs)
    elif type(block) in READS_BETWEEN:
        kind, error, note = INITIALISERS[type(block)](block, site.teacher_convs, site.teacher_between)
    elif type(block) in INITIALISERS:
        kind, error, note = INITIALISERS[type(block)](block, as_kxk(site.teacher_convs))
        if len(as_kxk(site.teacher_convs)) < len(site.teacher_convs):
            note = "; ".join(filter(None, [note, "from the factorised pair's composed k×k kernel (the activation "
                                                 "between them ignored)"]))
    else:
        record.note = f"no initialiser for {type(block).__name__}: left random"
        return record
    record.kind, record.note = kind, note
    record.weight_error = error
    kept_bias = any(m.bias is not None for m in block.modules() if isinstance(m, nn.Conv2d))
    if any(c.bias is not None for c in site.teacher_convs) and not kept_bias:
        record.note = "; ".join(filter(None, [note, "the teacher conv's bias is dropped (cheap blocks have none)"]))
    return record


def init_from_teacher(student: nn.Module, teacher: nn.Module, *, example_input: torch.Tensor | None = None
                      ) -> list[InitRecord]:
    """Set every replaced block of ``student`` from the teacher conv(s) it replaced; one record per site.

    ``student`` comes from ``cheapen(teacher, ...)`` (its plan names the sites), directly or through a file
    (:func:`cheapconv.load`); it is changed in place, its recipe then records ``"init": "teacher"``, and
    ``teacher`` is never changed. With ``example_input`` (a batch the teacher reads), each record's ``output_error`` is
    the relative error ‖block(x) − teacher site(x)‖/‖teacher site(x)‖ on the teacher's own input x to that
    site, with both in eval mode (the blocks' norms as initialised).

    >>> import cheapconv
    >>> teacher = cheapconv.WideResNet(10, 1)
    >>> student = cheapconv.cheapen(teacher, "LR(1)")
    >>> [r.kind for r in init_from_teacher(student, teacher)][:2]
    ['approximate', 'approximate']
    """
    sites = replaced_sites(student, teacher)
    with torch.no_grad():
        records = [_initialise(site) for site in sites]
    recipe = getattr(student, "cheapconv_recipe", None)
    if isinstance(recipe, dict):   # a student loaded from a file: what cheapconv.save writes now says so
        recipe["init"] = "teacher"
    if example_input is not None:
        for record, error in zip(records, site_output_errors(sites, teacher, example_input), strict=True):
            record.output_error = error
    return records


def site_output_errors(sites: list[Site], teacher: nn.Module, example_input: torch.Tensor) -> list[float]:
    """Per site, ‖block(x) − y‖/‖y‖ where x is what the teacher's site reads and y what it writes on
    ``example_input``: one teacher pass in eval mode; each site is compared as soon as the teacher has written
    its output, so only the open pairs' inputs are held. Hooks are removed and flags restored afterwards; a site
    the pass does not reach gets NaN."""
    inputs: dict[int, torch.Tensor] = {}
    errors = [float("nan")] * len(sites)
    handles = []

    def read(i: int):
        def hook(module, args, output):
            inputs[i] = args[0].detach()
        return hook

    def compare(i: int):
        def hook(module, args, output):
            x = inputs.pop(i, None)
            if x is None:
                return
            with eval_mode(sites[i].student_block):
                out = sites[i].student_block(x)
            errors[i] = ((out - output).norm() / output.norm().clamp_min(1e-12)).item()
        return hook

    for i, site in enumerate(sites):
        handles.append(site.teacher_conv.register_forward_hook(read(i)))
        handles.append(site.teacher_last.register_forward_hook(compare(i)))
    try:
        with torch.no_grad(), eval_mode(teacher):
            teacher(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return errors
