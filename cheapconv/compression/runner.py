"""``compress(teacher, data, budget)``: the whole path from a trained teacher to a student that meets a budget *as
measured* (issue 27, items 2-3), on top of the library (:func:`build_library`) and the exact selection
(:func:`select`, :func:`meet_budget`):

1. build the candidate library, or reuse one (``library=DIR``: every budget of one teacher shares it);
2. choose one option per site under the budget; for a latency budget, assemble the chosen student, time it
   side by side with the teacher in the library's runtime settings, and where it misses, correct the latency model
   from the measurement and choose again (a few rounds at most): the student handed back meets the budget as
   measured, or the result says by how much it missed;
3. assemble it from the fitted options (no refit), then one sequential reconstruction pass on the student's own
   inputs (errors that compound across sites are removed in order);
4. distil it with the fine-tuning recipe (gradient clip 1, cosine, the teacher's own lr where its file records
   one), its accuracy evaluated before the first step and after the last (``epochs=0``: stop after step 3);
5. measure it against the teacher once more, at batch 1 and ``batch`` where they differ;
6. solve the front of other budgets from the same library (:func:`front`: 10 % to 100 % of the teacher), which
   :meth:`CompressResult.write_front` writes as CSV and PNG.

Measured latency is normalised by the teacher timed in the same run: ``student_ms × library_teacher_ms /
teacher_ms_now``, so a machine busier now than when the library was built does not move the student's figure
against a budget that was set from the teacher's.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn
from torch.utils.data import Dataset

from ..counting import count_macs, count_params
from ..data import adapt_for_model, get_dataset
from ..errors import UsageError
from ..measure import measure_in_runtime
from ..models import default_input_size
from ..reconstruction import ReconstructionReport, reconstruct
from ..train import DistillConfig, DistillResult, distill
from ..train.fine_tuning import teacher_lr
from ..train.start_end import StartLostWarning, lost_start_message
from .assembly import assemble
from .budgets import check_metric, parse_budget
from .calibration import calibration_split
from .candidates import find_sites
from .family import resolve_families
from .fronts import Front, front
from .group_library import thin_teacher
from .library import build_library
from .library_model import Library
from .measured_budget import BudgetResult, meet_budget
from .selection import Selection, select

__all__ = ["CompressResult", "compress", "list_sites"]


@dataclass
class Measured:
    """Teacher and student timed side by side once: medians in ms by batch size, in the library's settings."""

    teacher_ms: dict[int, float]
    student_ms: dict[int, float]
    runtime: str
    threads: int

    def ratio(self, batch: int) -> float:
        return self.student_ms[batch] / self.teacher_ms[batch]


@dataclass
class CompressResult:
    """What :func:`compress` did: the ``student`` (trained in place when ``epochs`` > 0), the ``library`` it was
    chosen from, the final ``selection``, the budget rounds (``budget``: predicted and measured per round, whether
    it was met), the ``reconstruction`` report, the distillation result (``training``: its ``start``/``end``
    figures), the last side-by-side ``measured`` latencies, the exact counts and the ``front`` of other budgets
    solved from the same library."""

    student: nn.Module
    library: Library
    selection: Selection
    budget: BudgetResult | None
    reconstruction: ReconstructionReport | None
    training: DistillResult | None
    measured: Measured | None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    front: Front | None = None
    #: the student as assembled and reconstructed, kept only where distillation ended below it (see ``notes``)
    before_training: nn.Module | None = None

    @property
    def library_dir(self) -> Path | None:
        """The folder the library lies in (pass it as ``library=`` to reuse it for another budget)."""
        return self.library.directory

    @property
    def met(self) -> bool:
        """Whether the student met the budget (as measured, for a latency budget; exactly, for params/MACs)."""
        return self.budget.met if self.budget is not None else True

    def write_front(self, stem: str | Path) -> list[Path]:
        """Write the front as ``STEM.front.csv`` and, with matplotlib installed, ``STEM.front.png`` (the student
        handed back marked where it was measured); returns the paths written."""
        if self.front is None:
            return []
        stem = Path(stem)
        csv_path = stem.with_name(stem.name + ".front.csv")
        self.front.to_csv(csv_path)
        written = [csv_path]
        if importlib.util.find_spec("matplotlib") is not None:   # the plots extra is optional
            png = stem.with_name(stem.name + ".front.png")
            marks = []
            if self.measured is not None:
                batch = int(self.library.key.get("batch", 1))
                ratio = self.measured.ratio(batch)
                marks.append((f"student handed back, measured {ratio:.2f}×", ratio,
                              self.selection.predicted_loss))
            self.front.plot(png, marks=marks, title=f"compress: the front of one library "
                                                    f"({self.library.key.get('runtime', 'torch')}, batch "
                                                    f"{self.library.key.get('batch', 1)})")
            written.append(png)
        return written

    def table(self) -> Table:
        """Teacher against student: params, MACs, measured latency, accuracy at step 0 and after training."""
        t = Table(title="compress: teacher and student", title_justify="left")
        for col in ("", "teacher", "student", "ratio"):
            t.add_column(col, justify="right")
        for key, label in (("paper", "params (paper)"), ("macs", "MACs")):
            a, b = self.counts["teacher"][key], self.counts["student"][key]
            t.add_row(label, f"{a:,}", f"{b:,}", f"{b / a:.3f}")
        if self.measured is not None:
            for batch in sorted(self.measured.student_ms):
                a, b = self.measured.teacher_ms[batch], self.measured.student_ms[batch]
                t.add_row(f"batch {batch} ms ({self.measured.runtime}, {self.measured.threads} thr.)", f"{a:.3f}",
                          f"{b:.3f}", f"{b / a:.2f}")
        if self.training is not None and self.training.start_end:
            t.add_row("val accuracy", "", self.training.start_end, "")
        return t


def list_sites(teacher: nn.Module, *, families: Any = None, input_shape: tuple[int, ...] | None = None,
               round_to: int | None = None) -> Table:
    """What a library of ``teacher`` would hold, without fitting or timing anything (``compress --dry-run``): each
    site, its kind, shape and options with their exact parameter and MAC changes, and how many options in all."""
    shape = tuple(input_shape) if input_shape is not None else default_input_size(teacher)
    chosen = resolve_families(families, round_to=round_to)
    sites, notes, _ = find_sites(teacher, chosen, shape)
    count = sum(len(site.options) - 1 for site in sites)
    size = "×".join(map(str, shape))
    t = Table(title=f"compress: {len(sites)} sites, {count} options to fit and time (input {size})",
              title_justify="left", caption="\n".join(notes) or None)
    for col in ("site", "kind", "shape", "options (params change, MACs change)"):
        t.add_column(col, overflow="fold")
    for site in sites:
        opts = ", ".join(f"{o.spec} ({o.paper:+,}, {o.macs:+,})" for o in site.options[1:])
        t.add_row(site.name, site.kind, site.shape, opts)
    return t


def _measure(teacher: nn.Module, student: nn.Module, library: Library, batches: list[int], *, repeats: int,
             fold: bool) -> Measured:
    runtime, threads = library.key.get("runtime", "torch"), int(library.key.get("threads", 1))
    shape = tuple(library.input_shape)
    teacher_ms, student_ms = {}, {}
    for batch in batches:
        t, s = measure_in_runtime([teacher, student], (batch, *shape), runtime, threads=threads, repeats=repeats,
                                  fold=fold)
        teacher_ms[batch], student_ms[batch] = t.median_ms, s.median_ms
    return Measured(teacher_ms, student_ms, runtime, threads)


def _datasets(data: Dataset | str, val_data: Dataset | str | None, student: nn.Module, data_dir) -> tuple:
    """The training set (augmented) and validation set for distillation: datasets as given, or built from a name
    the way ``--data`` is everywhere (the model's recorded size and normalisation)."""
    if isinstance(data, str):
        fit = adapt_for_model(data, student)
        kw = {"data_dir": data_dir, "in_chans": fit.in_chans, "image_size": fit.image_size,
              "preprocessing": fit.preprocessing}
        return get_dataset(data, "train", **kw), get_dataset(val_data or data, "test", **kw)
    if val_data is None:
        raise UsageError("compress(..., epochs > 0) with a dataset object needs val_data= (the images its accuracy is "
                         "measured on before and after distillation), or pass a dataset name.")
    return data, val_data if not isinstance(val_data, str) else get_dataset(val_data, "test", data_dir=data_dir)


def compress(teacher: nn.Module, data: Dataset | torch.Tensor | str, budget: str | float, *,
             metric: str = "latency", runtime: str = "torch", batch: int = 1, threads: int = 1,
             library: str | Path | Library | None = None, families: Any = None, samples: int = 1024,
             held_out: int = 512, steps: int = 0, max_params: str | float | None = None,
             max_macs: str | float | None = None, rounds: int = 3, tolerance: float = 0.02, repeats: int = 20,
             reconstruct_samples: int = 2048, reconstruct_steps: int = 0, epochs: int = 1,
             val_data: Dataset | str | None = None, train_data: Dataset | None = None,
             config: DistillConfig | None = None, fold: bool = True,
             data_dir: str | Path | None = None, progress: bool = True, seed: int = 0,
             fits_from: str | Path | None = None, round_to: int | None = None,
             groups: list[str] | None = None) -> CompressResult:
    """The most accurate student of ``teacher`` that meets ``budget`` (the module docstring has the steps).

    - ``budget``: ``"50%"`` of the teacher's figure in ``metric``, ``"2ms"``, ``"300k"`` parameters, or a number in
      the metric's unit (:func:`parse_budget`); ``metric``: latency (measured in ``runtime`` at ``batch`` with
      ``threads`` threads), params (paper convention) or macs. ``max_params``/``max_macs``: caps besides.
    - ``data``: calibration and training images (a dataset name, or a dataset without random augmentation for the
      library; with ``epochs`` > 0 a dataset object needs ``val_data``, and ``train_data`` is the augmented training
      set for distillation where it differs from ``data``).
    - ``library``: a folder to build the library in or reuse (same teacher, data and settings), or a built
      :class:`Library`; None builds one in a temporary folder. ``families``, ``samples``, ``held_out``, ``steps``,
      ``fits_from`` (another runtime's library whose fits to take), ``round_to`` (inner widths rounded to
      multiples of it: ``B(2)@8``), ``groups`` (coupled widths: the widths each channel group may be thinned to,
      ``["Wg(0.75)", "Wg(0.5)"]``): the library's (:func:`build_library`). A student with thinner groups is built
      on the teacher thinned to them, its readers refitted on the library's calibration images, and is
      reconstructed against that thinned teacher; it is distilled from the teacher itself.
    - ``rounds``, ``tolerance``: the measured-budget loop (:func:`meet_budget`); ``repeats``: timed passes per
      measurement.
    - ``reconstruct_samples``, ``reconstruct_steps``: the sequential reconstruction pass after assembly.
    - ``epochs``, ``config``: distillation (default ``DistillConfig.fine_tuning(epochs=epochs, lr=<the teacher's
      recorded lr, else 0.1>)``); ``epochs=0`` stops after reconstruction. Where distillation ends below the
      student it started from (validation top-1, or mIoU), a note says so and the result keeps that start as
      ``before_training`` (the command line writes it beside the output): a teacher fine-tuned on a few thousand
      images gave such students in the compress study.

    The teacher is never changed. Example::

        result = cheapconv.compress(teacher, "fashion-mnist", "50%", runtime="onnxruntime", library="lib/")
        print(result.table()); cheapconv.save(result.student, "student.pt")
    """
    check_metric(metric)
    lib = library if isinstance(library, Library) else build_library(
        teacher, data, families=families, runtime=runtime, batch=batch, threads=threads, samples=samples,
        held_out=held_out, steps=steps, directory=library, progress=progress, fold=fold, seed=seed,
        fits_from=fits_from, round_to=round_to, groups=groups)
    target = parse_budget(budget, lib, metric)
    notes: list[str] = []
    rounds_result = None
    if metric == "latency":
        def measured_ms(selection: Selection) -> float:
            candidate = assemble(teacher, lib, selection.choices, widths=selection.widths)
            m = _measure(teacher, candidate, lib, [int(lib.key.get("batch", batch))], repeats=repeats, fold=fold)
            (b,) = m.student_ms
            return _normalised_ms(lib, m, b)

        rounds_result = meet_budget(lib, target, measured_ms, rounds=rounds, tolerance=tolerance,
                                    max_params=max_params, max_macs=max_macs)
        selection = rounds_result.selection
        notes += rounds_result.notes     # why the loop stopped, and students a second measurement turned down
        if not rounds_result.met:
            notes.append(f"the budget was not met as measured after {len(rounds_result.rounds)} rounds: the closest "
                         "student is handed back (see budget.rounds)")
    else:
        selection = select(lib, target, metric=metric, max_params=max_params, max_macs=max_macs)
    base = teacher
    if selection.thinned:      # the thinned teacher, its readers refitted on the library's calibration images
        calibration, _ = calibration_split(data, teacher, samples=int(lib.key.get("samples", samples)),
                                           held_out=int(lib.key.get("held_out", held_out)), seed=seed)
        base = thin_teacher(teacher, lib, selection.widths, calibration)
        notes.append("thinner channel groups: " + ", ".join(f"{g}={w}" for g, w in selection.thinned.items())
                     + "; the student was built on the teacher thinned to them and reconstructed against it")
    student = assemble(teacher, lib, selection.choices, widths=selection.widths, base=base)
    report = reconstruct(student, base, data, samples=reconstruct_samples, steps=reconstruct_steps,
                         progress=progress, seed=seed)
    training = before_training = None
    if epochs > 0:
        train_set, val_set = _datasets(data, val_data, student, data_dir)
        train_set = train_data if train_data is not None else train_set
        cfg = config or DistillConfig.fine_tuning(epochs=epochs, lr=teacher_lr(teacher) or 0.1, progress=progress,
                                                  seed=seed)
        start = copy.deepcopy(student)      # the copy keeps its records (recipe, preprocessing) for saving
        with warnings.catch_warnings():     # distill's own warning advises keeping a copy; compress keeps one
            warnings.simplefilter("ignore", StartLostWarning)
            training = distill(teacher, student, train_set, val_data=val_set, config=cfg)
        lost = lost_start_message(training.start, training.end, cfg, where_start=KEPT_START)
        if lost is not None:
            notes.append(lost)
            before_training = start
    counts = {name: {"params": count_params(m, "trainable"), "paper": count_params(m, "paper"),
                     "macs": count_macs(m, (1, *lib.input_shape))} for name, m in (("teacher", teacher),
                                                                                     ("student", student))}
    measured = None
    if metric == "latency":
        measured = _measure(teacher, student, lib, sorted({1, int(lib.key.get("batch", batch))}), repeats=repeats,
                            fold=fold)
        notes += _final_check(lib, measured, rounds_result, tolerance)
    return CompressResult(student=student, library=lib, selection=selection, budget=rounds_result,
                          reconstruction=report, training=training, measured=measured, counts=counts, notes=notes,
                          before_training=before_training,
                          front=front(lib, metric=metric, max_params=max_params, max_macs=max_macs,
                                      offset=_offset(rounds_result)))


#: where the student before training is, when distillation ended below it
KEPT_START = ("The student before training (assembled and reconstructed, same architecture and latency) is kept as "
              "CompressResult.before_training; the command line writes it beside the output as "
              "STEM.before-training.pt. With little training data it can be the one to ship (or pass epochs=0).")


def _normalised_ms(lib: Library, measured: Measured, batch: int) -> float:
    """The student's measured time at ``batch`` in the library's time scale: its ratio to the teacher timed beside
    it, times the library's teacher time (the module docstring says why)."""
    return measured.student_ms[batch] * (lib.teacher_latency_ms or measured.teacher_ms[batch]) / \
        measured.teacher_ms[batch]


def _final_check(lib: Library, measured: Measured, rounds: BudgetResult | None, tolerance: float) -> list[str]:
    """A note where the final side-by-side measurement (after reconstruction and training) puts the student over
    the budget that its round met: one measurement on a busy machine can move by several per cent, and the user
    should know which figure to trust before shipping."""
    if rounds is None or not rounds.met or not rounds.rounds:
        return []
    final = _normalised_ms(lib, measured, int(lib.key.get("batch", 1)))
    if final <= rounds.budget * (1 + tolerance):
        return []
    return [f"measured again after training, the student took {final:.3f} ms (normalised to the library's teacher "
            f"time), over the budget of {rounds.budget:.3f} ms (+{tolerance:.0%} allowed) that its last round met at "
            f"{rounds.rounds[-1].worst:.3f} ms. The architecture is the same, so the two measurements differ by "
            "the machine's noise: time teacher and student again side by side on a quiet machine (cheapconv compare "
            "TEACHER STUDENT --runtime ...), or compress for a budget a few per cent tighter."]


def _offset(rounds: BudgetResult | None) -> float:
    """How far the additive latency model was off (measured − predicted) for the student handed back: the last
    round's when the budget was met, else the round measured lowest (the one returned)."""
    if rounds is None or not rounds.rounds:
        return 0.0
    r = rounds.rounds[-1] if rounds.met else min(rounds.rounds, key=lambda r: r.worst)
    return r.mean - r.predicted
