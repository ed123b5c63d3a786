"""The int8 study (issue 29): does a cheap block's cut survive static int8 quantisation in ONNX Runtime?

On real Fashion-MNIST with the reproduction study's WRN-16-2 teacher (90.49 %, ``benchmarks/compress``'s teacher
file) and its single-type students ``G(4)``, ``B(2)``, ``BG(2,M)`` (teacher-initialised, reconstructed and distilled
one epoch, ``students.py``), plus any other student file (``--extra NAME=FILE``: a ``compress`` student, a rounded
one), and on the fine-tuned EfficientNet-Lite0 of the pretrained-teacher journey (``--lite0-teacher``,
``--lite0-student``, ``--images``: its ImageFolder, at its recorded 96×96). Stages, each resumable (a model or
setting already in ``benchmarks/results/int8.jsonl`` is skipped):

    python -m benchmarks.int8 --stage students --teacher T.pt --out bench-out/int8
    python -m benchmarks.int8 --stage accuracy --teacher T.pt --out bench-out/int8 [--extra compress-50%=S.pt]
    python -m benchmarks.int8 --stage latency  --teacher T.pt --out bench-out/int8 [--extra ...]   # quiet machine
    python -m benchmarks.int8 --stage gap --teacher T.pt --out bench-out/int8 --lite0-...   # Lite0's int8 loss
    python -m benchmarks.int8 --report

Latency figures need a quiet machine: every record keeps the load average.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.records import append_record, latest_by, read_records
from ..common.report import say
from .gap import gap_records
from .measure import accuracy_record, latency_records
from .students import SPECS, build_students, student_path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "int8.jsonl"


def groups(args: argparse.Namespace) -> list[tuple[str, str, tuple[int, ...], dict[str, Path]]]:
    """(group, dataset, input shape, {model name: file}) for each group of models compared with its teacher."""
    students = {} if args.extras_only else {spec: student_path(args.out, spec) for spec in SPECS}
    wrn = {"teacher": args.teacher, **students}
    for extra in args.extra:
        name, _, file = extra.partition("=")
        wrn[name] = Path(file)
    found = [("wrn_16_2", "fashion-mnist", (3, 32, 32), wrn)]
    if args.lite0_teacher and args.lite0_student and args.images:
        lite0 = {"teacher": args.lite0_teacher, "LRp(0.5)": args.lite0_student}
        for extra in args.lite0_extra:
            name, _, file = extra.partition("=")
            lite0[name] = Path(file)
        found.append(("efficientnet_lite0", f"imagefolder:{args.images}", (3, 96, 96), lite0))
    return found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=("students", "accuracy", "latency", "gap"))
    p.add_argument("--teacher", type=Path, help="The trained WRN-16-2 teacher file.")
    p.add_argument("--out", type=Path, default=Path("bench-out/int8"))
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FILE", help="Another WRN-16-2 student.")
    p.add_argument("--lite0-teacher", type=Path)
    p.add_argument("--lite0-student", type=Path)
    p.add_argument("--extras-only", action="store_true",
                   help="The WRN group is the teacher and the --extra students only (a follow-up timing).")
    p.add_argument("--lite0-extra", action="append", default=[], metavar="NAME=FILE",
                   help="Another student of the Lite0 teacher.")
    p.add_argument("--images", type=Path, help="The Lite0 journey's ImageFolder.")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", action="store_true", help="Print the tables from the results file and stop.")
    args = p.parse_args(argv)
    if args.report:
        from .report import render

        print(render(read_records(RESULTS)))
        return
    if args.stage is None or args.teacher is None:
        p.error("--stage and --teacher are required (or --report)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "students":
        build_students(args.teacher, args.out, progress=not args.quiet)
        return
    done = latest_by(read_records(RESULTS), "key")
    for group, data, shape, models in groups(args):
        if args.stage == "gap":
            if group != "wrn_16_2":     # the WRN models lose nothing in int8 (the accuracy table)
                for key, record in gap_records(models, data, args.out, group, set(done), shape):
                    append_record(RESULTS, {"key": key, "group": group, **record})
        elif args.stage == "accuracy":
            for name, file in models.items():
                key = f"accuracy {group} {name}"
                if not Path(file).is_file():
                    say(f"-- {key}: {file} is not there yet (stage students), skipped")
                    continue
                if key not in done:
                    say(f"== {key}")
                    append_record(RESULTS, {"key": key, "group": group,
                                            **accuracy_record(f"{group}-{name}", file, data, args.out)})
        else:
            key = f"latency {group} {','.join(models)}"
            missing = [str(f) for f in models.values() if not Path(f).is_file()]
            if key in done or missing:
                if missing:
                    say(f"-- {key}: skipped, not there yet: {', '.join(missing)}")
                continue
            say(f"== {key}")
            for record in latency_records(list(models), list(models.values()), shape, repeats=args.repeats):
                append_record(RESULTS, {"key": f"{key} t{record['threads']} b{record['batch']}", "group": group,
                                        **record})
            append_record(RESULTS, {"key": key, "group": group, "finished": True})


if __name__ == "__main__":
    main()
