"""Stage ``lite0`` of the compress study: the second, real teacher family (issue 27: "It runs end to end on a
second, real teacher family").

The pretrained-teacher journey's EfficientNet-Lite0 (ImageNet weights, fine-tuned on an ImageFolder of real
Fashion-MNIST images at 96×96; ``examples/pretrained_teacher.sh``) compressed in ONNX Runtime at batch 1, one
thread, for each ``--budgets``: library (default families, or ``--lite0-families``), exact selection, measured
budget loop, assembly, reconstruction and one epoch of distillation, all through ``cheapconv.compress`` with the
data given by name, so the student is fed as the teacher records (its own mean/std, bicubic resize). One record per
budget (``lite0 <runtime> b<batch> <budget> <teacher sha>``), one for the library's build time and one for the
teacher's top-1 on the same held-out images; students saved
as ``OUT/lite0-student-<runtime>-<budget>.pt``. Resumable: the library folder continues, finished budgets are
skipped. Needs a quiet machine (library timings, the measured loop; the load average is in every record).
``--attempt N`` runs the budgets again from the same library, beside the first run (keys end in `` #N``, students
are ``lite0-student-<runtime>-run<N>-<budget>.pt``), to see how far one run's measurements can be trusted.

    python -m benchmarks.compress --stage lite0 --lite0-teacher T.pt --images DIR --out OUT --runtime onnxruntime
    python -m benchmarks.compress --stage remeasure --lite0-teacher T.pt --out OUT --runtime onnxruntime --budgets ...
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import cheapconv
from cheapconv.compression import BudgetUnreachableError
from cheapconv.data import adapt_for_model, get_dataset
from cheapconv.models import default_input_size

from ..common.records import append_record, file_sha
from ..common.report import say
from . import remeasure
from .report import attempt_suffix, lite0_setting_name, run_label


def run(args, results: Path, done: set[str]) -> None:
    """Every budget of ``args.budgets`` not yet in ``done``, from one library per runtime and batch."""
    teacher = cheapconv.load(args.lite0_teacher)
    sha = file_sha(args.lite0_teacher)
    data = f"imagefolder:{args.images}"
    families = args.lite0_families.split(",") if args.lite0_families else None
    folder = args.out / f"lite0-library-{args.runtime}-b{args.batch}"
    teacher_key = f"lite0 teacher {sha}"
    if teacher_key not in done:     # the teacher on the held-out images the students' start and end are read on
        fit = adapt_for_model(data, teacher)    # fed as compress feeds its students (its recorded preprocessing)
        held_out = get_dataset(data, "test", in_chans=fit.in_chans, image_size=fit.image_size,
                               preprocessing=fit.preprocessing)
        append_record(results, {"key": teacher_key, "stage": "lite0", "teacher_sha": sha,
                                "top1": cheapconv.evaluate(teacher, held_out)["top1"], "images": len(held_out)})
    run_key = attempt_suffix(args.attempt)    # a repeated run's records sit beside the first run's
    todo = [b for b in args.budgets if f"lite0 {args.runtime} b{args.batch} {b} {sha}{run_key}" not in done]
    if not todo:
        return
    resumed = (folder / "library.json").is_file()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = cheapconv.build_library(teacher, data, runtime=args.runtime, batch=args.batch, threads=1,
                                          families=families, samples=args.samples, held_out=args.held_out,
                                          directory=folder, progress=not args.quiet, seed=args.seed)
    library_key = f"lite0 library {args.runtime} b{args.batch} {sha}"
    if library_key not in done:     # a resumed build's time is only the part this run did (``resumed``)
        append_record(results, {"key": library_key, "stage": "lite0", "runtime": args.runtime, "batch": args.batch,
                                "families": families, "seconds": time.perf_counter() - started,
                                "sites": len(library.sites),
                                "options": sum(len(s.options) - 1 for s in library.sites),
                                "teacher_latency_ms": library.teacher_latency_ms,
                                "resumed": resumed,
                                "loadavg": [round(v, 2) for v in os.getloadavg()]})
    for budget in todo:
        key = f"lite0 {args.runtime} b{args.batch} {budget} {sha}{run_key}"
        say(f"== {key}")
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = cheapconv.compress(teacher, data, budget, runtime=args.runtime, batch=args.batch,
                                            threads=1, library=library, epochs=args.epochs,
                                            reconstruct_samples=args.samples, repeats=args.repeats,
                                            progress=not args.quiet, seed=args.seed)
        except BudgetUnreachableError as e:
            append_record(results, {"key": key, "budget": budget, "runtime": args.runtime, "attempt": args.attempt,
                                    "unreachable": str(e),
                                    "loadavg": [round(v, 2) for v in os.getloadavg()]})
            continue
        cheapconv.save(result.student, args.out / f"{student_stem(args)}-{budget.rstrip('%')}.pt")
        training = result.training
        append_record(results, {
            "key": key, "stage": "lite0", "teacher_sha": sha, "budget": budget, "runtime": args.runtime,
            "batch": args.batch, "attempt": args.attempt, "repeats": args.repeats, "families": families,
            "met": result.met, "notes": result.notes,
            "choices": {s: c for s, c in result.selection.choices.items() if c != "keep"},
            "rounds": [vars(r) for r in result.budget.rounds] if result.budget else [],
            "teacher_ms": result.measured.teacher_ms if result.measured else None,
            "student_ms": result.measured.student_ms if result.measured else None,
            "counts": result.counts, "start": training.start if training else None,
            "end": training.end if training else None, "seconds": time.perf_counter() - started,
            "loadavg": [round(v, 2) for v in os.getloadavg()]})


def remeasure_students(args, results: Path, done: set[str]) -> None:
    """``--stage remeasure --lite0-teacher T``: the saved Lite0 students and their teacher timed again side by side
    (:mod:`.remeasure`), at the teacher's recorded input size."""
    teacher = cheapconv.load(args.lite0_teacher)
    remeasure.run(teacher, args, lite0_setting_name(args.runtime, args.attempt), file_sha(args.lite0_teacher),
                  results, done, args.budgets, stem=student_stem(args), input_shape=default_input_size(teacher))


def student_stem(args) -> str:
    """The saved students' file names before ``-<budget>.pt``: ``lite0-student-<runtime>``, and ``-run<N>`` for a
    repeated run (``--attempt N``)."""
    return f"lite0-student-{args.runtime}{run_label(args.attempt)}"
