"""Sweeps: one teacher, several block types, one Pareto report (CSV, Markdown, PNG).

For each block spec :func:`sweep` cheapens the teacher, counts params and MACs, times the student **side by
side with the teacher** (batch 1 and a throughput batch, so each point's speed-up is a same-moment ratio even
when points are measured on different days), optionally distils it (a ``distill_fn`` hook) and evaluates it
(an ``evaluate_fn`` hook), then rewrites the report. It is like the paper's figure 3 (error against
parameters), with latency added.

Resumable: each finished point is a JSON file in ``<out>/points/``; a rerun with the same configuration
skips those points and recomputes only the missing ones. A folder holding a sweep of another configuration
(model, input size, batch, dtype, layout, data, epochs) is refused rather than mixed. The report itself
(CSV, Markdown, PNG) is :mod:`cheapconv.sweep_report`.

Distillation is optional and pluggable. ``distill_fn(student, teacher, block) -> trained student`` and
``evaluate_fn(model) -> top-1 accuracy in [0, 1]`` may be any callables. When a dataset is named and no hook
is given, :func:`default_hooks` uses :func:`cheapconv.distill` and
:func:`cheapconv.measure.profiler.evaluate_accuracy`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from .bounded import MiB, read_text
from .counting import count_macs, count_params
from .data import get_dataset
from .errors import CheapconvError, UsageError
from .measure.profiler import default_device, evaluate_accuracy, input_shape_of, model_label, parse_dtype
from .measure.runtimes import ReferenceTimer, check_runtime, describe_precision, describe_runtime
from .store.files import DiskFullError, atomic_write, is_disk_full
from .store.modelfile import save
from .surgery.policy import parse_policy_list as parse_blocks  # noqa: F401 - the sweep's --blocks list
from .surgery.rewrite import cheapen
from .sweep_report import TEACHER, SweepPoint, write_report
from .train.config import DistillConfig
from .train.loop import distill

DistillFn = Callable[[nn.Module, nn.Module, str], nn.Module]
EvaluateFn = Callable[[nn.Module], float]

SWEEP_FORMAT = "cheapconv-sweep"
SWEEP_VERSION = 1
#: the largest sweep.json or points/*.json read back (cheapconv writes a few KiB; a point file, under 1 KiB)
SWEEP_JSON_MAX_BYTES = 4 * MiB
#: configuration fields that change what a point means; a folder is resumed only when they all agree
_KEY_FIELDS = ("model", "input_size", "batch", "dtype", "channels_last", "device", "data", "epochs", "runtime",
               "fold")


@dataclass
class SweepResult:
    config: dict
    points: list[SweepPoint]
    files: dict[str, str] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)   # computed in this run (the others were resumed)
    notes: list[str] = field(default_factory=list)


def default_hooks(data: str, epochs: int | None, *, input_size: tuple[int, ...], data_dir: str | None = None,
                  device: str | None = None, checkpoint_dir: str | Path | None = None,
                  ) -> tuple[DistillFn, EvaluateFn]:
    """Distil with :func:`cheapconv.distill` (its defaults: the spec's recipe, AT from the teacher)
    on the train split of ``data`` for ``epochs``, and evaluate top-1 on its test split. With
    ``checkpoint_dir``, each student's run checkpoints to ``<block>.ckpt`` there and an interrupted sweep
    resumes inside the point."""
    c, h, _ = input_size
    train = get_dataset(data, "train", data_dir=data_dir, in_chans=c, image_size=h)
    config = DistillConfig(**({"epochs": epochs} if epochs else {}), device=device or "auto")

    def distill_fn(student: nn.Module, teacher: nn.Module, block: str) -> nn.Module:
        ckpt = Path(checkpoint_dir) / f"{point_slug(block)}.ckpt" if checkpoint_dir is not None else None
        result = distill(teacher, student, train, config=config, checkpoint=ckpt,
                         resume=bool(ckpt is not None and ckpt.exists()))
        return result.student

    def evaluate_fn(model: nn.Module) -> float:
        return evaluate_accuracy(model, data, input_shape=input_size, data_dir=data_dir, device=device)

    return distill_fn, evaluate_fn


def point_slug(block: str) -> str:
    """The file-name stem of a sweep point: readable, and unique per spelling (a short hash)."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", block).strip("_") or "block"
    return f"{readable}-{hashlib.sha1(block.encode()).hexdigest()[:8]}"


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _make_folder(folder: Path) -> None:
    """``mkdir -p`` with a clear message when it fails (read-only place, full disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(f"No space left on {str(folder.parent)!r}: cannot create the sweep folder "
                                f"{str(folder)!r}. Free some space there, or choose another --output.") from e
        raise UsageError(f"Cannot create the sweep folder {str(folder)!r}: {e.strerror or e}. Choose an output "
                         "folder you can write to.") from None


def _load_state(out_dir: Path, config: dict) -> dict[str, SweepPoint]:
    state = out_dir / "sweep.json"
    if not state.exists():
        return {}
    fix = "Choose another output folder."
    try:
        saved = json.loads(read_text(state, what="the sweep state", limit=SWEEP_JSON_MAX_BYTES, fix=fix))
    except (OSError, json.JSONDecodeError, RecursionError) as e:
        raise UsageError(f"{str(state)!r} is not a readable sweep state ({e}); choose another output "
                         "folder.") from None
    if not isinstance(saved, dict) or saved.get("format") != SWEEP_FORMAT:
        raise UsageError(f"{str(out_dir)!r} holds a sweep.json that cheapconv did not write; choose another "
                         "output folder.")
    old = saved.get("config", {})
    old.setdefault("runtime", "torch")  # sweeps from before runtimes were timed in eager torch
    old.setdefault("fold", True)        # ... and before --no-fold, folded
    differ = [k for k in _KEY_FIELDS if old.get(k) != config.get(k)]
    if differ:
        detail = ", ".join(f"{k}: {old.get(k)!r} there, {config.get(k)!r} now" for k in differ)
        raise UsageError(f"{str(out_dir)!r} holds a sweep of another configuration ({detail}); its points "
                         "cannot be reused. Choose another output folder, or delete that one to start over.")
    points = {}
    known = {f.name for f in fields(SweepPoint)}
    for file in sorted((out_dir / "points").glob("*.json")):
        try:
            d = json.loads(read_text(file, what="the sweep point", limit=SWEEP_JSON_MAX_BYTES,
                                     fix="Delete it to recompute that point, or choose another output folder."))
            point = SweepPoint(**{k: v for k, v in d.items() if k in known})
        except UsageError:
            raise
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
            raise UsageError(f"{str(file)!r} is not a readable sweep point ({type(e).__name__}: {e}); delete it "
                             "to recompute that point, or choose another output folder.") from None
        points[point.block] = point
    return points


def sweep(model: nn.Module, blocks: Sequence[str], out_dir: str | Path, *, model_name: str | None = None,
          input_size: tuple[int, ...] | None = None, batch: int = 32, dtype: str = "fp32",
          channels_last: bool = False, threads: int | None = None, warmup: int = 2, repeats: int = 10,
          data: str | None = None, epochs: int | None = None, data_dir: str | None = None,
          distill_fn: DistillFn | None = None, evaluate_fn: EvaluateFn | None = None,
          include_teacher: bool = True, save_students: bool = True,
          log: Callable[[str], None] | None = None, runtime: str = "torch", fold: bool = True) -> SweepResult:
    """Cheapen ``model`` with each of ``blocks``, measure (and optionally distil and evaluate) each student
    and write ``sweep.csv``, ``sweep.md`` and ``sweep.png`` into ``out_dir`` (see the module docstring).

    ``data``/``epochs`` describe the distillation and are part of the configuration; with ``data`` and no
    hooks, :func:`default_hooks` provides them. ``evaluate_fn`` alone (no distillation) evaluates the
    students as cheapened. Distilled students are saved to ``points/<block>.pt`` (``save_students``).
    ``runtime`` is where latency is measured (a name of :data:`~cheapconv.extensions.RUNTIMES`; see
    :mod:`cheapconv.measure.runtimes`): the teacher is exported once, each student once, both checked against
    eager mode before they are timed, so the Pareto front is the one of that runtime. ``fold=False`` exports
    them without folding BatchNorm into the convs (in the runtimes that time an exported file).

    >>> from cheapconv.models import WideResNet
    >>> result = sweep(WideResNet(10, 1), ["G(2)", "B(2)"], "/tmp/sweep", repeats=2)   # doctest: +SKIP
    >>> [p.label for p in result.points]                                                # doctest: +SKIP
    ['teacher', 'G(2)', 'B(2)']
    """
    log = log or (lambda message: None)
    blocks = [b for b in blocks if b != TEACHER]
    shape = input_shape_of(model, input_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"The sweep output {str(out_dir)!r} is a file; give a folder.")
    config = {"model": model_name or model_label(model), "input_size": list(shape), "batch": int(batch),
              "dtype": str(parse_dtype(dtype)).removeprefix("torch."), "channels_last": bool(channels_last),
              "data": data, "epochs": epochs, "threads": threads or torch.get_num_threads(),
              "repeats": repeats, "device": str(default_device()), "blocks": list(blocks), "runtime": runtime,
              "fold": bool(fold)}
    check_runtime(runtime, dtype=dtype, channels_last=channels_last)
    config["runtime_info"] = describe_runtime(runtime, threads)
    config["precision"] = describe_precision(runtime, config["dtype"])
    done = _load_state(out_dir, config)
    if data is not None and distill_fn is None and evaluate_fn is None:
        distill_fn, evaluate_fn = default_hooks(data, epochs, input_size=shape, data_dir=data_dir,
                                                checkpoint_dir=out_dir / "points")
    _make_folder(out_dir / "points")
    _write_json(out_dir / "sweep.json", {"format": SWEEP_FORMAT, "version": SWEEP_VERSION, "config": config})
    result = SweepResult(config, [])
    order = ([TEACHER] if include_teacher else []) + list(blocks)

    timer = ReferenceTimer(model, shape, runtime, batches=sorted({1, int(batch)}), dtype=dtype,
                           channels_last=channels_last, threads=threads, warmup=warmup, repeats=repeats, fold=fold)
    try:
        for i, block in enumerate(order, 1):
            if block in done:
                log(f"[{i}/{len(order)}] {block}: done earlier, reused")
                continue
            log(f"[{i}/{len(order)}] {block}: measuring")
            point = _run_point(model, block, shape, out_dir, timer, batch=int(batch), epochs=epochs,
                               distill_fn=distill_fn, evaluate_fn=evaluate_fn,
                               save_students=save_students, log=log, notes=result.notes)
            if point is not None:
                done[block] = point
                result.computed.append(block)
    finally:  # an interrupted sweep still leaves the report of the points it finished
        timer.close()
        result.notes += [n for n in timer.notes if n not in result.notes]
        result.points = [done[b] for b in order if b in done]
        result.files = write_report(out_dir, result.points, config, notes=result.notes)
    return result


def _run_point(model: nn.Module, block: str, shape: tuple[int, ...], out_dir: Path, timer, *, batch: int,
               epochs: int | None, distill_fn: DistillFn | None, evaluate_fn: EvaluateFn | None, save_students: bool,
               log: Callable[[str], None], notes: list[str]) -> SweepPoint | None:
    """Measure (distil, evaluate) one point and store it in ``points/``; None if the block does not apply."""
    start = time.perf_counter()
    student = model
    if block != TEACHER:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                student = cheapen(model, block, input_size=shape)
            for w in caught:
                log(f"  note: {w.message}")
        except CheapconvError as e:
            notes.append(f"{block}: skipped, {e}")
            log(f"  skipped: {e}")
            return None
        if not student.cheapconv_plan.replaced:
            reasons = sorted({e.reason for e in student.cheapconv_plan.impossible})
            why = f"it replaced no layer ({'; '.join(reasons[:2]) or 'nothing eligible'})"
            notes.append(f"{block}: skipped, {why}")
            log(f"  skipped: {why}")
            return None
    timing = timer.time(student)  # {batch: (teacher, student)}, side by side in the sweep's runtime
    plan = getattr(student, "cheapconv_plan", None)
    point = SweepPoint(block, count_params(student, "paper"), count_params(student, "trainable"),
                       count_macs(student, (1, *shape)), len(plan.replaced) if plan else 0,
                       timing[1][1].median_ms, timing[batch][1].median_ms,
                       timing[1][0].median_ms, timing[batch][0].median_ms)
    if distill_fn is not None and block != TEACHER:
        log(f"  distilling {block}" + (f" for {epochs} epochs" if epochs else ""))
        student = distill_fn(student, model, block)
        point.distilled = True
        if save_students:
            save(student, out_dir / "points" / f"{point_slug(block)}.pt")
    if evaluate_fn is not None:
        point.accuracy = float(evaluate_fn(student))
    point.seconds = time.perf_counter() - start
    _write_json(out_dir / "points" / f"{point_slug(block)}.json", asdict(point))
    return point
