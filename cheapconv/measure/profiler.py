"""Profiles: parameters (both conventions), MACs, measured latency and peak memory, per model and per block.

Parameter counts do not tell runtime: grouped and depthwise convolutions run far below the dense conv's
throughput per MAC, so a student with 4× fewer MACs can be no faster, or slower. cheapconv measures:

* **latency**: the median (and quartiles) of repeated timed forward passes after warm-up, at batch 1 and at a
  throughput batch, in eval mode under ``torch.inference_mode``, with the device, dtype (non-fp32 runs under
  autocast), memory layout and intra-op threads stated. CPU passes are timed with ``time.perf_counter``, CUDA
  passes with CUDA events (see :mod:`cheapconv.measure.latency`). Models compared with each other are timed
  **side by side** (:func:`measure_side_by_side`: one pass of each in turn, repeated), so that load on a
  shared machine hits all of them alike and their ratios stay meaningful even when absolute times drift.
* **peak memory**: see :mod:`cheapconv.measure.memory`.
* **per block**: for each layer a student replaced, the cheap block and the original conv (or, for
  ``B``/``BG``, the original conv → norm → act → conv chain) timed side by side at the input shape that layer
  sees in the model; blocks slower than what they replaced are flagged.
* **runtime**: all of it in torch eager mode by default, or where the model will run (``runtime=``, a name of
  :data:`~cheapconv.extensions.RUNTIMES`; :mod:`cheapconv.measure.runtimes`): each model is exported once, checked
  against its eager output, then timed; per-block timings export each block and the layers it replaced as
  small graphs of their own.

``cheapconv.profile`` is the function :func:`profile`; the rest is in :mod:`cheapconv.measure`
(``from cheapconv.measure import profile_many``). What it measured and its tables are
:mod:`cheapconv.measure.profiles`, accuracy is :mod:`cheapconv.measure.accuracy`; this module only measures.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..counting import count_macs, count_params
from ..errors import CheapconvError, TraceError, UsageError
from ..fx.analysis import analyse
from ..fx.tracer import trace
from ..models.inputs import example_input_for, input_shape_of
from ..store.rebuild import teacher_for_student
from ..surgery.plans import Plan
from .accuracy import evaluate_accuracy  # noqa: F401 - lives in .accuracy; the sweeper still imports it from here
from .chain import Chain, node_steps
from .latency import (
    default_device,
    measure_side_by_side,  # noqa: F401 - imported from here by older callers
    parse_dtype,
    time_side_by_side,
)
from .memory import peak_memory
from .profiles import BlockTiming, LayerCost, Profile
from .runtimes import check_runtime, describe_runtime, make_runners, runner_notes


# --- per layer ----------------------------------------------------------------------------------------------
def _layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, list[LayerCost]]:
    total, per_layer = count_macs(model, (1, *input_shape), per_layer=True)
    modules = dict(model.named_modules())
    rows = []
    for name, macs in per_layer.items():
        m = modules[name]
        if isinstance(m, nn.Conv2d):
            k = "×".join(str(v) for v in m.kernel_size)
            kind = f"Conv2d {m.in_channels}→{m.out_channels} {k}" + (f" g{m.groups}" if m.groups > 1 else "")
        else:
            kind = f"{type(m).__name__} {getattr(m, 'in_features', '')}→{getattr(m, 'out_features', '')}"
        rows.append(LayerCost(name, kind, sum(p.numel() for p in m.parameters()), macs))
    return total, rows


def _student_plan(student: nn.Module):
    plan = getattr(student, "cheapconv_plan", None)
    if plan is None:
        recipe = getattr(student, "cheapconv_recipe", None) or {}
        plan = Plan.from_dict(recipe["plan"]) if recipe.get("plan") else None
    return plan


def _rebuild_teacher(student: nn.Module) -> nn.Module | None:
    recipe = getattr(student, "cheapconv_recipe", None) or {}
    if not recipe.get("source"):
        return None

    return teacher_for_student(recipe, student)   # built on meta and bounded by the student's weights first


def block_timings(student: nn.Module, teacher: nn.Module | None = None, *,
                  input_shape: tuple[int, ...] | None = None, batches: Sequence[int] = (1,),
                  device: str | torch.device | None = None, dtype: str | torch.dtype = torch.float32,
                  channels_last: bool = False, warmup: int = 3, repeats: int = 10,
                  threads: int | None = None, notes: list[str] | None = None, runtime: str = "torch",
                  progress=None, fold: bool = True) -> list[BlockTiming]:
    """Time each block a student replaced against the original layer, side by side at the same input.

    In ``runtime`` (see :mod:`cheapconv.measure.runtimes`), each block and the original layers are exported
    as graphs of their own (BatchNorm folded unless ``fold`` is False) and checked against eager mode before
    they are timed; a block that cannot be is skipped with a note. ``progress(done, total)`` is called after
    each layer.

    ``teacher`` supplies the original layers; by default it is rebuilt from the student's recipe (the zoo
    name it was cheapened from: only shapes matter for timing, not weights). ``input_shape`` (C, H, W)
    defaults to the plan's. Returns [] (with a reason appended to ``notes``) for a model with no plan or no
    teacher to compare with.

    >>> import cheapconv
    >>> teacher = cheapconv.create_model("wrn_10_1")
    >>> student = cheapconv.cheapen(teacher, "B(2)")
    >>> rows = cheapconv.block_timings(student, teacher, batches=(1, 8), repeats=3)
    >>> [row.layer for row in rows]
    ['block1.0.conv1+conv2', 'block2.0.conv1+conv2', 'block3.0.conv1+conv2']
    >>> rows[0].speedup(8) > 0   # original time ÷ block time at batch 8 (above 1: the block is faster)
    True
    """
    notes = notes if notes is not None else []
    plan = _student_plan(student)
    if plan is None or not plan.replaced:
        notes.append("per-block timing: the model has no cheapconv plan (it is not a student), "
                     "nothing to compare")
        return []
    if teacher is None:
        try:
            teacher = _rebuild_teacher(student)
        except Exception as e:  # noqa: BLE001 - any failure just means: no per-block comparison
            notes.append(f"per-block timing: cannot rebuild the teacher from the recipe ({e})")
            return []
        if teacher is None:
            notes.append("per-block timing needs the original model: pass teacher=... (--teacher on the "
                         "command line); the student's recipe names no source to rebuild it from")
            return []
    if not check_runtime(runtime, device=device, dtype=dtype, channels_last=channels_last).per_block:
        notes.append(f"per-block timing: {runtime} cannot time blocks on their own; whole-model latency only")
        return []
    shape = tuple(input_shape) if input_shape else tuple(plan.input_shape)
    recipe = getattr(student, "cheapconv_recipe", None) or {}
    example = example_input_for(teacher, shape)
    try:
        work, graph_mode = trace(teacher, recipe.get("leaf_modules", ())), True
    except TraceError:
        work, graph_mode = copy.deepcopy(teacher), False
    analysis = analyse(work, example, graph_mode)
    sites = {s.name: s for s in analysis.convs}
    out: list[BlockTiming] = []
    for k, entry in enumerate(plan.replaced, 1):
        pair = _original_layers(work, analysis, sites, entry, notes)
        if pair is not None:
            original, in_shape = pair
            block = student.get_submodule(entry.convs[0])
            timed = _time_pair(original, block, entry.layer, in_shape, batches, runtime, notes, device=device,
                               dtype=dtype, channels_last=channels_last, warmup=warmup, repeats=repeats,
                               threads=threads, fold=fold)
            if timed is not None:
                before, after = timed
                out.append(BlockTiming(entry.layer, entry.block or "", tuple(in_shape), entry.params_before,
                                       entry.params_after, entry.macs_before, entry.macs_after, before, after))
        if progress is not None:
            progress(k, len(plan.replaced))
    if runtime != "torch" and plan.replaced and not out:
        notes.append(f"per-block timing: no block could be timed on its own in {runtime}; whole-model "
                     "latency only")
    return out


def _original_layers(work, analysis, sites: dict, entry, notes: list[str]):
    """(the original conv, or conv → norm → act → conv chain, that ``entry`` replaced; its input shape), or
    None with a note."""
    if entry.convs[0] not in sites:
        notes.append(f"per-block timing: {entry.layer} is not in the teacher given; skipped")
        return None
    if len(entry.convs) == 1:
        site = sites[entry.convs[0]]
        original, in_shape = site.conv, site.input_shape
    else:
        pair = analysis.pair_starting_at(entry.convs[0])
        if pair is None:
            notes.append(f"per-block timing: the pair {entry.layer} is not found in the teacher; skipped")
            return None
        original, in_shape = Chain([pair.a.conv, *node_steps(work, pair.between), pair.b.conv]), pair.a.input_shape
    return None if in_shape is None else (original, in_shape)


def _time_pair(original: nn.Module, block: nn.Module, layer: str, in_shape, batches, runtime: str,
               notes: list[str], *, device, dtype, channels_last, warmup, repeats, threads, fold=True):
    """({batch: original's latency}, {batch: block's}) timed side by side in ``runtime``, or None (with a
    note) when the runtime cannot take one of them on its own."""
    try:
        runners = make_runners([original, block], runtime, tuple(in_shape), device=device, dtype=dtype,
                               channels_last=channels_last, threads=threads, labels=[f"{layer} (original)", layer],
                               fold=fold)
    except CheapconvError as e:
        notes.append(f"per-block timing: {layer} cannot be timed on its own in {runtime} ({e}); skipped")
        return None
    try:
        before, after = {}, {}
        for b in batches:
            before[b], after[b] = time_side_by_side(runners, (b, *in_shape), warmup=warmup, repeats=repeats,
                                                    threads=threads)
        return before, after
    finally:
        for r in runners:
            r.close()


# --- whole models -------------------------------------------------------------------------------------------
def profile_many(models: Sequence[nn.Module], input_shape: tuple[int, ...] | None = None, *,
                 names: Sequence[str] | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype = torch.float32, channels_last: bool = False, batch: int = 32,
                 warmup: int = 3, repeats: int = 10, threads: int | None = None, memory: bool = True,
                 per_layer: bool = False, layer_repeats: int | None = None, runtime: str = "torch",
                 progress=None, fold: bool = True) -> list[Profile]:
    """:func:`profile` for several models at once, their latencies measured side by side (batch 1 and
    ``batch``) in ``runtime``. All models get the same input shape (default: the first model's)."""
    if not models:
        raise UsageError("profile_many needs at least one model.")
    shape = input_shape_of(models[0], input_shape)
    device = torch.device(device) if device is not None else default_device()
    dtype = parse_dtype(dtype)
    check_runtime(runtime, device=device, dtype=dtype, channels_last=channels_last)
    batches = sorted({1, int(batch)})
    labels = [names[i] if names else model_label(m) for i, m in enumerate(models)]
    runners = make_runners(models, runtime, shape, device=device, dtype=dtype, channels_last=channels_last,
                           threads=threads, labels=labels, fold=fold)
    try:
        timed = {b: time_side_by_side(runners, (b, *shape), warmup=warmup, repeats=repeats, threads=threads)
                 for b in batches}
    finally:
        for r in runners:
            r.close()
    info = describe_runtime(runtime, threads, device)
    profiles = []
    for i, model in enumerate(models):
        macs, layers = _layer_costs(model, shape)
        p = Profile(model=labels[i], input_shape=shape, params_trainable=count_params(model, "trainable"),
                    params_paper=count_params(model, "paper"), macs=macs,
                    latency={b: timed[b][i] for b in batches}, layers=layers,
                    weight_bytes=sum(t.numel() * t.element_size() for t in model.state_dict().values()),
                    runtime=runtime, runtime_info=info, notes=runner_notes(runners[i:i + 1]),
                    checks={b: c.line() for b, c in
                            ((int(s[0]), c) for s, c in getattr(runners[i], "checks", {}).items())})
        if memory:
            if runtime != "torch":
                p.notes.append(f"peak memory is measured in torch eager mode, not in {runtime}")
            p.peak_memory = {b: peak_memory(model, (b, *shape), device=device, dtype=dtype,
                                            channels_last=channels_last) for b in batches}
        if per_layer:
            p.blocks = block_timings(model, input_shape=shape, batches=batches, device=device, dtype=dtype,
                                     channels_last=channels_last, warmup=warmup,
                                     repeats=layer_repeats or repeats, threads=threads, notes=p.notes,
                                     runtime=runtime, progress=progress, fold=fold)
        profiles.append(p)
    return profiles


def model_label(model: nn.Module) -> str:
    """A short name for tables: ``"wrn_40_2 G(4)"`` for a student, the zoo name or class name otherwise."""
    recipe = getattr(model, "cheapconv_recipe", None) or {}
    if recipe.get("policy"):
        return f"{recipe.get('model') or recipe.get('source') or type(model).__name__} {recipe['policy']}"
    return getattr(model, "cheapconv_source", None) or type(model).__name__


def profile(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
            device: str | torch.device | None = None, dtype: str | torch.dtype = torch.float32,
            channels_last: bool = False, batch: int = 32, warmup: int = 3, repeats: int = 10,
            threads: int | None = None, memory: bool = True, per_layer: bool = True,
            teacher: nn.Module | None = None, layer_repeats: int | None = None,
            name: str | None = None, runtime: str = "torch", progress=None, fold: bool = True) -> Profile:
    """Measure ``model``: params (trainable and paper conventions), MACs per image, latency at batch 1 and at
    ``batch`` (median and quartiles of ``repeats`` timed passes after ``warmup``), peak memory, per-layer
    params/MACs and, for a student, each replaced block timed against the layer it replaced.

    ``input_shape`` is (C, H, W) (a leading batch dimension is dropped; default: the student's recipe or the
    model's native size). ``device`` defaults to CUDA when present, else the CPU; ``dtype`` other than fp32
    runs under autocast; ``threads`` sets torch's intra-op threads while measuring. ``teacher`` supplies
    the original layers for the per-block comparison (default: rebuilt from the student's recipe).
    ``runtime`` is where latency is measured: ``"torch"`` (eager, the default) or another name of
    :data:`~cheapconv.extensions.RUNTIMES` (see :mod:`cheapconv.measure.runtimes`; the model is exported once and
    checked against its eager output before it is timed; ``p.checks`` holds the check per batch). ``fold=False``
    exports without folding BatchNorm into the convs (the runtimes that time an exported file: what ``cheapconv export
    --no-fold`` writes). The model itself is never moved or modified. ``progress(done, total)`` follows the
    per-block timing.

    >>> import cheapconv
    >>> from cheapconv.models import WideResNet
    >>> p = cheapconv.profile(cheapconv.cheapen(WideResNet(16, 2), "G(4)"), repeats=3)  # doctest: +SKIP
    >>> p.params_paper, p.latency[1].median_ms > 0, [b.layer for b in p.slower_blocks]  # doctest: +SKIP
    """
    shape = input_shape_of(model, input_shape)
    (p,) = profile_many([model], shape, names=[name] if name else None, device=device, dtype=dtype,
                        channels_last=channels_last, batch=batch, warmup=warmup, repeats=repeats,
                        threads=threads, memory=memory, runtime=runtime, fold=fold)
    if per_layer:
        p.blocks = block_timings(model, teacher, input_shape=shape, batches=p.batches, device=device,
                                 dtype=dtype, channels_last=channels_last, warmup=warmup,
                                 repeats=layer_repeats or repeats, threads=threads, notes=p.notes,
                                 runtime=runtime, progress=progress, fold=fold)
    return p
