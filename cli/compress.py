"""``cheapconv compress``: a trained teacher to the most accurate student that meets a budget as measured in the
runtime it ships in (a thin wrapper of :func:`cheapconv.compress`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from cheapconv.extensions import FAMILIES

from .app import app, check_outputs, err, literal, literal_table, out, output_path, warn
from .options import round_option, runtime_option


@app.command()
def compress(
    teacher: str = typer.Argument(..., metavar="TEACHER", help="A trained cheapconv file (or a zoo name with "
                                                                "--weights)."),
    data: str = typer.Option(..., "--data", "-d", help="Calibration and training images (a dataset name, e.g. "
                                                       "fashion-mnist or imagefolder:DIR)."),
    budget: str = typer.Option(..., "--budget", "-b", help="50% of the teacher, 2ms, 300k (parameters) or 40M "
                                                           "(MACs with --metric macs)."),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write the student (.pt)."),
    metric: str = typer.Option("latency", "--metric", "-m", help="latency (measured), params or macs."),
    runtime: str = runtime_option("Where latency is measured: the library's block timings, the budget loop and "
                                  "the final comparison"),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size the latency budget is for."),
    threads: int = typer.Option(1, "--threads", min=1, help="Intra-op CPU threads of every timing."),
    library: Path = typer.Option(None, "--library", help="Folder of the candidate library: built there, resumed "
                                                         "after a stop, reused by every budget of the same teacher "
                                                         "and settings (default: a temporary folder)."),
    fits_from: Path = typer.Option(None, "--fits-from", help="A library of the same teacher and data, built for "
                                   "another runtime, batch or thread count or with fewer families: take the fits "
                                   "and scores of its options and only time them here; fit only the options it "
                                   "lacks."),
    families: str = typer.Option(None, "--families", help=f"Candidate families, comma-separated: "
                                                          f"{FAMILIES.describe(last='or')} (default: those marked "
                                                          "default; a family is one file in "
                                                          "cheapconv/compression/families/)."),
    groups: str = typer.Option(None, "--groups", help="Coupled widths: also let each channel group (a stage's "
                               "residual stream, the stem's outputs) shrink to one of these widths, comma-separated "
                               "(Wg(0.75),Wg(0.5); 'default' for those), chosen with the blocks; off by default."),
    samples: int = typer.Option(1024, "--samples", min=1, help="Calibration images each option is fitted on."),
    held_out: int = typer.Option(512, "--held-out", min=1, help="Other images each option is scored on."),
    steps: int = typer.Option(0, "--fit-steps", min=0, help="Adam steps per option after its closed-form fit."),
    max_params: str = typer.Option(None, "--max-params", help="Also at most this many parameters (300k, 1.2M)."),
    max_macs: str = typer.Option(None, "--max-macs", help="Also at most this many MACs."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Measure-and-solve rounds of a latency budget."),
    epochs: int = typer.Option(1, "--epochs", min=0, help="Distillation epochs (0: stop after assembly and "
                                                          "reconstruction)."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Fold BatchNorm when the runtime times an exported "
                              "file."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where the dataset's files are."),
    weights: Path = typer.Option(None, "--weights", help="Local weights for a teacher given by zoo name."),
    write_front: bool = typer.Option(True, "--front/--no-front", help="Also write the front of other budgets "
                                     "solved from the same library beside the student: s.front.csv and (with "
                                     "matplotlib) s.front.png for -o s.pt."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the sites and options, and estimate the library's "
                                                          "build time (two options built now, or the finished "
                                                          "ones of --library DIR); keep nothing."),
    seed: int = typer.Option(0, "--seed", help="Calibration split and training seed."),
    round_to: int = round_option(),
    trust: bool = typer.Option(False, "--trust", help="Allow a model file that needs unpickling (runs its code)."),
) -> None:
    """Choose a cheap block (or none) for every site of TEACHER to meet BUDGET as measured, then assemble,
    reconstruct and distil the student.

    A candidate library is built once per teacher and settings (--library DIR keeps it for every later budget):
    each applicable family at a few strengths on every site, fitted to the teacher and measured. The choice is an
    exact integer program under the budget; for a latency budget the assembled student is timed against the
    teacher and the choice corrected until it meets the budget as measured.

    \b
    Example:
      cheapconv compress teacher.pt --data fashion-mnist --budget 50% --runtime onnxruntime --library lib -o s.pt
    """
    import cheapconv
    from cheapconv.compression import estimate_build, list_sites

    output_path(output, required=not dry_run)
    if not dry_run:
        check_outputs(inputs={"TEACHER": teacher, "--weights": weights}, outputs={"-o/--output": output})
    from cheapconv.store.resolve import resolve_model

    with err.status(f"Loading {teacher}..."):
        net = resolve_model(teacher, weights=weights, trust=trust, what="teacher")
    names = [f.strip() for f in families.split(",")] if families else None
    widths = _group_widths(groups)
    if dry_run:
        out.print(literal_table(list_sites(net, families=names, round_to=round_to)))
        with err.status("Estimating the build: fitting, scoring and timing two options..."):
            estimate = estimate_build(net, data, families=names, runtime=runtime, batch=batch, threads=threads,
                                      samples=samples, held_out=held_out, steps=steps, fold=fold, seed=seed,
                                      round_to=round_to, directory=library)
        err.print(literal(estimate.line()), highlight=False)
        err.print("Dry run: nothing kept.")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cheapconv.compress(net, data, budget, metric=metric, runtime=runtime, batch=batch, threads=threads,
                                    library=library, families=names, samples=samples, held_out=held_out,
                                    steps=steps, max_params=max_params, max_macs=max_macs, rounds=rounds,
                                    epochs=epochs, fold=fold, data_dir=data_dir, seed=seed,
                                    fits_from=fits_from, round_to=round_to, groups=widths)
    for w in caught:
        warn(str(w.message))
    out.print(literal_table(result.selection.table()))
    if result.budget is not None:
        for i, r in enumerate(result.budget.rounds, 1):
            again = f", then {r.confirmation:.3f} ms measured again" if r.confirmation is not None else ""
            err.print(f"round {i}: solved for {r.target:.3f} ms, predicted {r.predicted:.3f} ms, measured "
                      f"{r.measured:.3f} ms{again}", highlight=False)
    out.print(literal_table(result.table()))
    for note in result.notes:
        warn(note)
    kind = cheapconv.save(result.student, output)
    err.print(literal(f"Wrote {output} ({kind} format); library in {result.library_dir}."), highlight=False)
    if result.before_training is not None:     # distillation ended below the start: keep the start too
        start_path = before_training_path(output)
        cheapconv.save(result.before_training, start_path)
        err.print(literal(f"Wrote {start_path}: the student before training, which scored higher."),
                  highlight=False)
    if write_front:
        written = result.write_front(output.with_suffix(""))
        err.print(literal("Front of other budgets from the same library: " + ", ".join(map(str, written))
                          + ("" if len(written) > 1 else " (no PNG: pip install 'cheapconv[plots]')")),
                  highlight=False)


def _group_widths(text: str | None) -> list[str] | None:
    """``--groups``: None (off), the default widths for 'default', else the widths named (each checked)."""
    from cheapconv.compression.groups import DEFAULT_STRENGTHS, group_fraction

    if not text:
        return None
    if text.strip() == "default":
        return list(DEFAULT_STRENGTHS)
    widths = [w.strip() for w in text.split(",") if w.strip()]
    for w in widths:
        group_fraction(w)        # a UsageError naming the form for a bad width
    return widths


def before_training_path(output: Path) -> Path:
    """Where the student before training is written beside ``output``: ``STEM.before-training.pt``."""
    return output.with_name(f"{output.stem}.before-training{output.suffix or '.pt'}")
