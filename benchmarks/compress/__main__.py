"""``compress`` on the reproduction study's teacher (issue 27): WRN-16-2 on real Fashion-MNIST, one candidate library
per runtime, students at budgets of 30 %, 50 % and 70 % of the teacher's measured latency, each assembled,
reconstructed and distilled for one epoch, measured side by side with the teacher, and evaluated on the test set.

Resumable: the library lives in ``OUT/library-<runtime>`` (a stopped build continues), and every finished budget is
one line of ``benchmarks/results/compress.jsonl`` (a rerun skips it). Stages, each a separate run:

    python -m benchmarks.compress --teacher T.pt --out bench-out/compress --runtime torch      # library + budgets
    python -m benchmarks.compress --teacher T.pt --out bench-out/compress --runtime onnxruntime [--batch 32]
    python -m benchmarks.compress --teacher T.pt --out bench-out/compress --stage fisher    # against the search
    python -m benchmarks.compress --teacher T.pt --out bench-out/compress --runtime R --stage remeasure  # re-time
    python -m benchmarks.compress --stage lite0 --lite0-teacher T.pt --images DIR --runtime onnxruntime  # Lite0
    python -m benchmarks.compress --stage remeasure --lite0-teacher T.pt --runtime onnxruntime  # re-time Lite0's
    python -m benchmarks.compress --teacher T.pt --out bench-out/compress --stage build-time   # fresh build, timed
    python -m benchmarks.compress --report

A library for another runtime or batch takes the fits of ``library-torch`` where that one is finished (only the
timings are redone: ``build_library(fits_from=...)``). The ``fisher`` stage (``fisher.py``) compares the 50 %
student with the Fisher-potential search's winner for the same budget over seeds.

The teacher: ``cheapconv train wrn_16_2 --data fashion-mnist --epochs 3 --precision bf16 --channels-last -b 128``
(the reproduction study's schedule). Latency figures need a quiet machine: each record keeps the load average.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch

import cheapconv
from cheapconv.compression import DEFAULT_GROUP_WIDTHS, BudgetUnreachableError
from cheapconv.data import get_dataset

from ..common.records import append_record, file_sha, latest_by, read_records
from ..common.report import say
from . import build_time, fisher, lite0, remeasure
from .report import DEFAULT_FAMILIES, setting_name

RESULTS = Path(__file__).resolve().parents[1] / "results" / "compress.jsonl"
BUDGETS = ("70%", "50%", "30%")


def setting(args: argparse.Namespace) -> str:
    """The library's setting in names and keys (:func:`.report.setting_name`)."""
    return setting_name({"runtime": args.runtime, "batch": args.batch, "families": families(args)})


#: the pseudo-family that turns on coupled widths (``compress(groups=...)``, issue 31): one width per channel group
COUPLED = "coupled"


def families(args: argparse.Namespace) -> list[str] | None:
    """The setting's families: the defaults, plus those ``--families`` adds (``coupled`` among them: see
    :func:`block_families` and :func:`groups`)."""
    if not args.families:
        return None
    return [*DEFAULT_FAMILIES, *(f for f in args.families.split(",") if f not in DEFAULT_FAMILIES)]


def block_families(args: argparse.Namespace) -> list[str] | None:
    """The library's block families: the setting's without ``coupled``."""
    named = families(args)
    return None if named is None else [f for f in named if f != COUPLED] or None


def groups(args: argparse.Namespace) -> list[str] | None:
    """The widths each channel group may take (``compress(groups=...)``) where ``--families`` names ``coupled``."""
    return list(DEFAULT_GROUP_WIDTHS) if COUPLED in (families(args) or []) else None


def library_dir(args: argparse.Namespace) -> Path:
    """The setting's library folder (one per runtime, batch size and families)."""
    return args.out / f"library-{setting(args)}"


def donor(args: argparse.Namespace) -> Path | None:
    """The finished eager-torch library whose fits another setting's library takes (None for that one itself): the
    one with the same families where it exists (``library-torch-thin`` for ``--families thin``), else the default
    one (its fits; the options it lacks are fitted anew)."""
    same_families = args.out / f"library-{setting_name({'runtime': 'torch', 'families': families(args)})}"
    same_blocks = args.out / f"library-{setting_name({'runtime': 'torch', 'families': block_families(args)})}"
    for torch_lib in (same_families, same_blocks, args.out / "library-torch"):
        if library_dir(args) != torch_lib and (torch_lib / "library.json").is_file():
            return torch_lib
    return None


def run_budget(teacher: torch.nn.Module, args: argparse.Namespace, budget: str, train, augmented, test) -> dict:
    """One student: compress at ``budget`` (library reused; distilled on the ``augmented`` training set)."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = cheapconv.compress(teacher, train, budget, train_data=augmented, runtime=args.runtime,
                                    families=block_families(args), groups=groups(args),
                                    batch=args.batch, threads=1, library=library_dir(args),
                                    samples=args.samples,
                                    held_out=args.held_out, epochs=args.epochs, val_data=test, repeats=args.repeats,
                                    reconstruct_samples=args.samples, progress=not args.quiet, seed=args.seed)
    seconds = time.perf_counter() - started
    cheapconv.save(result.student, args.out / f"student-{setting(args)}-{budget.rstrip('%')}.pt")
    training = result.training
    return {
        "budget": budget, "runtime": args.runtime, "batch": args.batch, "families": families(args), "threads": 1,
        "epochs": args.epochs,
        "choices": {site: spec for site, spec in result.selection.choices.items() if spec != "keep"},
        "widths": result.selection.thinned,
        "predicted_latency_ms": result.selection.predicted_latency_ms,
        "predicted_loss": result.selection.predicted_loss,
        "gap": result.selection.mip_gap, "met": result.met,
        "rounds": [vars(r) for r in result.budget.rounds] if result.budget else [],
        "teacher_ms": result.measured.teacher_ms if result.measured else None,
        "student_ms": result.measured.student_ms if result.measured else None,
        "counts": result.counts, "start": training.start if training else None,
        "end": training.end if training else None,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compress", description=__doc__.split("\n")[0])
    p.add_argument("--teacher", type=Path, help="The trained WRN-16-2 teacher file.")
    p.add_argument("--out", type=Path, default=Path("bench-out/compress"))
    p.add_argument("--runtime", default="torch")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--budgets", nargs="+", default=list(BUDGETS))
    p.add_argument("--families", default=None,
                   help="Non-default families to add to the defaults (thin); its own library folder, fits taken "
                        "from library-torch-thin (or library-torch) where it exists")
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--held-out", type=int, default=512)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=("budgets", "fisher", "remeasure", "lite0", "build-time"), default="budgets")
    p.add_argument("--lite0-teacher", type=Path,
                   help="--stage lite0: the fine-tuned EfficientNet-Lite0 file (with --stage remeasure: re-time "
                        "its saved students instead of the WRN ones).")
    p.add_argument("--images", type=Path, help="--stage lite0: its ImageFolder (train/ and val/).")
    p.add_argument("--lite0-families", default=None, help="--stage lite0: families (default: compress's).")
    p.add_argument("--attempt", type=int, default=1,
                   help="--stage lite0 (and its remeasure): run the budgets again from the same library, kept "
                        "beside run 1 (records and students marked run N).")
    p.add_argument("--remeasure-repeats", type=int, default=60)
    p.add_argument("--fisher-budget", default="50%")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2],
                   help="Distillation seeds of --stage fisher (none: build and time the two starts only).")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", action="store_true", help="Print the table from the results file and stop.")
    args = p.parse_args(argv)
    if args.report:
        from .report import render

        print(render(read_records(RESULTS)))
        return
    if args.stage == "lite0":
        if args.lite0_teacher is None or args.images is None:
            p.error("--stage lite0 needs --lite0-teacher and --images")
        args.out.mkdir(parents=True, exist_ok=True)
        lite0.run(args, RESULTS, set(latest_by(read_records(RESULTS), "key")))
        return
    if args.stage == "remeasure" and args.lite0_teacher is not None:   # the Lite0 students, not the WRN ones
        lite0.remeasure_students(args, RESULTS, set(latest_by(read_records(RESULTS), "key")))
        return
    if args.teacher is None:
        p.error("--teacher is required")
    # every timing pins its own thread count (threads=1 below); training and fitting use all the cores
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = cheapconv.load(args.teacher)
    sha = file_sha(args.teacher)
    train = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32, augment=False)
    test = get_dataset("fashion-mnist", "test", in_chans=3, image_size=32)
    done = latest_by(read_records(RESULTS), "key")
    if args.stage == "build-time":
        build_time.run(teacher, train, args, sha, RESULTS, set(done))
        return
    library_key = f"library {setting(args)} {sha}"
    if library_key not in done:
        started = time.perf_counter()
        library = cheapconv.build_library(teacher, train, runtime=args.runtime, batch=args.batch, threads=1,
                                          samples=args.samples, held_out=args.held_out,
                                          directory=library_dir(args), progress=not args.quiet,
                                          seed=args.seed, fits_from=donor(args), families=block_families(args),
                                          groups=groups(args))
        append_record(RESULTS, {"key": library_key, "teacher_sha": sha, "runtime": args.runtime, "batch": args.batch,
                                "families": families(args),
                                "seconds": time.perf_counter() - started, "sites": len(library.sites),
                                "options": sum(len(s.options) - 1 for s in library.sites),
                                "groups": {g.name: [w.spec for w in g.widths] for g in library.groups},
                                "priced_at_widths": sum(len(o.at_widths) for s in library.sites for o in s.options),
                                "teacher_latency_ms": library.teacher_latency_ms,
                                "loadavg": [round(v, 2) for v in os.getloadavg()]})
    if args.stage == "remeasure":
        remeasure.run(teacher, args, setting(args), sha, RESULTS, set(done), args.budgets)
        return
    if args.stage == "fisher":
        augmented = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
        fisher.run(teacher, train, augmented, test, args, args.fisher_budget, RESULTS, set(done), sha,
                   library=library_dir(args))
        return
    teacher_eval = cheapconv.evaluate(teacher, test)
    for budget in args.budgets:
        key = f"student {args.runtime} b{args.batch} {budget} {sha} e{args.epochs} s{args.seed}" + (
            f" +{args.families}" if args.families else "")
        if key in done:
            continue
        say(f"== {key}")
        try:
            record = run_budget(teacher, args, budget, train,
                                get_dataset("fashion-mnist", "train", in_chans=3, image_size=32), test)
        except BudgetUnreachableError as e:   # a finding, not a failure: the library's reach
            record = {"budget": budget, "runtime": args.runtime, "batch": args.batch, "families": families(args),
                      "unreachable": str(e),
                      "reachable_ms": list(e.reachable)}
        append_record(RESULTS, {"key": key, "teacher_sha": sha, "teacher_top1": teacher_eval["top1"], **record,
                                "loadavg": [round(v, 2) for v in os.getloadavg()]})


if __name__ == "__main__":
    main()
