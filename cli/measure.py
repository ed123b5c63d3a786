"""``cheapconv profile``, ``compare``, ``sweep`` and ``export``: measuring students and shipping them."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import typer

from cheapconv.errors import UsageError
from cheapconv.extensions import RUNTIMES

from .app import (
    app,
    check_device,
    check_outputs,
    err,
    labelled_paths,
    literal,
    literal_table,
    out,
    output_path,
    parse_input_size,
    same_file,
    warn,
)
from .options import Listing, datasets_listed, runtime_option
from .search import progress_bar
from .train import preprocessing_note

_DTYPE_HELP = "fp32, or bf16/fp16 (run under autocast)."
_FOLD_HELP = ("Fold BatchNorm into the convs before them when the --runtime times an exported file (as "
              "`cheapconv export` does); --no-fold exports the BatchNorms as they are.")


def _check_runtime(runtime: str, **kw) -> None:
    """An unknown runtime is a bad option; one that is not installed (or cannot take --dtype /
    --channels-last) a usage error naming the fix, before any model is loaded."""
    from cheapconv.measure.runtimes import RUNTIMES, check_runtime

    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"choose one of {', '.join(RUNTIMES)}, not {runtime!r}", param_hint="--runtime")
    check_runtime(runtime, **kw)


def _check_fold(runtime: str, fold: bool) -> None:
    """--no-fold changes only what is exported: say so when the runtime exports nothing."""
    if not fold and not RUNTIMES.get(runtime).exports:
        exporting = " and ".join(e.name for e in RUNTIMES.entries() if e.obj.exports)
        warn(f"--no-fold has no effect with --runtime {runtime}: only {exporting} export the model.")


def _print_checks(p) -> None:
    """The runtime-vs-eager check of each timed batch (stdout: part of what was measured)."""
    for b, line in sorted(p.checks.items()):
        out.print(f"{p.runtime} vs eager, batch {b}: {line}", highlight=False)


def _load_model(spec: str, *, trust: bool = False, num_classes: int | None = None,
                weights: Path | None = None, weights_by_position: bool = False):
    """A saved file (loaded safely) or a zoo name (with local weights, paired by position on request)."""
    from cheapconv.store.resolve import resolve_model

    return resolve_model(spec, trust=trust, num_classes=num_classes, weights=weights,
                         weights_by_position=weights_by_position)


def _write_json(path: Path | None, obj) -> None:
    if path is None:
        return
    from cheapconv.store.files import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))
    err.print(f"Wrote {literal(path)}", highlight=False)


def _check_batch(batch: int, repeats: int) -> None:
    if batch < 1:
        raise typer.BadParameter(f"must be at least 1, got {batch}", param_hint="--batch")
    if repeats < 1:
        raise typer.BadParameter(f"must be at least 1, got {repeats}", param_hint="--repeats")


@app.command()
def profile(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="A saved student or model file, or a name (wrn_40_2, resnet34)."),
    input_size: str = typer.Option(None, "--input-size", help="C,H,W (default: the recipe's)."),
    batch: int = typer.Option(32, "--batch", help="Throughput batch, timed besides batch 1."),
    repeats: int = typer.Option(10, "--repeats", help="Timed passes per measurement (median reported)."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed passes before timing."),
    dtype: str = typer.Option("fp32", "--dtype", help=_DTYPE_HELP),
    channels_last: bool = typer.Option(False, "--channels-last", help="Time in channels_last memory format."),
    threads: int = typer.Option(None, "--threads", min=1, help="Intra-op CPU threads (default: torch's)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
    teacher: str = typer.Option(None, "--teacher", help="The original model, for per-block timing (default: "
                                                        "rebuilt from the student's recipe)."),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="Time each replaced block against the "
                                                                   "original layer."),
    runtime: str = runtime_option(),
    fold: bool = typer.Option(True, "--fold/--no-fold", help=_FOLD_HELP),
    json_out: Path = typer.Option(None, "--json", help="Also write the full profile as JSON."),
    trust: bool = typer.Option(False, "--trust", help="Allow files that need unpickling (runs code)."),
) -> None:
    """Measure one model: params, MACs, latency (batch 1 and --batch), peak memory, and per-block timing.

    Example: cheapconv profile student.pt --batch 32 --dtype bf16 --channels-last
    """
    from cheapconv.measure import blocks_table, parse_dtype
    from cheapconv.measure import profile as run_profile

    _check_batch(batch, repeats)
    size = parse_input_size(input_size)
    the_dtype = parse_dtype(dtype)
    output_path(json_out, required=False)
    check_device(device)
    _check_runtime(runtime, device=device, dtype=the_dtype, channels_last=channels_last)
    _check_fold(runtime, fold)
    check_outputs(inputs={"MODEL": model, "--teacher": teacher}, outputs={"--json": json_out})
    with err.status(f"Loading {model}..."):
        the_model = _load_model(model, trust=trust)
        the_teacher = _load_model(teacher, trust=trust) if teacher else None
    bar, tick = progress_bar()
    with bar:  # per-block timing in an exporting runtime exports two small graphs per layer: minutes
        p = run_profile(the_model, size, device=device, dtype=the_dtype, channels_last=channels_last,
                        batch=batch, warmup=warmup, repeats=repeats, threads=threads, per_layer=layers,
                        teacher=the_teacher, name=Path(model).name if Path(model).is_file() else None,
                        runtime=runtime, progress=lambda done, total: tick("blocks", done, total), fold=fold)
    out.print(literal_table(p.table()))
    _print_checks(p)
    if p.blocks:
        out.print(literal_table(blocks_table(p.blocks)))
        slower = p.slower_blocks
        if slower:
            warn(f"{len(slower)} of {len(p.blocks)} replaced blocks are slower than the layer they replaced "
                 f"({', '.join(b.layer for b in slower[:5])}{', ...' if len(slower) > 5 else ''}).")
    for note in p.notes:
        err.print(f"note: {literal(note)}", highlight=False)
    _write_json(json_out, p.to_dict())


@app.command()
def compare(
    models: list[str] = typer.Argument(..., metavar="MODELS...",
                                       help="Two or more model files or names (ratios: vs the first)."),
    input_size: str = typer.Option(None, "--input-size", help="C,H,W (default: the first model's)."),
    batch: int = typer.Option(32, "--batch", help="Throughput batch, timed besides batch 1."),
    repeats: int = typer.Option(10, "--repeats", help="Timed passes per model and batch."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed passes before timing."),
    dtype: str = typer.Option("fp32", "--dtype", help=_DTYPE_HELP),
    channels_last: bool = typer.Option(False, "--channels-last", help="Time in channels_last memory format."),
    threads: int = typer.Option(None, "--threads", min=1, help="Intra-op CPU threads (default: torch's)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
    data: str = Listing(lambda: f"Also report top-1 accuracy (mIoU for segmentation data) on this dataset's test "
                        f"split: {datasets_listed()}. Each model is fed as its file records (size, mean/std) unless "
                        "--input-size is given.", default=None, param_decls=("--data",)),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where the dataset's files are."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate on the first N test images only."),
    layers: bool = typer.Option(False, "--layers", help="Also time each student's blocks against the layers "
                                                        "they replaced, and count the slower ones."),
    runtime: str = runtime_option(),
    fold: bool = typer.Option(True, "--fold/--no-fold", help=_FOLD_HELP),
    json_out: Path = typer.Option(None, "--json", help="Also write the profiles as JSON."),
    trust: bool = typer.Option(False, "--trust", help="Allow files that need unpickling (runs code)."),
) -> None:
    """Compare models side by side: params, MACs, latency at batch 1 and --batch (and accuracy with --data).

    Example: cheapconv compare wrn_40_2 g4.pt b2.pt --batch 32
    """
    from cheapconv.measure import blocks_table, compare_table, evaluate_accuracy, parse_dtype, profile_many
    from cheapconv.measure.accuracy import accuracy_metric
    from cheapconv.progress import ProgressReport, stage

    if len(models) < 2:
        raise typer.BadParameter("give at least two models to compare", param_hint="MODELS")
    _check_batch(batch, repeats)
    size = parse_input_size(input_size)
    the_dtype = parse_dtype(dtype)
    output_path(json_out, required=False)
    check_device(device)
    _check_runtime(runtime, device=device, dtype=the_dtype, channels_last=channels_last)
    _check_fold(runtime, fold)
    check_outputs(inputs={"MODELS": list(models)}, outputs={"--json": json_out})
    with stage("Loading models...", console=err):   # a spinner, or lines with the time taken in a log
        loaded = [_load_model(m, trust=trust) for m in models]
    names = [Path(m).name if Path(m).is_file() else m for m in models]
    with stage("Measuring side by side...", console=err):
        profiles = profile_many(loaded, size, names=names, device=device, dtype=the_dtype,
                                channels_last=channels_last, batch=batch, warmup=warmup, repeats=repeats,
                                threads=threads, per_layer=layers, runtime=runtime, fold=fold)
    accuracies = None
    if data:
        from cheapconv.measure.accuracy import accuracy_data_info

        for name, m in zip(names, loaded, strict=True):   # each model is fed as its file records (or --input-size)
            info, record = accuracy_data_info(m, data, input_shape=size)
            note = preprocessing_note(info, record, size_option=None if size else "--input-size")
            err.print(f"note ({literal(name)}): {literal(note)}", highlight=False)
        accuracies = []
        labels = {str(i): f"Evaluating {name} on {data}" for i, name in enumerate(names)}
        with ProgressReport(labels, console=err, unit="images") as report:   # a bar (or ~10 % lines) per model
            for i, m in enumerate(loaded):
                accuracies.append(evaluate_accuracy(m, data, input_shape=size,
                                                    data_dir=str(data_dir) if data_dir else None, limit=limit,
                                                    device=device, progress=report.phase(str(i))))
    table = compare_table(profiles, accuracies)
    metric = accuracy_metric(data) if data else "top-1"
    for column in table.columns:   # segmentation: the accuracy column holds mIoU
        if column.header == "top-1":
            column.header = metric
    out.print(literal_table(table))
    for p in profiles:
        _print_checks(p)
    for p in profiles:
        if p.slower_blocks:
            title = f"{p.model}: blocks slower than what they replaced"
            out.print(literal_table(blocks_table(p.slower_blocks, title=title)))
        for note in p.notes:
            err.print(f"note ({literal(p.model)}): {literal(note)}", highlight=False)
    _write_json(json_out, [dict(p.to_dict(), accuracy=None if accuracies is None else accuracies[i],
                                **({"accuracy_metric": metric} if data else {}))
                           for i, p in enumerate(profiles)])


@app.command()
def sweep(
    model: str = typer.Argument(..., metavar="MODEL", help="The teacher: a model name or a saved file."),
    blocks: str = typer.Option(..., "--blocks", help="Comma-separated specs, e.g. 'G(2),G(4),B(2),BG(2,M)'."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for sweep.csv, sweep.md, sweep.png and "
                                                            "the finished points (a rerun resumes there)."),
    data: str = typer.Option(None, "--data", help="Distil each student on this dataset and report its error "
                                                  "(needs cheapconv.distill)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Distillation epochs (with --data)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where the dataset's files are."),
    input_size: str = typer.Option(None, "--input-size", help="C,H,W (default: the model's own)."),
    batch: int = typer.Option(32, "--batch", help="Throughput batch, timed besides batch 1."),
    repeats: int = typer.Option(10, "--repeats", help="Timed passes per point and batch."),
    dtype: str = typer.Option("fp32", "--dtype", help=_DTYPE_HELP),
    channels_last: bool = typer.Option(False, "--channels-last", help="Time in channels_last memory format."),
    threads: int = typer.Option(None, "--threads", min=1, help="Intra-op CPU threads (default: torch's)."),
    runtime: str = runtime_option(more=" The Pareto front is that runtime's."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help=_FOLD_HELP),
    num_classes: int = typer.Option(None, "--num-classes", min=1, help="Classifier size of the teacher."),
    weights: Path = typer.Option(None, "--weights", help="Local weights file for the teacher."),
    weights_by_position: bool = typer.Option(False, "--weights-by-position", help="Load --weights in order (tensor "
                                             "names that differ from the model's; same shapes, same order)."),
    trust: bool = typer.Option(False, "--trust", help="Allow files that need unpickling (runs code)."),
) -> None:
    """Cheapen MODEL with each block type, measure each student (and distil it with --data), and write a
    Pareto report: CSV, Markdown table and PNG plot. Finished points are reused when rerun.

    Example: cheapconv sweep wrn_40_2 --blocks 'G(2),G(4),G(N/8),B(2),BG(2,M)' -o sweep-wrn
    """
    from cheapconv.measure import parse_dtype
    from cheapconv.sweeper import parse_blocks
    from cheapconv.sweeper import sweep as run_sweep

    specs = parse_blocks(blocks)
    _check_batch(batch, repeats)
    size = parse_input_size(input_size)
    parse_dtype(dtype)
    _check_runtime(runtime, dtype=dtype, channels_last=channels_last)
    _check_fold(runtime, fold)
    if epochs is not None and data is None:
        raise typer.BadParameter("--epochs needs --data (the dataset to distil on)", param_hint="--epochs")
    if output.exists() and not output.is_dir():
        raise UsageError(f"The sweep output {str(output)!r} is a file; give a folder (it is created if "
                         "missing).")
    if not output.exists() and not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise UsageError(f"The folder {str(output.parent)!r} does not exist; create it first or choose "
                         "another --output.")
    _check_sweep_folder(output, specs, inputs={"MODEL": model, "--weights": weights})
    with err.status(f"Building {model}..."):
        teacher = _load_model(model, trust=trust, num_classes=num_classes, weights=weights,
                              weights_by_position=weights_by_position)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cheapen's notes are logged per point
        result = run_sweep(teacher, specs, output, model_name=model, input_size=size, batch=batch,
                           dtype=dtype, channels_last=channels_last, threads=threads, repeats=repeats,
                           data=data, epochs=epochs, data_dir=str(data_dir) if data_dir else None,
                           log=lambda line: err.print(line, highlight=False), runtime=runtime, fold=fold)
    out.print(Path(result.files["md"]).read_text() if "md" in result.files else "No point was computed.",
              highlight=False, markup=False)
    for kind, path in result.files.items():
        err.print(f"Wrote {literal(path)} ({kind})", highlight=False)
    if "png" not in result.files and result.points:
        warn("no plot written: matplotlib is not installed (pip install 'cheapconv[plots]').")


def _check_sweep_folder(output: Path, specs: list[str], *, inputs: dict) -> None:
    """A sweep folder must be writable (it, or the folder it is created in) and must not hold the run's inputs
    where the sweep writes its files."""
    from cheapconv.sweeper import point_slug

    where = output if output.exists() else (output.parent if str(output.parent) else Path("."))
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"The sweep folder {str(where)!r} is not writable, so the report cannot be written "
                         "there. Choose another --output.")
    for sub in ("points",):
        folder = output / sub
        if folder.exists() and (not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK)):
            raise UsageError(f"{str(folder)!r} is not a writable folder, so the sweep's points cannot be stored. "
                             "Choose another --output.")
    files = [output / name for name in ("sweep.json", "sweep.csv", "sweep.md", "sweep.png")]
    files += [output / "points" / f"{point_slug(b)}{ext}" for b in ["S", *specs] for ext in (".json", ".pt", ".ckpt")]
    for label, path in labelled_paths(inputs):
        hit = next((f for f in files if same_file(f, path)), None)
        if hit is not None:
            raise UsageError(f"The input {label} {str(path)!r} is a file the sweep writes ({str(hit)!r}): the "
                             "sweep would overwrite it. Copy it elsewhere or choose another --output.")


@app.command("export")
def export_command(
    file: str = typer.Argument(..., metavar="FILE",
                               help="A saved student (cheapconv cheapen -o ...) or a model name."),
    format: str = typer.Option(..., "--format", "-f", help="pt2 (torch.export), onnx or torchscript."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the exported model."),
    input_size: str = typer.Option(None, "--input-size", help="C,H,W (default: the recipe's)."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Fold BatchNorm into the preceding convs."),
    atol: float = typer.Option(1e-4, "--atol", min=0.0, help="Absolute tolerance of the output check."),
    rtol: float = typer.Option(1e-4, "--rtol", min=0.0, help="Tolerance relative to max |original output|."),
    trust: bool = typer.Option(False, "--trust", help="Allow files that need unpickling (runs code)."),
    quantize: str = typer.Option(None, "--quantize", help="ONNX only: int8 (static QDQ, weights per channel, "
                                 "activations calibrated on --calib-data) or dynamic (linear layers' weights only)."),
    calib_data: str = typer.Option(None, "--calib-data", help="With --quantize: the dataset the model is for (e.g. "
                                   "imagefolder:DIR): calibration from its training split, the check against float32 "
                                   "on its test split, fed as the model records."),
    calib_samples: int = typer.Option(512, "--calib-samples", min=1, help="Calibration images (--quantize int8)."),
    keep_float: str = typer.Option(None, "--keep-float", help="With --quantize int8: layers to leave in float32, "
                                   "comma-separated module paths (blocks.3.0.conv_pwl); keep a whole block, both "
                                   "convs around a tensor, for that tensor to stay float32."),
    accept_loss: bool = typer.Option(False, "--accept-quantization-loss", help="Write the quantised file even when "
                                     "it agrees with float32 on under 90 % of the held-out images or loses over 5 "
                                     "accuracy points (it is refused otherwise)."),
) -> None:
    """Export a model for deployment (eval mode, taps stripped, BatchNorm folded), after checking that the
    exported file gives the original's outputs on a random input; nothing is written if it does not. Beside
    it, OUTPUT.json records how to feed it (input name and shape, resize/crop, mean/std, class names).

    With --quantize int8 the checked float32 graph is quantised by ONNX Runtime and compared with float32 on
    held-out images of --calib-data (top-1 agreement, each one's accuracy); the card records the quantisation.

    Example: cheapconv export student.pt --format onnx -o student.onnx
             cheapconv export student.pt --format onnx --quantize int8 --calib-data imagefolder:DIR -o s8.onnx
    """
    from cheapconv.exporter import FORMATS
    from cheapconv.exporter import export as run_export
    from cheapconv.measure.quantization import MODES

    if format not in FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(FORMATS)}; got {format!r}",
                                 param_hint="--format")
    if quantize is not None and quantize not in MODES:
        raise typer.BadParameter(f"expected one of {', '.join(MODES)}; got {quantize!r}", param_hint="--quantize")
    if calib_data is not None and quantize is None:
        raise typer.BadParameter("--calib-data calibrates a quantised export: add --quantize int8",
                                 param_hint="--calib-data")
    output_path(output)
    check_outputs(inputs={"FILE": file}, outputs={"-o/--output": output})
    size = parse_input_size(input_size)
    with err.status(f"Loading {file}..."):
        model = _load_model(file, trust=trust)
    with err.status(f"Exporting to {format} and checking..."), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_export(model, output, format, input_shape=size, fold=fold, atol=atol, rtol=rtol,
                            quantize=quantize, calib_data=calib_data, calib_samples=calib_samples,
                            accept_quantization_loss=accept_loss,
                            keep_float=[m.strip() for m in keep_float.split(",") if m.strip()] if keep_float else ())
    if report.fold:
        fused = (f" ({report.bn_ops_kept} with their fused activation kept as an op of its own)"
                 if report.bn_ops_kept else "")
        bns = f"{report.folded} folded into the conv before it{fused}, {report.kept_bn} kept"
    else:
        bns = f"not folded (--no-fold), {report.kept_bn} kept"
    out.print(f"BatchNorm: {bns}; {report.taps_removed} taps stripped.", highlight=False)
    for note in report.notes:
        warn(note)
    out.print(report.check_line(), highlight=False)
    if report.quantization is not None:
        out.print(f"{quantize}: {report.quantization['check_line']}.", highlight=False)
    for w in caught:
        if issubclass(w.category, UserWarning):
            warn(str(w.message))
    card = report.preprocessing or {}
    c, h, w = report.input_shape
    feed = card.get("describe") or f"{c}×{h}×{w}, unknown: the model file records no preprocessing"
    out.print(f"Input {literal(card.get('input_name') or 'x')}: batch×{c}×{h}×{w} float32; preprocessing: "
              f"{literal(feed)}.", highlight=False)
    for note in card.get("notes") or []:
        err.print(f"note: {literal(note)}.", highlight=False)
    err.print(f"Wrote {literal(output)} ({format}) and {literal(report.preprocessing_path)} (how to feed it: "
              "input, resize/crop, mean/std, classes).", highlight=False)
