"""``cheapconv train``, ``cheapconv distill`` and ``cheapconv evaluate``: thin wrappers of
:func:`cheapconv.distill` and :func:`cheapconv.evaluate`.

Data adapters are explicit: when the data's channels or size differ from what the model reads, the command
says on stderr which adapter it applies (grayscale repeated to k channels, zero padding to the model's
native size), and ``--in-chans`` / ``--image-size`` override it. Under ``torchrun`` every process runs the
command; only rank 0 prints and writes files.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .app import app, check_outputs, err, out, output_path

_LOSSES = "at, kd, at+kd or ce"


# ------------------------------------------------------------------------------------------ options
# Shared by train and distill; typer needs them spelled out per command, so they live here once as defaults.

def _opt(default, *names, **kw):
    return typer.Option(default, *names, **kw)


DATA = _opt(..., "--data", "-d", help="fashion-mnist, cifar10, cifar100, imagefolder:PATH, synthetic[:CxHxW...].")
DATA_DIR = _opt(None, "--data-dir", help="Where datasets are looked for (default $CHEAPCONV_DATA_DIR or ./data).")
DOWNLOAD = _opt(False, "--download", help="Allow downloading the dataset (needs network).")
IN_CHANS = _opt(None, "--in-chans", min=1, help="Input channels (default: the model's; grayscale is repeated).")
IMAGE_SIZE = _opt(None, "--image-size", min=1, help="Image size (default: the model's native size; zero padding).")
EPOCHS = _opt(None, "--epochs", min=1, help="Epochs (default 200, the paper's recipe).")
MAX_STEPS = _opt(None, "--max-steps", min=1, help="Stop after this many optimiser steps (overrides --epochs).")
BATCH = _opt(128, "--batch-size", "-b", min=1, help="Global batch size (split across torchrun processes).")
LR = _opt(None, "--lr", help="Learning rate (default 0.1; with --resume, the checkpoint's: give --lr to change it).")
MOMENTUM = _opt(0.9, "--momentum", help="SGD momentum.")
NESTEROV = _opt(False, "--nesterov", help="Nesterov momentum.")
WD = _opt(5e-4, "--weight-decay", "--wd", help="Weight decay.")
SCHEDULE = _opt("multistep", "--schedule", help="multistep (×0.2 at 30/60/80 %), cosine or constant.")
WARMUP = _opt(0.0, "--warmup-epochs", help="Linear learning-rate warm-up, in epochs.")
SEED = _opt(0, "--seed", help="Seed of shuffling, augmentation and (train) initialisation.")
PRECISION = _opt("fp32", "--precision", help="fp32, bf16 (autocast) or fp16 (GPU, with a grad scaler).")
CHANNELS_LAST = _opt(False, "--channels-last", help="NHWC memory format (faster convs on recent CPUs/GPUs).")
GRAD_CLIP = _opt(None, "--grad-clip", help="Clip the gradient norm to this value (default off; with --resume, "
                 "the checkpoint's: give --grad-clip to change it).")
DEVICE = _opt("auto", "--device", help="auto, cpu, cuda or cuda:N.")
WORKERS = _opt(None, "--workers", min=0, help="DataLoader workers (default: chosen for the dataset).")
CKPT = _opt(None, "--checkpoint", help="Resume checkpoint (default: OUTPUT with suffix .ckpt).")
CKPT_EVERY = _opt(1, "--checkpoint-every", min=1, help="Epochs between checkpoints.")
CKPT_STEPS = _opt(None, "--checkpoint-every-steps", min=1, help="Also checkpoint every N steps.")
RESUME = _opt(False, "--resume", help="Continue exactly from the checkpoint of an interrupted run (a finished "
              "run's: write its model again, no training).")
OVERWRITE = _opt(False, "--overwrite", help="Start over even where an unfinished run's checkpoint exists "
                 "(it and its metrics are discarded).")
LOG_EVERY = _opt(50, "--log-every", min=1, help="Steps between metrics records.")
NO_PROGRESS = _opt(False, "--no-progress", help="No progress bar (epoch lines and the metrics file remain).")
TENSORBOARD = _opt(False, "--tensorboard", help="Also write TensorBoard events (if installed).")
COMPILE = _opt(False, "--compile", help="torch.compile the networks (measure: it does not always help).")
TRUST = _opt(False, "--trust", help="Allow model files that need unpickling (runs code from the file).")
OUTPUT = _opt(None, "--output", "-o", help="Where to write the trained model (.pt).")


def _config(**kw):
    from cheapconv import DistillConfig

    if kw.get("epochs") is None:
        kw.pop("epochs")
    return DistillConfig(**kw)


def _note(message: str) -> None:
    err.print(f"[cyan]note:[/cyan] {message}", highlight=False, soft_wrap=True)


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def load_model(spec: str, *, weights: Path | None = None, num_classes: int | None = None, trust: bool = False,
               what: str = "model", **kwargs):
    """A model from a cheapconv file, or a zoo name (+ optional local weights): see store.resolve_model."""
    from cheapconv.store.resolve import resolve_model

    return resolve_model(spec, weights=weights, num_classes=num_classes, trust=trust, what=what, **kwargs)


def load_data(name: str, split: str, model, *, in_chans: int | None, image_size: int | None,
              data_dir: Path | None, download: bool, announce: bool = True):
    """The dataset, adapted to ``model``'s input (cheapconv.data.adapt_for_model decides how); the adapters
    applied are stated on stderr, with the option that overrides each."""
    from cheapconv.data import adapt_for_model, get_dataset

    fit = adapt_for_model(name, model, in_chans=in_chans, image_size=image_size)
    if announce and _is_main():
        for arg, note in fit.notes.items():
            _note(f"{note} (set --{arg.replace('_', '-')} to change).")
    return get_dataset(name, split, data_dir=data_dir, download=download, in_chans=fit.in_chans,
                       image_size=fit.image_size)


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
    from cheapconv import distill
    from cheapconv.train.loop import Interrupted

    try:
        return distill(teacher, student, train, val_data=val, config=cfg, checkpoint=checkpoint, resume=resume,
                       overwrite=overwrite)
    except Interrupted as e:
        if _is_main():
            err.print(f"[yellow]{e}[/yellow]", highlight=False, soft_wrap=True)
        raise  # a KeyboardInterrupt: cheapconv_cli.main turns it into exit code 130


def _save_and_report(model, output: Path, result, *, role: str, data: str, cfg, extra: dict) -> None:
    import cheapconv

    if result.rank != 0:
        return
    last = result.last
    training = {"data": data, "loss": last.get("loss_kind"), "steps": result.steps,
                "val_top1": last.get("val_top1"), "val_top5": last.get("val_top5"), "config": cfg.to_dict(),
                **extra}
    try:
        kind = cheapconv.save(model, output, extra={"training": training})
    except KeyboardInterrupt:
        # the write is atomic: the model file is absent (or the previous one), the final checkpoint is there
        err.print(f"[yellow]Interrupted while writing the model; {output} was not written. Training had finished "
                  f"({result.steps} steps) and its final checkpoint {result.checkpoint} is kept: run the same "
                  "command with --resume to write the model without training again.[/yellow]", highlight=False,
                  soft_wrap=True)
        raise
    t = Table(title=f"{role} trained on {data}", title_justify="left")
    for col in ("loss", "steps", "train top-1", "val top-1", "val top-5", "val loss", "time"):
        t.add_column(col, justify="right")
    pct = lambda v: f"{100 * v:.2f}%" if isinstance(v, float) else "-"
    t.add_row(str(last.get("loss_kind")), str(result.steps), pct(last.get("train_top1")), pct(last.get("val_top1")),
              pct(last.get("val_top5")), f"{last['val_loss']:.4f}" if "val_loss" in last else "-",
              f"{last.get('time_s', 0):.0f} s")
    out.print(t)
    err.print(f"Wrote {output} ({kind} format); resume checkpoint {result.checkpoint}.", highlight=False)


# ----------------------------------------------------------------------------------------- commands


@app.command()
def train(
    model: str = typer.Argument(..., help="wrn_16_2, resnet18, timm:NAME, or a cheapconv file to keep training."),
    data: str = DATA, output: Path = OUTPUT,
    num_classes: int = _opt(None, "--num-classes", min=1, help="Classifier size (default: the dataset's)."),
    weights: Path = _opt(None, "--weights", help="Local weights to start from (zoo names only)."),
    in_chans: int = IN_CHANS, image_size: int = IMAGE_SIZE, data_dir: Path = DATA_DIR, download: bool = DOWNLOAD,
    epochs: int = EPOCHS, max_steps: int = MAX_STEPS, batch_size: int = BATCH, lr: float = LR,
    momentum: float = MOMENTUM, nesterov: bool = NESTEROV, weight_decay: float = WD, schedule: str = SCHEDULE,
    warmup_epochs: float = WARMUP, seed: int = SEED, precision: str = PRECISION, channels_last: bool = CHANNELS_LAST,
    grad_clip: float = GRAD_CLIP, device: str = DEVICE, workers: int = WORKERS, checkpoint: Path = CKPT,
    checkpoint_every: int = CKPT_EVERY, checkpoint_every_steps: int = CKPT_STEPS, resume: bool = RESUME,
    overwrite: bool = OVERWRITE, log_every: int = LOG_EVERY, no_progress: bool = NO_PROGRESS,
    tensorboard: bool = TENSORBOARD, compile: bool = COMPILE, trust: bool = TRUST,
) -> None:
    """Train MODEL from scratch (a teacher, or a baseline student) with cross-entropy.

    Example: cheapconv train wrn_16_2 --data fashion-mnist --epochs 3 -o teacher.pt
    """
    import torch

    from cheapconv.data import dataset_info

    output_path(output)
    check_outputs(inputs={"MODEL": model, "--weights": weights},  # default checkpoint as in _prepare_run
                  outputs={"-o/--output": output, "--checkpoint": checkpoint or output.with_suffix(".ckpt")})
    ckpt, lr, grad_clip = _prepare_run(output, checkpoint, resume=resume, overwrite=overwrite, lr=lr,
                                       grad_clip=grad_clip)
    cfg = _config(epochs=epochs, max_steps=max_steps, batch_size=batch_size, loss="ce", lr=lr, momentum=momentum,
                  nesterov=nesterov, weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs,
                  seed=seed, precision=precision, channels_last=channels_last, grad_clip=grad_clip, device=device,
                  num_workers=workers, checkpoint_every=checkpoint_every,
                  checkpoint_every_steps=checkpoint_every_steps, log_every=log_every, progress=not no_progress,
                  tensorboard=tensorboard, compile=compile)
    info = dataset_info(data)
    torch.manual_seed(seed)  # the initial weights (every rank builds the same model)
    from cheapconv.store.resolve import is_model_file

    kwargs = {"in_chans": in_chans} if in_chans is not None and not is_model_file(model) else {}
    net = load_model(model, weights=weights, num_classes=num_classes or info.num_classes, trust=trust, **kwargs)
    train_set = load_data(data, "train", net, in_chans=in_chans, image_size=image_size, data_dir=data_dir,
                          download=download)
    test_set = load_data(data, "test", net, in_chans=in_chans, image_size=image_size, data_dir=data_dir,
                         download=download, announce=False)
    result = _run(None, net, train_set, test_set, cfg, checkpoint=ckpt, resume=resume, overwrite=overwrite)
    _save_and_report(net, output, result, role=model, data=data, cfg=cfg, extra={"teacher": None})


@app.command("distill")
def distill_cmd(
    teacher: str = _opt(..., "--teacher", "-t", help="A cheapconv file, or a zoo name with --teacher-weights."),
    student: str = _opt(..., "--student", "-s", help="Student: a cheapconv file (from `cheapconv cheapen`)."),
    data: str = DATA, output: Path = OUTPUT,
    teacher_weights: Path = _opt(None, "--teacher-weights", help="Local weights for a teacher given by zoo name."),
    num_classes: int = _opt(None, "--num-classes", min=1, help="Classifier size of a zoo teacher."),
    loss: str = _opt("at", "--loss", help=f"Objective: {_LOSSES}."),
    beta: float = _opt(1000.0, "--beta", help="AT weight."),
    alpha: float = _opt(0.9, "--alpha", help="KD weight."),
    temperature: float = _opt(4.0, "--temperature", help="KD temperature."),
    kd_reduction: str = _opt("batchmean", "--kd-reduction", help="batchmean (standard) or reference (the "
                             "Moonshine code: batch×classes mean × 2)."),
    in_chans: int = IN_CHANS, image_size: int = IMAGE_SIZE, data_dir: Path = DATA_DIR, download: bool = DOWNLOAD,
    epochs: int = EPOCHS, max_steps: int = MAX_STEPS, batch_size: int = BATCH, lr: float = LR,
    momentum: float = MOMENTUM, nesterov: bool = NESTEROV, weight_decay: float = WD, schedule: str = SCHEDULE,
    warmup_epochs: float = WARMUP, seed: int = SEED, precision: str = PRECISION, channels_last: bool = CHANNELS_LAST,
    grad_clip: float = GRAD_CLIP, device: str = DEVICE, workers: int = WORKERS, checkpoint: Path = CKPT,
    checkpoint_every: int = CKPT_EVERY, checkpoint_every_steps: int = CKPT_STEPS, resume: bool = RESUME,
    overwrite: bool = OVERWRITE, log_every: int = LOG_EVERY, no_progress: bool = NO_PROGRESS,
    tensorboard: bool = TENSORBOARD, compile: bool = COMPILE, trust: bool = TRUST,
) -> None:
    """Distil STUDENT from TEACHER (attention transfer by default) with the teacher's recipe.

    Example: cheapconv distill --teacher teacher.pt --student s.pt --data fashion-mnist --loss at -o trained.pt
    """
    output_path(output)
    check_outputs(inputs={"--teacher": teacher, "--student": student, "--teacher-weights": teacher_weights},
                  outputs={"-o/--output": output, "--checkpoint": checkpoint or output.with_suffix(".ckpt")})
    ckpt, lr, grad_clip = _prepare_run(output, checkpoint, resume=resume, overwrite=overwrite, lr=lr,
                                       grad_clip=grad_clip)
    cfg = _config(epochs=epochs, max_steps=max_steps, batch_size=batch_size, loss=loss, beta=beta, alpha=alpha,
                  temperature=temperature, kd_reduction=kd_reduction, lr=lr, momentum=momentum, nesterov=nesterov,
                  weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs, seed=seed,
                  precision=precision, channels_last=channels_last, grad_clip=grad_clip, device=device,
                  num_workers=workers, checkpoint_every=checkpoint_every,
                  checkpoint_every_steps=checkpoint_every_steps, log_every=log_every, progress=not no_progress,
                  tensorboard=tensorboard, compile=compile)
    t = load_model(teacher, weights=teacher_weights, num_classes=num_classes, trust=trust, what="teacher")
    s = load_model(student, trust=trust, what="student")
    train_set = load_data(data, "train", s, in_chans=in_chans, image_size=image_size, data_dir=data_dir,
                          download=download)
    test_set = load_data(data, "test", s, in_chans=in_chans, image_size=image_size, data_dir=data_dir,
                         download=download, announce=False)
    result = _run(t, s, train_set, test_set, cfg, checkpoint=ckpt, resume=resume, overwrite=overwrite)
    _save_and_report(s, output, result, role=student, data=data, cfg=cfg, extra={"teacher": teacher})


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="A cheapconv model file (or a zoo name with --weights)."),
    data: str = DATA,
    split: str = _opt("test", "--split", help="test or train."),
    weights: Path = _opt(None, "--weights", help="Local weights for a zoo name."),
    num_classes: int = _opt(None, "--num-classes", min=1, help="Classifier size of a zoo model."),
    batch_size: int = _opt(256, "--batch-size", "-b", min=1, help="Batch size."),
    in_chans: int = IN_CHANS, image_size: int = IMAGE_SIZE, data_dir: Path = DATA_DIR, download: bool = DOWNLOAD,
    device: str = DEVICE, precision: str = PRECISION, workers: int = WORKERS, trust: bool = TRUST,
    as_json: bool = _opt(False, "--json", help="Print the figures as one JSON object."),
) -> None:
    """Top-1, top-5 and mean cross-entropy of a model on a dataset split.

    Example: cheapconv evaluate trained.pt --data fashion-mnist
    """
    from cheapconv import UsageError
    from cheapconv import evaluate as evaluate_model
    from cheapconv.train.distributed import _resolve_device

    if split not in ("test", "train"):
        raise typer.BadParameter("expected test or train", param_hint="--split")
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"Unknown precision {precision!r}; valid: fp32, bf16, fp16.")
    net = load_model(model, weights=weights, num_classes=num_classes, trust=trust)
    dataset = load_data(data, split, net, in_chans=in_chans, image_size=image_size, data_dir=data_dir,
                        download=download)
    dev = _resolve_device(device, 0)
    with err.status(f"Evaluating on {data} ({split})..."):
        res = evaluate_model(net.to(dev), dataset, batch_size=batch_size, device=dev, precision=precision,
                             num_workers=workers)
    if as_json:
        out.print(json.dumps({"model": model, "data": data, "split": split, **res}), highlight=False)
        return
    t = Table(title=f"{model} on {data} ({split}, {res['n']:,} images)", title_justify="left")
    for col in ("top-1", "top-5", "loss"):
        t.add_column(col, justify="right")
    t.add_row(f"{100 * res['top1']:.2f}%", f"{100 * res['top5']:.2f}%", f"{res['loss']:.4f}")
    out.print(t)
