"""Per-block latency tables for latency budgets, measured once on the device at hand, in the chosen runtime.

Each block's original pair (``conv_a -> norm -> act -> conv_b``, run as a small module) or single conv and each
candidate replacement are timed with :func:`cheapconv.measure.runtimes.measure_in_runtime` at the block's input shape,
in the runtime the student will run in (``torch`` eager, ``compile``, ``pt2`` or ``onnxruntime``: each
small graph is exported on its own and checked against eager mode before it is timed); a candidate's
latency delta is the difference of the two medians. A configuration's latency is then the
measured teacher latency plus Σ deltas: an **additive estimate** built from measured per-block latencies
(it ignores effects between layers such as caches and memory layout), which is why the search also measures
the winner as a whole and reports both.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ..errors import UsageError
from ..fx.ops import layers_between
from ..measure.chain import Chain, node_steps
from ..measure.runtimes import check_runtime, describe_runtime, measure_in_runtime
from .space import SearchSpace


def _conv_step(candidate, site, block) -> nn.Module:
    return candidate.spec.build_conv(site.conv) if site.name in block.targets(candidate) else copy.deepcopy(site.conv)


def measure_latencies(space: SearchSpace, teacher: nn.Module, *, batch: int = 1,
                      device: str | torch.device = "cpu", threads: int | None = None, repeats: int = 20,
                      warmup: int = 3, min_time_s: float = 0.02,
                      progress: Callable[[int, int], None] | None = None, runtime: str = "torch",
                      fold: bool = True) -> dict:
    """Fill ``latency_ms`` of every candidate and ``space.base["latency"]`` (the whole teacher, ms per batch),
    measured in ``runtime`` (exported with BatchNorm folded unless ``fold`` is False).

    Blocks of identical geometry share one measurement. Returns the conditions (runtime, device, threads,
    batch).
    """
    if not check_runtime(runtime, device=device).per_block:
        raise UsageError(f"The {runtime} runtime cannot time blocks on their own, so a latency budget cannot be "
                         "priced in it; search with --runtime torch or onnxruntime.")
    kw = dict(device=device, threads=threads, repeats=repeats, warmup=warmup, min_time_s=min_time_s, fold=fold)

    def timed(module: nn.Module, shape: tuple[int, ...], **kw):
        (lat,) = measure_in_runtime([module], shape, runtime, **kw)
        return lat

    teacher_lat = timed(copy.deepcopy(teacher), (batch, *space.input_shape), **kw)
    space.base["latency"] = teacher_lat.median_ms
    done: dict[int, list] = {}
    todo = [b for b in space.blocks if id(b.candidates) not in done]
    total = sum(len(b.candidates) for b in {id(b.candidates): b for b in todo}.values())
    count = 0
    for block in space.blocks:
        if id(block.candidates) in done:
            continue
        shape = (batch, *block.input_shape)
        if block.kind == "conv":  # a single conv: the conv against its replacement
            site = space.singles[block.label]
            original = timed(copy.deepcopy(site.conv), shape, **kw).median_ms
        else:
            pair = space.pairs[block.label]
            between = node_steps(space.graph, pair.between)
            original = timed(Chain([copy.deepcopy(pair.a.conv), *between, copy.deepcopy(pair.b.conv)]),
                             shape, **kw).median_ms
        for j, cand in enumerate(block.candidates):
            if cand.level == "keep":
                delta = 0.0
            else:
                if block.kind == "conv":
                    module: nn.Module = _conv_step(cand, site, block)
                elif cand.level == "block":
                    module = cand.spec.build_pair_with(pair.a.conv, pair.b.conv,
                                                       layers_between(space.graph, pair.between))
                else:  # conv-level: the convs it applies to replaced, the others kept
                    module = Chain([_conv_step(cand, pair.a, block), *between, _conv_step(cand, pair.b, block)])
                delta = timed(module, shape, **kw).median_ms - original
            block.candidates[j] = dataclasses.replace(cand, latency_ms=delta)
            count += 1
            if progress is not None:
                progress(count, total)
        done[id(block.candidates)] = block.candidates
    return {"device": teacher_lat.device, "threads": teacher_lat.threads, "batch": batch,
            "dtype": teacher_lat.dtype, "teacher_ms": teacher_lat.median_ms, "runtime": runtime, "fold": fold,
            "runtime_info": describe_runtime(runtime, teacher_lat.threads, teacher_lat.device)}
