"""``cheapconv train``, ``cheapconv distill`` and ``cheapconv evaluate``: thin wrappers of
:func:`cheapconv.distill` and :func:`cheapconv.evaluate`.

Data adapters are explicit: when the data's channels or size differ from what the model reads, the command
says on stderr which adapter it applies (grayscale repeated to k channels, zero padding to the model's
native size), and ``--in-chans`` / ``--image-size`` override it. The data is fed as the model records
(``model.cheapconv_preprocessing``: its training size and mean/std, or its pretrained weights'), said in one
``preprocessing:`` line; ``train`` and ``distill`` record the data's own in the file they write. Under
``torchrun`` every process runs the command; only rank 0 prints and writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from .app import app, check_outputs, emit, err, out, output_path, save_model, warn, weights_notes

_LOSSES = "at, kd, at+kd or ce"


# ------------------------------------------------------------------------------------------ options

def _opt(default, *names, **kw):
    return typer.Option(default, *names, **kw)


# also used by evaluate
DATA = _opt(..., "--data", "-d", help="fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic[:CxHxW...]; "
            "segmentation: fashion-mnist-seg[:SIZE[:ITEMS]], voc, cityscapes.")
DATA_DIR = _opt(None, "--data-dir", help="Where datasets are looked for (default $CHEAPCONV_DATA_DIR or ./data).")
DOWNLOAD = _opt(False, "--download", help="Allow downloading the dataset (needs network).")
IN_CHANS = _opt(None, "--in-chans", min=1, help="Input channels (default: the model's; grayscale is repeated).")
IMAGE_SIZE = _opt(None, "--image-size", min=1, help="Image size (default: the size the model file records, else "
                  "the model's native size; in-memory data is zero-padded).")
PRECISION = _opt("fp32", "--precision", help="fp32, bf16 (autocast) or fp16 (GPU, with a grad scaler).")
DEVICE = _opt("auto", "--device", help="auto, cpu, cuda or cuda:N.")
WORKERS = _opt(None, "--workers", min=0, help="DataLoader workers (default: chosen for the dataset).")
TRUST = _opt(False, "--trust", help="Allow model files that need unpickling (runs code from the file).")


@dataclass
class RunOptions:
    """The options ``train`` and ``distill`` share, defined once. Each field's default is its typer Option
    (the names, default and help the user sees); :func:`_with_run_options` puts the fields into both
    commands' signatures, and the command receives the values typer parsed as one ``RunOptions``."""

    data: str = DATA
    output: Path = _opt(None, "--output", "-o", help="Where to write the trained model (.pt).")
    in_chans: int = IN_CHANS
    image_size: int = IMAGE_SIZE
    data_dir: Path = DATA_DIR
    download: bool = DOWNLOAD
    epochs: int = _opt(None, "--epochs", min=1, help="Epochs (default 200, the paper's recipe).")
    max_steps: int = _opt(None, "--max-steps", min=1, help="Stop after this many optimiser steps (overrides --epochs).")
    batch_size: int = _opt(128, "--batch-size", "-b", min=1, help="Global batch size (split across torchrun "
                           "processes).")
    lr: float = _opt(None, "--lr", help="Learning rate (default 0.1; with --resume, the checkpoint's: give --lr to "
                     "change it).")
    momentum: float = _opt(0.9, "--momentum", help="SGD momentum.")
    nesterov: bool = _opt(False, "--nesterov", help="Nesterov momentum.")
    weight_decay: float = _opt(5e-4, "--weight-decay", "--wd", help="Weight decay.")
    no_structured_wd: bool = _opt(False, "--no-structured-wd", help="Plain weight decay for structured blocks "
                                  "too (default: scaled by each block's compression ratio, spec §2).")
    schedule: str = _opt(None, "--schedule", help="multistep (×0.2 at 30/60/80 %), cosine or constant (default "
                         "multistep; cosine for a student that starts from its teacher).")
    warmup_epochs: float = _opt(0.0, "--warmup-epochs", help="Linear learning-rate warm-up, in epochs.")
    seed: int = _opt(0, "--seed", help="Seed of shuffling, augmentation and (train) initialisation.")
    precision: str = PRECISION
    channels_last: bool = _opt(False, "--channels-last", help="NHWC memory format (faster convs on recent "
                               "CPUs/GPUs).")
    grad_clip: float = _opt(None, "--grad-clip", help="Clip the gradient norm to this value (default off, 1 for a "
                            "student that starts from its teacher; with --resume, the checkpoint's: give --grad-clip "
                            "to change it).")
    device: str = DEVICE
    workers: int = WORKERS
    checkpoint: Path = _opt(None, "--checkpoint", help="Resume checkpoint (default: OUTPUT with suffix .ckpt).")
    checkpoint_every: int = _opt(1, "--checkpoint-every", min=1, help="Epochs between checkpoints.")
    checkpoint_every_steps: int = _opt(None, "--checkpoint-every-steps", min=1, help="Also checkpoint every N "
                                       "steps.")
    resume: bool = _opt(False, "--resume", help="Continue exactly from the checkpoint of an interrupted run (a "
                        "finished run's: write its model again, no training).")
    overwrite: bool = _opt(False, "--overwrite", help="Start over even where an unfinished run's checkpoint exists "
                           "(it and its metrics are discarded).")
    log_every: int = _opt(50, "--log-every", min=1, help="Steps between metrics records.")
    augment: str = _opt("standard", "--augment", help="Training augmentation: none, light (flip + 2-px crop; "
                        "image folders: RandomResizedCrop scale 0.5-1) or standard (flip + 4-px crop; image "
                        "folders: scale 0.08-1, strong for fine-tuning a pretrained network).")
    eval_start: bool = _opt(None, "--eval-start/--no-eval-start", help="Evaluate the student before the first "
                            "step and warn if training ends worse (default: for a student that starts from its "
                            "teacher).")
    no_progress: bool = _opt(False, "--no-progress", help="No progress bar (epoch lines and the metrics file "
                             "remain).")
    tensorboard: bool = _opt(False, "--tensorboard", help="Also write TensorBoard events (if installed).")
    compile: bool = _opt(False, "--compile", help="torch.compile the networks (measure: it does not always help).")
    trust: bool = TRUST

    def prepare(self, inputs: dict) -> tuple[Path, float, float | None]:
        """Checks before any work: the output path, outputs that are ``inputs``, the checkpoint (see
        :func:`_prepare_run`). Returns the checkpoint path and the lr and grad-clip to use."""
        from cheapconv.data import augmentation

        augmentation(self.augment, "train")   # an unknown --augment fails before any work
        output_path(self.output)
        check_outputs(inputs=inputs,   # the default checkpoint as in _prepare_run
                      outputs={"-o/--output": self.output,
                               "--checkpoint": self.checkpoint or self.output.with_suffix(".ckpt")})
        return _prepare_run(self.output, self.checkpoint, resume=self.resume, overwrite=self.overwrite, lr=self.lr,
                            grad_clip=self.grad_clip)

    def config(self, *, lr: float, grad_clip: float | None, **objective):
        """The DistillConfig of these options (the library validates every value), with the objective's
        settings (``loss`` and its weights) added."""
        from cheapconv import DistillConfig

        # None: the config's default
        length = {"epochs": self.epochs} if self.epochs is not None else {}
        schedule = {"schedule": self.schedule} if self.schedule is not None else {}
        return DistillConfig(
            **length, **schedule, max_steps=self.max_steps, batch_size=self.batch_size, lr=lr,
            momentum=self.momentum,
            nesterov=self.nesterov, weight_decay=self.weight_decay, structured_wd=not self.no_structured_wd,
            warmup_epochs=self.warmup_epochs, seed=self.seed, precision=self.precision,
            channels_last=self.channels_last, grad_clip=grad_clip, device=self.device, num_workers=self.workers,
            checkpoint_every=self.checkpoint_every, checkpoint_every_steps=self.checkpoint_every_steps,
            log_every=self.log_every, progress=not self.no_progress, tensorboard=self.tensorboard,
            compile=self.compile, eval_start=self.eval_start, **objective)

    def recorded(self, result) -> dict:
        """What the saved model's training metadata records besides the config: the augmentation strength, and
        the validation figures before the first step and after the last (None where not evaluated)."""
        return {"augment": self.augment, "start": result.start, "end": result.end}

    def datasets(self, model) -> tuple:
        """The training and test sets, adapted to ``model`` (the adapters are stated once)."""
        kw = {"in_chans": self.in_chans, "image_size": self.image_size, "data_dir": self.data_dir,
              "download": self.download}
        return (load_data(self.data, "train", model, augment=self.augment, **kw),
                load_data(self.data, "test", model, announce=False, **kw))


def _with_run_options(lead: int):
    """Give a command the :class:`RunOptions`. Its signature (what typer reads) becomes: its own first
    ``lead`` parameters, ``--data`` and ``--output``, its other parameters, then the rest of the shared
    options, which is the order ``--help`` lists them in; the command itself takes them as ``opts``."""
    shared_hints = typing.get_type_hints(RunOptions)
    shared = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                annotation=shared_hints[f.name]) for f in dataclasses.fields(RunOptions)]
    names = [p.name for p in shared]

    def decorate(command):
        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()
               if p.name != "opts"]
        params = own[:lead] + shared[:2] + own[lead:] + shared[2:]

        @functools.wraps(command)
        def wrapper(**kwargs):
            opts = RunOptions(**{name: kwargs.pop(name) for name in names})
            return command(**kwargs, opts=opts)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _note(message: str) -> None:
    err.print(f"[cyan]note:[/cyan] {message}", highlight=False, soft_wrap=True)


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def load_model(spec: str, *, weights: Path | None = None, num_classes: int | None = None, trust: bool = False,
               what: str = "model", **kwargs):
    """A model from a cheapconv file, or a zoo name (+ optional local weights): see store.resolve_model. What
    loading the weights did (pairs by position, a new classifier head) is said in notes."""
    from cheapconv.store.resolve import resolve_model

    net = resolve_model(spec, weights=weights, num_classes=num_classes, trust=trust, what=what, **kwargs)
    if _is_main():
        for line in weights_notes(net):
            _note(line + ".")
    return net


def load_data(name: str, split: str, model, *, in_chans: int | None, image_size: int | None,
              data_dir: Path | None, download: bool, announce: bool = True, augment: str | None = None):
    """The dataset, adapted to ``model``'s input (cheapconv.data.adapt_for_model decides how); the adapters
    applied are stated on stderr, with the option that overrides each."""
    from cheapconv.data import adapt_for_model, get_dataset

    fit = adapt_for_model(name, model, in_chans=in_chans, image_size=image_size)
    if announce and _is_main():
        for arg, note in fit.notes.items():
            _note(f"{note} (set --{arg.replace('_', '-')} to change).")
    dataset = get_dataset(name, split, data_dir=data_dir, download=download, in_chans=fit.in_chans,
                          image_size=fit.image_size, augment=augment, preprocessing=fit.preprocessing)
    if announce and _is_main():
        _note(preprocessing_note(dataset.info, fit.preprocessing, size_option="--image-size" if image_size is None
                                 else None))
    return dataset


def preprocessing_note(info, record, *, size_option: str | None) -> str:
    """The one line saying how data is fed to a model: the preprocessing of data ``info`` (test-split
    transform), where its normalisation came from (the model's ``record``, or the dataset's own), and the option
    that changes the size (None: the size was given)."""
    from cheapconv.data import data_preprocessing

    origin = ("the dataset's own: the model records none" if record is None else
              "from the model file" if record.source == "data" else "the pretrained weights' own")
    change = f"; {size_option} to change the size" if size_option else ""
    return f"preprocessing: {data_preprocessing(info).describe()} ({origin}{change})."


def _prepare_run(output: Path, checkpoint: Path | None, *, resume: bool, overwrite: bool, lr: float | None,
                 grad_clip: float | None) -> tuple[Path, float, float | None]:
    """Checks before any work (loading models or data): every output path can be written, a new run does not
    overwrite an unfinished run's checkpoint, a resume has its checkpoint. Returns the checkpoint path and
    the lr and grad-clip to use (on --resume, the checkpoint's unless given)."""
    from cheapconv import UsageError
    from cheapconv.train.checkpoint import check_run_paths, load_checkpoint, refuse_fresh_start

    ckpt = checkpoint or output.with_suffix(".ckpt")
    check_run_paths(ckpt, ckpt.with_suffix(".metrics.jsonl"))
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite discards it: pass one of them.")
    if not resume:
        if not overwrite:
            refuse_fresh_start(ckpt)
        return ckpt, 0.1 if lr is None else lr, grad_clip
    saved = json.loads(load_checkpoint(ckpt, mmap=True)["config_json"])
    return ckpt, saved.get("lr", 0.1) if lr is None else lr, saved.get("grad_clip") if grad_clip is None else grad_clip


def _run(teacher, student, train, val, cfg, *, checkpoint: Path, resume: bool, overwrite: bool = False):
    """distill() with Ctrl-C turned into exit code 130 and a message saying where the checkpoint is."""
    import warnings

    from cheapconv import distill
    from cheapconv.train.loop import Interrupted
    from cheapconv.train.start_end import StartLostWarning

    try:
        with warnings.catch_warnings():   # said by _say_start_end instead, naming the files
            warnings.simplefilter("ignore", StartLostWarning)
            return distill(teacher, student, train, val_data=val, config=cfg, checkpoint=checkpoint, resume=resume,
                           overwrite=overwrite)
    except Interrupted as e:
        if _is_main():
            err.print(f"[yellow]{e}[/yellow]", highlight=False, soft_wrap=True)
        raise  # a KeyboardInterrupt: cheapconv_cli.main turns it into exit code 130


def _say_start_end(result, cfg, *, start_file: str | None, output: Path) -> None:
    """For a run whose start was evaluated (a student that starts from its teacher): the figures before the first
    step and after the last on stdout, and a warning on stderr when training ended worse, saying what to try and
    where the start is."""
    from cheapconv.store.resolve import is_model_file
    from cheapconv.train.start_end import lost_start_message

    if result.rank != 0 or result.start_end is None:
        return
    out.print(f"{result.start_end} (before the first step → after the last)", highlight=False)
    where = (f"The student you started from is unchanged in {start_file}; the trained one was written to {output}."
             if start_file is not None and is_model_file(start_file) else
             f"The trained student was written to {output}; the start was not saved.")
    message = lost_start_message(result.start, result.end, cfg, where_start=where)
    if message is not None:
        warn(message)


def _save_and_report(model, output: Path, result, *, role: str, data: str, cfg, extra: dict,
                     trained_on=None) -> None:
    """Save the trained ``model`` with what it was trained on: the training figures, and (``trained_on``: its
    test set) how it must be fed (``model.cheapconv_preprocessing``) and its class names; then the table."""
    if result.rank != 0:
        return
    recorded = {}
    if trained_on is not None:
        from cheapconv.data import data_preprocessing

        info = trained_on.info
        model.cheapconv_preprocessing = data_preprocessing(info)
        if info.classes and info.task == "classification":
            recorded["classes"] = list(info.classes)
    last = result.last
    dense = "val_miou" in last or "train_miou" in last
    figures = ("val_miou", "val_pixel_acc") if dense else ("val_top1", "val_top5")
    training = {"data": data, "loss": last.get("loss_kind"), "steps": result.steps,
                **{k: last.get(k) for k in figures}, "config": cfg.to_dict(), **extra}
    try:
        kind = save_model(model, output, extra={"training": training, **recorded})
    except KeyboardInterrupt:
        # the write is atomic: the model file is absent (or the previous one), the final checkpoint is there
        err.print(f"[yellow]Interrupted while writing the model; {output} was not written. Training had finished "
                  f"({result.steps} steps) and its final checkpoint {result.checkpoint} is kept: run the same "
                  "command with --resume to write the model without training again.[/yellow]", highlight=False,
                  soft_wrap=True)
        raise
    t = Table(title=f"{role} trained on {data}", title_justify="left")
    cols = ("train mIoU", "val mIoU", "val pixel acc") if dense else ("train top-1", "val top-1", "val top-5")
    keys = ("train_miou", "val_miou", "val_pixel_acc") if dense else ("train_top1", "val_top1", "val_top5")
    for col in ("loss", "steps", *cols, "val loss", "time"):
        t.add_column(col, justify="right")
    pct = lambda v: f"{100 * v:.2f}%" if isinstance(v, float) else "-"
    t.add_row(str(last.get("loss_kind")), str(result.steps), *(pct(last.get(k)) for k in keys),
              f"{last['val_loss']:.4f}" if "val_loss" in last else "-", f"{last.get('time_s', 0):.0f} s")
    out.print(t)
    err.print(f"Wrote {output} ({kind} format); resume checkpoint {result.checkpoint}.", highlight=False)


# ----------------------------------------------------------------------------------------- commands


@app.command()
@_with_run_options(lead=1)
def train(
    model: str = typer.Argument(..., help="wrn_16_2, resnet18, timm:NAME, or a cheapconv file to keep training."),
    num_classes: int = _opt(None, "--num-classes", min=1, help="Classifier size (default: the dataset's)."),
    weights: Path = _opt(None, "--weights", help="Local weights to start from (zoo names only): fine-tuning. A "
                         "classifier head of another size than --num-classes is replaced by a new one."),
    weights_by_position: bool = _opt(False, "--weights-by-position", help="Load --weights in order, for a file "
                                     "whose tensor names differ from the model's (same shapes, same order)."),
    *, opts: RunOptions,
) -> None:
    """Train MODEL with cross-entropy: from scratch (a teacher, or a baseline student), or fine-tuned from
    pretrained --weights onto the data's classes (the classifier head is replaced where its size differs;
    the note on stderr names it).

    Example: cheapconv train wrn_16_2 --data fashion-mnist --epochs 3 -o teacher.pt

    Example: cheapconv train timm:tf_efficientnet_lite0 --weights lite0.pth --weights-by-position
    --data imagefolder:DIR --image-size 96 --epochs 1 -o teacher.pt
    """
    import torch

    from cheapconv.data import dataset_info
    from cheapconv.store.resolve import is_model_file

    ckpt, lr, grad_clip = opts.prepare(inputs={"MODEL": model, "--weights": weights})
    cfg = opts.config(lr=lr, grad_clip=grad_clip, loss="ce")
    info = dataset_info(opts.data)
    torch.manual_seed(opts.seed)  # the initial weights (every rank builds the same model)
    kwargs = {"in_chans": opts.in_chans} if opts.in_chans is not None and not is_model_file(model) else {}
    if weights_by_position:
        kwargs["weights_by_position"] = True
    net = load_model(model, weights=weights, num_classes=num_classes or info.num_classes, trust=opts.trust, **kwargs)
    train_set, test_set = opts.datasets(net)
    result = _run(None, net, train_set, test_set, cfg, checkpoint=ckpt, resume=opts.resume, overwrite=opts.overwrite)
    _save_and_report(net, opts.output, result, role=model, data=opts.data, cfg=cfg,
                     extra={"teacher": None, **opts.recorded(result)}, trained_on=test_set)
    _say_start_end(result, cfg, start_file=model, output=opts.output)


@app.command("distill")
@_with_run_options(lead=2)
def distill_cmd(
    teacher: str = _opt(..., "--teacher", "-t", help="A cheapconv file, or a zoo name with --teacher-weights."),
    student: str = _opt(..., "--student", "-s", help="Student: a cheapconv file (from `cheapconv cheapen`)."),
    teacher_weights: Path = _opt(None, "--teacher-weights", help="Local weights for a teacher given by zoo name."),
    teacher_weights_by_position: bool = _opt(False, "--teacher-weights-by-position", help="Load --teacher-weights "
                                             "in order (tensor names that differ; same shapes, same order)."),
    num_classes: int = _opt(None, "--num-classes", min=1, help="Classifier size of a zoo teacher."),
    loss: str = _opt("at", "--loss", help=f"Objective: {_LOSSES}."),
    beta: float = _opt(1000.0, "--beta", help="AT weight."),
    alpha: float = _opt(0.9, "--alpha", help="KD weight."),
    temperature: float = _opt(4.0, "--temperature", help="KD temperature."),
    kd_reduction: str = _opt("batchmean", "--kd-reduction", help="batchmean (standard) or reference (the "
                             "Moonshine code: batch×classes mean × 2)."),
    taps: str = _opt(None, "--taps", help="Stage outputs for AT, by module name, comma-separated (e.g. "
                     "'backbone.layer2, backbone.layer3, classifier.0'); default: found in both networks, matched by "
                     "name."),
    *, opts: RunOptions,
) -> None:
    """Distil STUDENT from TEACHER (attention transfer by default) with the teacher's recipe.

    Example: cheapconv distill --teacher teacher.pt --student s.pt --data fashion-mnist --loss at -o trained.pt
    """
    ckpt, lr, grad_clip = opts.prepare(inputs={"--teacher": teacher, "--student": student,
                                               "--teacher-weights": teacher_weights})
    tap_names = tuple(n.strip() for n in (taps or "").split(",") if n.strip())
    cfg = opts.config(lr=lr, grad_clip=grad_clip, loss=loss, beta=beta, alpha=alpha, temperature=temperature,
                      kd_reduction=kd_reduction, taps=tap_names)
    t = load_model(teacher, weights=teacher_weights, num_classes=num_classes, trust=opts.trust, what="teacher",
                   **({"weights_by_position": True} if teacher_weights_by_position else {}))
    s = load_model(student, trust=opts.trust, what="student")
    cfg = _recipe_for_start(s, cfg, opts)
    if cfg.loss_fn(teacher=True).needs_taps and _is_main():
        from cheapconv.surgery.taps import match_taps

        t_names, s_names = match_taps(t, s, tap_names)
        chosen = (f"{', '.join(t_names)} (matched by name)" if t_names == s_names else
                  f"teacher {', '.join(t_names) or 'none'}; student {', '.join(s_names) or 'none'} (by position)")
        _note(f"attention-transfer taps: {chosen}{'' if tap_names else '; set --taps to choose'}.")
    if getattr(s, "cheapconv_preprocessing", None) is None:   # a student fed as its teacher
        s.cheapconv_preprocessing = getattr(t, "cheapconv_preprocessing", None)
    train_set, test_set = opts.datasets(s)
    result = _run(t, s, train_set, test_set, cfg, checkpoint=ckpt, resume=opts.resume, overwrite=opts.overwrite)
    _save_and_report(s, opts.output, result, role=student, data=opts.data, cfg=cfg,
                     extra={"teacher": teacher, **opts.recorded(result)}, trained_on=test_set)
    _say_start_end(result, cfg, start_file=student, output=opts.output)


def _recipe_for_start(student, cfg, opts: RunOptions):
    """For a student that starts from its teacher (``cheapen --init teacher``), the fine-tuning settings
    (:data:`cheapconv.train.config.FINE_TUNING`: gradient clip 1, cosine schedule) where the command line
    leaves them open, said in a note. The schedule applies on --resume too (so the resumed config matches the
    run's); the clip of a resumed run is its checkpoint's (see :func:`_prepare_run`)."""
    from cheapconv.train.config import FINE_TUNING
    from cheapconv.train.fine_tuning import starts_from_teacher

    if not starts_from_teacher(student):
        return cfg
    changes = {}
    if opts.schedule is None:
        changes["schedule"] = FINE_TUNING["schedule"]
    if opts.grad_clip is None and not opts.resume:
        changes["grad_clip"] = FINE_TUNING["grad_clip"]
    if changes and _is_main() and not opts.resume:
        said = ", ".join(f"--{k.replace('_', '-')} {v if isinstance(v, str) else format(v, 'g')}"
                         for k, v in changes.items())
        _note(f"the student starts from its teacher: training it with {said} (unclipped first steps of the "
              "paper's recipe undo such a start; see benchmarks/README.md). Give the options to choose otherwise.")
    return cfg.replace(**changes) if changes else cfg


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="A cheapconv model file, a deployed .onnx/.pt2 file from `cheapconv "
                                "export` (fed as the FILE.json beside it says), or a zoo name with --weights."),
    data: str = DATA,
    split: str = _opt("test", "--split", help="test or train."),
    weights: Path = _opt(None, "--weights", help="Local weights for a zoo name."),
    weights_by_position: bool = _opt(False, "--weights-by-position", help="Load --weights in order (tensor names "
                                     "that differ from the model's; same shapes, same order)."),
    num_classes: int = _opt(None, "--num-classes", min=1, help="Classifier size of a zoo model."),
    batch_size: int = _opt(256, "--batch-size", "-b", min=1, help="Batch size."),
    in_chans: int = IN_CHANS, image_size: int = IMAGE_SIZE, data_dir: Path = DATA_DIR, download: bool = DOWNLOAD,
    device: str = DEVICE, precision: str = PRECISION, workers: int = WORKERS, trust: bool = TRUST,
    as_json: bool = _opt(False, "--json", help="Print the figures as one JSON object."),
) -> None:
    """Top-1, top-5 and mean cross-entropy of a model on a dataset split (segmentation data: mIoU and pixel
    accuracy; --json has the keys miou and pixel_acc, fractions, and iou per class).

    Example: cheapconv evaluate trained.pt --data fashion-mnist
             cheapconv evaluate student.onnx --data imagefolder:DIR   (the deployed file, in onnxruntime)
    """
    from cheapconv import evaluate as evaluate_model
    from cheapconv.errors import UsageError
    from cheapconv.progress import ProgressReport
    from cheapconv.train.config import check_precision
    from cheapconv.train.distributed import resolve_device

    if split not in ("test", "train"):
        raise typer.BadParameter("expected test or train", param_hint="--split")
    check_precision(precision)   # before any work; evaluate_model checks it too
    net = load_model(model, weights=weights, num_classes=num_classes, trust=trust, deployed=True,
                     **({"weights_by_position": True} if weights_by_position else {}))
    new_head = getattr(getattr(net, "cheapconv_weights", None), "new_head", None)
    if new_head:
        raise UsageError(f"--num-classes {num_classes} does not match the classifier head of {weights.name} "
                         f"({', '.join(f'{k} {v[0]}' for k, v in new_head.items())}), so the head would be a new, "
                         "untrained one and the score meaningless. Leave out --num-classes to evaluate the file as it "
                         "is, or fine-tune a head for these classes first: cheapconv train MODEL --weights W "
                         "--data ... -o model.pt, then evaluate model.pt.")
    runtime = {"onnx": "onnxruntime (CPU)", "pt2": "torch.export"}.get(getattr(net, "format", None), "")
    if runtime:
        _note(f"evaluating the deployed file itself in {runtime}, fed as "
              + ("the card beside it says" if net.cheapconv_preprocessing is not None else
                 "the data are stored (no FILE.json card beside it)") + ".")
    dataset = load_data(data, split, net, in_chans=in_chans, image_size=image_size, data_dir=data_dir,
                        download=download)
    dev = resolve_device(device)
    with ProgressReport(console=err, unit="images") as report:   # a bar, or a line per ~10 % in a log
        res = evaluate_model(net.to(dev), dataset, batch_size=batch_size, device=dev, precision=precision,
                             num_workers=workers, progress=report.phase(f"Evaluating on {data} ({split})"))
    if as_json:
        emit(json.dumps({"model": model, "data": data, "split": split, **({"runtime": runtime} if runtime else {}),
                         **res}))
        return
    t = Table(title=f"{model} on {data} ({split}, {res['n']:,} images)", title_justify="left")
    keys = ("miou", "pixel_acc") if "miou" in res else ("top1", "top5")
    for col in (*({"miou": "mIoU", "pixel_acc": "pixel acc", "top1": "top-1", "top5": "top-5"}[k] for k in keys),
                "loss"):
        t.add_column(col, justify="right")
    t.add_row(*(f"{100 * res[k]:.2f}%" for k in keys), f"{res['loss']:.4f}")
    out.print(t)
