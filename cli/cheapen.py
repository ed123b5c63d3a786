"""``cheapconv cheapen``, ``cheapconv inspect`` and ``cheapconv blocks``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer
from rich.table import Table

from .app import (
    app,
    check_input_size,
    check_outputs,
    err,
    literal,
    literal_table,
    out,
    output_path,
    parse_input_size,
    save_model,
    warn,
    weights_notes,
)
from .options import round_option
from .train import preprocessing_note


def resolve_policy(block: str | None, policy: str | None, policy_file: Path | None, model: str | None = None):
    from cheapconv.surgery.policy import Policy, parse_policy

    given = [x for x in (block, policy, policy_file) if x is not None]
    if len(given) != 1:
        hint = ""
        if not given and model is not None and _is_saved_student(model):
            hint = (f"; {model} is a saved student: to start it from its teacher, give that instead with "
                    "--teacher TEACHER --init teacher (and --calib-data DATA to fit it on images)")
        raise typer.BadParameter("give exactly one of --block SPEC, --policy RULES or --policy-file FILE "
                                 f"(e.g. --block 'G(4)'){hint}", param_hint="--block/--policy/--policy-file")
    if policy_file is not None:
        return Policy.from_file(policy_file)
    return parse_policy(block if block is not None else policy)


def _is_saved_student(spec: str) -> bool:
    """Whether ``spec`` is a cheapconv file that records a plan (a cheapened student); nothing is built."""
    from cheapconv.errors import CheapconvError
    from cheapconv.store.modelfile import read_recipe
    from cheapconv.store.resolve import is_model_file

    if not (is_model_file(spec) and Path(spec).is_file()):
        return False
    try:
        return bool(read_recipe(spec).get("plan"))
    except CheapconvError:
        return False


@app.command()
def cheapen(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="wrn_40_2, resnet34, torchvision:NAME, timm:NAME, or a saved file."),
    block: str = typer.Option(None, "--block", "-b", help="One block spec for every eligible layer, e.g. 'G(4)'."),
    policy: str = typer.Option(None, "--policy", "-p", help="Rules, e.g. 'conv1=keep; layer4.*=BG(2,4); G(4)'."),
    policy_file: Path = typer.Option(None, "--policy-file", help="A file with one rule per line."),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write the student (.pt)."),
    num_classes: int = typer.Option(None, "--num-classes", min=1, help="Classifier size of the teacher."),
    input_size: str = typer.Option(None, "--input-size", help="C,H,W for MACs (default: the model's own)."),
    weights: Path = typer.Option(None, "--weights", help="Local weights file for the teacher."),
    weights_by_position: bool = typer.Option(False, "--weights-by-position",
                                             help="Load --weights in order, for a file whose tensor names differ "
                                                  "from the model's (same shapes, same order)."),
    teacher_spec: str = typer.Option(None, "--teacher", "-t",
                                     help="MODEL is then a saved student (its file has its policy): start it from "
                                          "this teacher (a cheapconv file, or a zoo name with --weights) with "
                                          "--init teacher, and fit it with --calib-data."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Download the hub's weights (needs network)."),
    leaf: list[str] = typer.Option([], "--leaf", help="Module class or name fx must not trace into (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only; write nothing."),
    strict: bool = typer.Option(False, "--strict", help="Fail if a matched layer cannot take its block."),
    changes_only: bool = typer.Option(False, "--changes-only", help="List only the layers that change."),
    trust: bool = typer.Option(False, "--trust", help="Allow a model file that needs unpickling (runs its code)."),
    init: str = typer.Option("random", "--init",
                             help="How replaced blocks start: random (as in the papers) or teacher (closed forms "
                                  "from the teacher's convs, exact at full rank)."),
    calib_data: str = typer.Option(None, "--calib-data",
                                   help="With --init teacher: fit every replaced block to the teacher on images of "
                                        "this dataset (any name --data takes, e.g. fashion-mnist, imagefolder:DIR; "
                                        "training split, no augmentation)."),
    calib_samples: int = typer.Option(2048, "--calib-samples", min=1, help="Calibration images for --calib-data."),
    calib_steps: int = typer.Option(200, "--calib-steps", min=0,
                                    help="Optimisation steps per replaced block for --calib-data."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where --calib-data's files are looked for."),
    round_to: int = round_option(),
) -> None:
    """Rewrite MODEL with cheap convolution blocks and write the student; or, with --teacher, start a saved
    student (MODEL) from its teacher again.

    Example: cheapconv cheapen resnet34 --block 'G(4)' -o student.pt

    Example: cheapconv cheapen student.pt --teacher teacher.pt --init teacher --calib-data imagefolder:DIR
    -o reconstructed.pt
    """
    import cheapconv
    from cheapconv.surgery.plans import summary_table

    if init not in ("random", "teacher"):
        raise typer.BadParameter(f"{init!r} is not a way to start the student: use 'random' or 'teacher'",
                                 param_hint="--init")
    if teacher_spec is not None:
        check_restart(block, policy, policy_file, init)
        return restart(model, teacher_spec, output=output, weights=weights, weights_by_position=weights_by_position,
                       num_classes=num_classes, pretrained=pretrained, trust=trust, dry_run=dry_run,
                       changes_only=changes_only, calib_data=calib_data, calib_samples=calib_samples,
                       calib_steps=calib_steps, data_dir=data_dir, input_size=parse_input_size(input_size))
    the_policy = resolve_policy(block, policy, policy_file, model)
    if round_to is not None:
        the_policy = cheapconv.parse_policy(the_policy).rounded(cheapconv.blocks.check_multiple(round_to))
    check_calibration(init, calib_data)
    size = parse_input_size(input_size)
    if not dry_run:
        output_path(output)
        check_outputs(inputs={"MODEL": model, "--weights": weights, "--policy-file": policy_file},
                      outputs={"-o/--output": output})
    from cheapconv.store.resolve import resolve_model
    with err.status(f"Building {model}..."):
        teacher = resolve_model(model, weights=weights, num_classes=num_classes, pretrained=pretrained, trust=trust,
                                what="MODEL", weights_by_position=weights_by_position)
    for line in weights_notes(teacher):
        err.print(f"note: {line}.", highlight=False, markup=False)
    check_input_size(teacher, size, what=model)
    with err.status("Tracing, planning and rewriting..."), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dry_run:
            the_plan = cheapconv.plan(teacher, the_policy, input_size=size, strict=strict, leaf_modules=leaf,
                                      model_name=getattr(teacher, "cheapconv_source", None) or model)
            student = None
        else:
            student = cheapconv.cheapen(teacher, the_policy, input_size=size, strict=strict, leaf_modules=leaf,
                                        init=init)
            the_plan = student.cheapconv_plan
    for w in caught:
        warn(str(w.message))
    out.print(literal_table(the_plan.table(show_all=not changes_only)))
    out.print(literal_table(summary_table(the_plan)))
    if the_plan.stages:
        out.print(f"Attention-transfer taps: {literal(', '.join(the_plan.stages))}", highlight=False)
    if dry_run:
        err.print("Dry run: nothing written.")
        return
    if init == "teacher":
        out.print(literal_table(init_table(student.cheapconv_init)))
    if calib_data is not None:
        report = calibrate(student, teacher, calib_data, samples=calib_samples, steps=calib_steps,
                           data_dir=data_dir, input_size=size)
        out.print(literal_table(report.table()))
    _write(student, output, from_teacher=init == "teacher")


def _write(student, output: Path, *, from_teacher: bool) -> None:
    """Save the student (a pickle only with the library's warning, printed) and say what to do next."""
    kind = save_model(student, output)
    err.print(f"Wrote {literal(output)} ({kind} format" + (": loading it will need --trust" if kind == "pickle" else "")
              + ").", highlight=False)
    if from_teacher:
        # measured (benchmarks/teacher_init/README.md): unclipped lr-0.1 steps take a reconstructed student to
        # chance
        err.print("Next: cheapconv distill --student THIS_FILE ... trains it with its gradient norm clipped at 1 and a "
                  "cosine schedule (the file records that it starts from its teacher; unclipped first steps of the "
                  "paper's recipe undo such a start). A short budget is enough: e.g. --epochs 1.", highlight=False)


def check_restart(block: str | None, policy: str | None, policy_file: Path | None, init: str) -> None:
    """``--teacher`` starts a saved student from its teacher: the student file has its policy, and what it
    does is ``--init teacher``; other combinations are errors that say what to pass."""
    if any(x is not None for x in (block, policy, policy_file)):
        raise typer.BadParameter("with --teacher, MODEL is a saved student and its file has its policy: drop "
                                 "--block/--policy/--policy-file (or drop --teacher to cheapen MODEL itself)",
                                 param_hint="--teacher")
    if init != "teacher":
        raise typer.BadParameter("--teacher starts the saved student from that teacher: add --init teacher (and "
                                 "--calib-data DATA to fit it on images)", param_hint="--init")


def restart(model: str, teacher_spec: str, *, output: Path | None, weights: Path | None, weights_by_position: bool,
            num_classes: int | None, pretrained: bool, trust: bool, dry_run: bool, changes_only: bool,
            calib_data: str | None, calib_samples: int, calib_steps: int, data_dir: Path | None,
            input_size: tuple[int, int, int] | None) -> None:
    """``cheapen STUDENT_FILE --teacher TEACHER --init teacher [--calib-data D]``: the saved student's blocks set
    from the teacher's convs (closed forms), then fitted on calibration images (at ``input_size`` where given,
    else as the student records); written to ``output``."""
    import cheapconv
    from cheapconv.errors import UsageError
    from cheapconv.store.resolve import is_model_file, resolve_model
    from cheapconv.surgery.plans import summary_table

    if not is_model_file(model):
        raise UsageError(f"With --teacher, MODEL is a saved student file (written by cheapconv cheapen); "
                         f"{model!r} is a zoo name. To cheapen it, drop --teacher and give --block SPEC.")
    if not dry_run:
        output_path(output)
        check_outputs(inputs={"MODEL": model, "--teacher": teacher_spec, "--weights": weights},
                      outputs={"-o/--output": output})
    with err.status(f"Loading {model} and {teacher_spec}..."):
        student = resolve_model(model, trust=trust, what="MODEL")
        if getattr(student, "cheapconv_plan", None) is None:
            raise UsageError(f"{model!r} is not a cheapened student: its file records no plan (a teacher, or a model "
                             "as built or trained). With --teacher, MODEL is the file cheapconv cheapen wrote; to "
                             f"cheapen {model!r} itself, drop --teacher and give --block SPEC.")
        teacher = resolve_model(teacher_spec, weights=weights, num_classes=num_classes, pretrained=pretrained,
                                trust=trust, what="teacher", weights_by_position=weights_by_position)
    for line in weights_notes(teacher):
        err.print(f"note: {line}.", highlight=False, markup=False)
    the_plan = student.cheapconv_plan
    out.print(literal_table(the_plan.table(show_all=not changes_only)))
    out.print(literal_table(summary_table(the_plan)))
    if dry_run:
        err.print("Dry run: nothing written.")
        return
    student.cheapconv_init = cheapconv.init_from_teacher(student, teacher)
    out.print(literal_table(init_table(student.cheapconv_init)))
    if calib_data is not None:
        report = calibrate(student, teacher, calib_data, samples=calib_samples, steps=calib_steps,
                           data_dir=data_dir, input_size=input_size)
        out.print(literal_table(report.table()))
    _write(student, output, from_teacher=True)


def check_calibration(init: str, calib_data: str | None) -> None:
    """``--calib-data`` refines a teacher-initialised student; without ``--init teacher`` it is an error
    (reconstruction is designed to start from the closed forms, and a silent switch of --init would hide
    what the student started from)."""
    if calib_data is not None and init != "teacher":
        raise typer.BadParameter("--calib-data fits the blocks of a teacher-initialised student: add --init teacher "
                                 "(e.g. --init teacher --calib-data fashion-mnist)", param_hint="--calib-data")


def calibrate(student, teacher, name: str, *, samples: int, steps: int, data_dir: Path | None,
              input_size: tuple[int, ...] | None = None):
    """Block-wise reconstruction of ``student`` on ``samples`` training images of dataset ``name``, adapted to
    the model's input the way ``--data`` is everywhere (cheapconv.data.adapt_for_model): the size and
    normalisation the student records (its teacher's, at ``--input-size`` where given), else the teacher's;
    an explicit ``input_size`` (C, H, W) wins for the size."""
    import cheapconv
    from cheapconv.data import adapt_for_model, get_dataset

    fed = student if getattr(student, "cheapconv_preprocessing", None) is not None else teacher
    fit = adapt_for_model(name, fed, image_size=input_size[-1] if input_size else None)
    for note in fit.notes.values():
        err.print(f"note: {note}.", highlight=False, markup=False)
    data = get_dataset(name, "train", data_dir=data_dir, augment=False, in_chans=fit.in_chans,
                       image_size=fit.image_size, preprocessing=fit.preprocessing)
    line = preprocessing_note(data.info, fit.preprocessing, size_option=None if input_size else "--input-size")
    err.print(f"note: calibration {line}", highlight=False, markup=False)
    return cheapconv.reconstruct(student, teacher, data, samples=samples, steps=steps, progress=True)


def init_table(records):
    """The per-site table of ``--init teacher``: how each replaced block started and how close it is."""
    t = Table(title="Initialised from the teacher (weight error: ‖Ŵ − W‖/‖W‖ of the kernel the block computes)",
              title_justify="left")
    for col in ("layer", "block", "start", "weight error", "note"):
        t.add_column(col, overflow="fold")
    for r in records:
        error = "" if r.weight_error is None else f"{r.weight_error:.3g}"
        t.add_row(r.name, r.block, r.kind, error, r.note)
    return t


@app.command()
def inspect(
    file: Path = typer.Argument(..., metavar="FILE", help="A file written by cheapconv."),
    changes_only: bool = typer.Option(False, "--changes-only", help="List only the layers that changed."),
) -> None:
    """Print a saved model's recipe, its plan and its totals (no code from the file runs).

    Every string from the file is printed literally (rich markup and terminal control characters escaped).
    """
    from cheapconv.errors import FileFormatError
    from cheapconv.store.modelfile import describe_file
    from cheapconv.surgery.plans import Plan, summary_table

    summary = describe_file(file)
    recipe = summary["recipe"]
    t = Table(title=f"{file}", title_justify="left", show_header=False)
    t.add_column("field")
    t.add_column("value", overflow="fold")
    for key in ("source", "model", "policy", "storage", "input_size", "saved_at"):
        if recipe.get(key) is not None:
            t.add_row(key, str(recipe[key]))
    if recipe.get("preprocessing") is not None:   # checked when the file was read
        from cheapconv.models.preprocessing import Preprocessing

        t.add_row("preprocessing", Preprocessing.from_dict(recipe["preprocessing"]).describe())
    for key, value in (recipe.get("versions") or {}).items():
        t.add_row(f"version {key}", str(value))
    t.add_row("state-dict tensors", f"{summary['tensors']} ({summary['paper_values']:,} values, paper convention)")
    extra = {k: v for k, v in recipe.items() if k not in ("source", "source_kwargs", "model", "policy", "storage",
                                                           "input_size", "saved_at", "versions", "plan",
                                                           "leaf_modules", "notes", "preprocessing")}
    for key, value in extra.items():
        t.add_row(str(key), json.dumps(value) if not isinstance(value, str) else value)
    for note in recipe.get("notes") or []:
        t.add_row("note", note)
    out.print(literal_table(t))
    if recipe.get("plan"):
        try:
            the_plan = Plan.from_dict(recipe["plan"])
            tables = [the_plan.table(show_all=not changes_only), summary_table(the_plan)]
        except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
            raise FileFormatError(f"{str(file)!r} holds a malformed plan ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); its recipe fields are above. "
                                  "The file is damaged or was not written by cheapconv.") from None
        for table in tables:
            out.print(literal_table(table))
        if the_plan.stages:
            out.print(f"Attention-transfer taps: {literal(', '.join(map(str, the_plan.stages)))}", highlight=False)


@app.command()
def blocks() -> None:
    """List the block families, their structure and parameter formulas."""
    from cheapconv.blocks import BLOCK_ALIASES, BLOCK_REGISTRY

    t = Table(title="Cheap blocks (N = channels, M = C_out/b, k = kernel size)", title_justify="left")
    for col in ("spelling", "level", "structure replacing a k×k conv C_in→C_out", "conv params (C_in=C_out=N)"):
        t.add_column(col, overflow="fold")
    for cls in BLOCK_REGISTRY.values():
        t.add_row(cls.signature, cls.level, cls.structure, cls.params)
    for alias, canonical in BLOCK_ALIASES.items():
        t.add_row(alias, "alias", f"= {canonical}", "")
    out.print(t)
