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
import os
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table
from typer.models import OptionInfo

from cheapconv.extensions import LOSSES
from cheapconv.train.config import FINE_TUNING, RESUME_ADJUSTABLE, DistillConfig
from cheapconv.train.objectives import canonical_name, make_objective

from .app import app, check_outputs, emit, err, out, output_path, save_model, warn, weights_notes
from .options import Listing, datasets_listed, field_option, given
from .phases import PHASE, PHASES_FILE, phases_given, run_phased

# ------------------------------------------------------------------------------------------ options

def _opt(default, *names, **kw):
    return typer.Option(default, *names, **kw)


def _data_help() -> str:
    return f"Dataset: {datasets_listed()}."


def _setting(name: str):
    """The option of DistillConfig field ``name`` (for a command that runs no training but takes the setting)."""
    return field_option(_FIELDS[name], _HINTS[name], decls=_DECLS.get(name)).parameter.default


# also used by evaluate
DATA = Listing(_data_help, default=..., param_decls=("--data", "-d"))
DATA_DIR = _opt(None, "--data-dir", help="Where datasets are looked for (default $CHEAPCONV_DATA_DIR or ./data).")
DOWNLOAD = _opt(False, "--download", help="Allow downloading the dataset (needs network).")
IN_CHANS = _opt(None, "--in-chans", min=1, help="Input channels (default: the model's; grayscale is repeated).")
IMAGE_SIZE = _opt(None, "--image-size", min=1, help="Image size (default: the size the model file records, else "
                  "the model's native size; in-memory data is zero-padded).")
TRUST = _opt(False, "--trust", help="Allow model files that need unpickling (runs code from the file).")

_FIELDS = {f.name: f for f in dataclasses.fields(DistillConfig)}
_HINTS = typing.get_type_hints(DistillConfig)
#: the options whose names are not the field's
_DECLS = {"batch_size": ("--batch-size", "-b"), "weight_decay": ("--weight-decay", "--wd"),
          "num_workers": ("--workers",)}


def _config_note(name: str) -> str:
    """What the command line adds to a field's help: the settings a resume keeps unless given, and the
    fine-tuning recipe's values (:data:`FINE_TUNING`) for a student that starts from its teacher."""
    notes = []
    if name in FINE_TUNING:
        notes.append(f"{FINE_TUNING[name]} for a student that starts from its teacher.")
    if name in RESUME_ADJUSTABLE:
        notes.append("With --resume, the checkpoint's unless given.")
    if name == "seed":
        notes.append("train: the initial weights too.")
    return " ".join(notes)


#: the options of every DistillConfig field with a help (its objective aside, see _objective_options); the
#: config gets those given, so that for the others its default, a resume's or a fine-tuning recipe's value applies
CONFIG_OPTIONS = [field_option(f, _HINTS[f.name], decls=_DECLS.get(f.name), note=_config_note(f.name))
                  for f in dataclasses.fields(DistillConfig) if "help" in f.metadata and f.name != "loss"]


def _objective_options() -> list:
    """``--loss`` and the settings of every registered objective (the first to declare a name describes it)."""
    seen = {}
    for entry in LOSSES.entries():
        hints = typing.get_type_hints(entry.obj)
        for f in dataclasses.fields(entry.obj):
            if f.name not in seen and "help" in f.metadata:
                seen[f.name] = field_option(f, hints[f.name])
    return list(seen.values())


OBJECTIVE_OPTIONS = _objective_options()
LOSS = Listing(lambda: f"Objective: {LOSSES.describe()}; its settings are the options below that it takes.",
               default="at", param_decls=("--loss",), show_default=True)


def _objective(name: str, settings: dict):
    """The objective ``name`` with the settings given on the command line that it takes; a note names the
    others, which do not apply to it."""
    cls = LOSSES.get(canonical_name(name))
    own = {f.name for f in dataclasses.fields(cls)}
    unused = sorted(set(settings) - own)
    if unused and _is_main():
        named = " and ".join("--" + k.replace("_", "-") for k in unused)
        _note(f"{named} {'does' if len(unused) == 1 else 'do'} not apply to the {cls.name} loss (its settings: "
              f"{', '.join(sorted(own)) or 'none'}): ignored.")
    return make_objective(cls.name, **{k: v for k, v in settings.items() if k in own})


@dataclass
class RunOptions:
    """The options ``train`` and ``distill`` share, defined once: each field's default is its typer Option
    (the names, default and help the user sees); ``settings`` are the DistillConfig fields given on the command
    line (:data:`CONFIG_OPTIONS`). :func:`_with_run_options` puts both into the commands' signatures, and the
    command receives the values typer parsed as one ``RunOptions``."""

    data: str = DATA
    output: Path = _opt(None, "--output", "-o", help="Where to write the trained model (.pt).")
    in_chans: int = IN_CHANS
    image_size: int = IMAGE_SIZE
    data_dir: Path = DATA_DIR
    download: bool = DOWNLOAD
    augment: str = _opt("standard", "--augment", help="Training augmentation: none, light (flip + 2-px crop; "
                        "image folders: RandomResizedCrop scale 0.5-1) or standard (flip + 4-px crop; image "
                        "folders: scale 0.08-1, strong for fine-tuning a pretrained network).")
    checkpoint: Path = _opt(None, "--checkpoint", help="Resume checkpoint (default: OUTPUT with suffix .ckpt).")
    resume: bool = _opt(False, "--resume", help="Continue exactly from the checkpoint of an interrupted run (a "
                        "finished run's: write its model again, no training).")
    overwrite: bool = _opt(False, "--overwrite", help="Start over even where an unfinished run's checkpoint exists "
                           "(it and its metrics are discarded).")
    trust: bool = TRUST
    phases: Path = PHASES_FILE
    phase: list[str] = PHASE
    settings: dict = dataclasses.field(default_factory=dict)   # the DistillConfig fields given
    kept: dict = dataclasses.field(default_factory=dict)       # on --resume, the checkpoint's (see prepare)
    phase_list: list | None = None                             # the phases given (see prepare), None: one run

    def prepare(self, inputs: dict) -> Path:
        """Checks before any work: the augmentation, the output path, outputs that are ``inputs``, the
        checkpoint (see :func:`_prepare_run`, which also gives, on --resume, the checkpoint's values of the
        settings a resume may change). Returns the checkpoint path."""
        from cheapconv.data import augmentation

        augmentation(self.augment, "train")   # an unknown --augment fails before any work
        self.phase_list = phases_given(self.phases, self.phase)   # bad phases too
        output_path(self.output)
        check_outputs(inputs=inputs,   # the default checkpoint as in _prepare_run
                      outputs={"-o/--output": self.output,
                               "--checkpoint": self.checkpoint or self.output.with_suffix(".ckpt")})
        if self.phase_list is not None:   # each phase checks its own checkpoint (NAME.phaseI.ckpt) before any step
            return self.checkpoint or self.output.with_suffix(".ckpt")
        ckpt, self.kept = _prepare_run(self.output, self.checkpoint, resume=self.resume, overwrite=self.overwrite)
        return ckpt

    def run(self, teacher, student, train, val, cfg, *, checkpoint: Path):
        """The training run: in phases where given (:mod:`cheapconv_cli.phases`), else one distill() call."""
        if self.phase_list is None:
            return _run(teacher, student, train, val, cfg, checkpoint=checkpoint, resume=self.resume,
                        overwrite=self.overwrite)
        return run_phased(teacher, student, train, val, cfg, self.phase_list, checkpoint=checkpoint,
                          resume=self.resume, overwrite=self.overwrite, is_main=_is_main())

    def config(self, **objective):
        """The DistillConfig of these options (the library validates every value): the settings given, else on
        --resume the checkpoint's resume-adjustable ones, else the config's defaults; with the objective
        (``loss=``) added."""
        return DistillConfig(**{**self.kept, **self.settings}, **objective)

    def recorded(self, result) -> dict:
        """What the saved model's training metadata records besides the config: the augmentation strength, and
        the validation figures before the first step and after the last (None where not evaluated)."""
        return {"augment": self.augment, "start": result.start, "end": result.end,
                **({"phases": [p.to_dict() for p in self.phase_list]} if self.phase_list is not None else {})}

    def datasets(self, model) -> tuple:
        """The training and test sets, adapted to ``model`` (the adapters are stated once)."""
        kw = {"in_chans": self.in_chans, "image_size": self.image_size, "data_dir": self.data_dir,
              "download": self.download}
        return (load_data(self.data, "train", model, augment=self.augment, **kw),
                load_data(self.data, "test", model, announce=False, **kw))


def _with_run_options(lead: int, *, objective: bool = False):
    """Give a command the :class:`RunOptions` and the DistillConfig options (and, with ``objective``, ``--loss``
    and the objectives' settings, handed to the command as ``loss``, the objective). Its signature (what typer
    reads) becomes: its own first ``lead`` parameters, ``--data`` and ``--output``, its other parameters, the
    objective's options, the rest of the shared options, then the config's: the order ``--help`` lists them in;
    the command itself takes them as ``opts``."""
    hints = typing.get_type_hints(RunOptions)
    shared = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                annotation=hints[f.name]) for f in dataclasses.fields(RunOptions)
              if isinstance(f.default, OptionInfo)]
    loss = inspect.Parameter("loss", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=LOSS, annotation=str)
    loss_options = [loss, *(d.parameter for d in OBJECTIVE_OPTIONS)] if objective else []
    config_options = [d.parameter for d in CONFIG_OPTIONS]
    context = inspect.Parameter("_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    def decorate(command):
        own_hints = typing.get_type_hints(command)
        own = [p.replace(annotation=own_hints[p.name]) for p in inspect.signature(command).parameters.values()
               if p.name not in ("opts", "loss")]
        params = own[:lead] + shared[:2] + own[lead:] + loss_options + shared[2:] + config_options + [context]

        @functools.wraps(command)
        def wrapper(**kwargs):
            ctx = kwargs.pop("_context")
            opts = RunOptions(**{p.name: kwargs.pop(p.name) for p in shared},
                              settings=given(CONFIG_OPTIONS, kwargs, ctx))
            if objective:
                kwargs["loss"] = _objective(kwargs.pop("loss"), given(OBJECTIVE_OPTIONS, kwargs, ctx))
            return command(**kwargs, opts=opts)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _note(message: str) -> None:
    err.print(f"[cyan]note:[/cyan] {message}", highlight=False, soft_wrap=True)


def _is_main() -> bool:
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


def _prepare_run(output: Path, checkpoint: Path | None, *, resume: bool, overwrite: bool) -> tuple[Path, dict]:
    """Checks before any work (loading models or data): every output path can be written, a new run does not
    overwrite an unfinished run's checkpoint, a resume has its checkpoint. Returns the checkpoint path and, on
    --resume, the checkpoint's values of the settings a resume may change (RESUME_ADJUSTABLE: lr, grad_clip),
    which apply unless given."""
    from cheapconv import UsageError
    from cheapconv.train.checkpoint import check_run_paths, load_checkpoint, refuse_fresh_start

    ckpt = checkpoint or output.with_suffix(".ckpt")
    check_run_paths(ckpt, ckpt.with_suffix(".metrics.jsonl"))
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite discards it: pass one of them.")
    if not resume:
        if not overwrite:
            refuse_fresh_start(ckpt)
        return ckpt, {}
    saved = json.loads(load_checkpoint(ckpt, mmap=True)["config_json"])
    return ckpt, {k: saved[k] for k in sorted(RESUME_ADJUSTABLE) if k in saved}


def _run(teacher, student, train, val, cfg, *, checkpoint: Path, resume: bool, overwrite: bool = False):
    """distill() with Ctrl-C turned into exit code 130 and a message saying where the checkpoint is."""
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

    ckpt = opts.prepare(inputs={"MODEL": model, "--weights": weights})
    cfg = opts.config(loss="ce")
    info = dataset_info(opts.data)
    torch.manual_seed(cfg.seed)  # the initial weights (every rank builds the same model)
    kwargs = {"in_chans": opts.in_chans} if opts.in_chans is not None and not is_model_file(model) else {}
    if weights_by_position:
        kwargs["weights_by_position"] = True
    net = load_model(model, weights=weights, num_classes=num_classes or info.num_classes, trust=opts.trust, **kwargs)
    train_set, test_set = opts.datasets(net)
    result = opts.run(None, net, train_set, test_set, cfg, checkpoint=ckpt)
    _save_and_report(net, opts.output, result, role=model, data=opts.data, cfg=cfg,
                     extra={"teacher": None, **opts.recorded(result)}, trained_on=test_set)
    _say_start_end(result, cfg, start_file=model, output=opts.output)


@app.command("distill")
@_with_run_options(lead=2, objective=True)
def distill_cmd(
    teacher: str = _opt(..., "--teacher", "-t", help="A cheapconv file, or a zoo name with --teacher-weights."),
    student: str = _opt(..., "--student", "-s", help="Student: a cheapconv file (from `cheapconv cheapen`)."),
    teacher_weights: Path = _opt(None, "--teacher-weights", help="Local weights for a teacher given by zoo name."),
    teacher_weights_by_position: bool = _opt(False, "--teacher-weights-by-position", help="Load --teacher-weights "
                                             "in order (tensor names that differ; same shapes, same order)."),
    num_classes: int = _opt(None, "--num-classes", min=1, help="Classifier size of a zoo teacher."),
    *, opts: RunOptions, loss,
) -> None:
    """Distil STUDENT from TEACHER (attention transfer by default) with the teacher's recipe.

    Example: cheapconv distill --teacher teacher.pt --student s.pt --data fashion-mnist --loss at -o trained.pt

    Example (ERFNet's two phases, as the Moonshine paper ran them): cheapconv distill -t erfnet.pt -s s.pt
    --data fashion-mnist-seg --phase 'train=encoder; target=encoder; taps=layers.7,layers.12,layers.16;
    beta=1000; epochs=150' --phase 'train=all; taps=layers.7,layers.12,layers.16,layers.19,layers.22; beta=600;
    epochs=150' -o trained.pt   (or --phases FILE, a JSON list of phases)
    """
    ckpt = opts.prepare(inputs={"--teacher": teacher, "--student": student, "--teacher-weights": teacher_weights})
    cfg = opts.config(loss=loss)
    t = load_model(teacher, weights=teacher_weights, num_classes=num_classes, trust=opts.trust, what="teacher",
                   **({"weights_by_position": True} if teacher_weights_by_position else {}))
    s = load_model(student, trust=opts.trust, what="student")
    cfg = _recipe_for_start(s, cfg, opts, teacher=t)
    if loss.needs_taps and _is_main() and opts.phase_list is None:   # (phases: said per phase)
        from cheapconv.surgery.taps import match_taps

        tap_names = tuple(getattr(loss, "taps", ()))
        t_names, s_names = match_taps(t, s, tap_names)
        chosen = (f"{', '.join(t_names)} (matched by name)" if t_names == s_names else
                  f"teacher {', '.join(t_names) or 'none'}; student {', '.join(s_names) or 'none'} (by position)")
        _note(f"attention-transfer taps: {chosen}{'' if tap_names else '; set --taps to choose'}.")
    if getattr(s, "cheapconv_preprocessing", None) is None:   # a student fed as its teacher
        s.cheapconv_preprocessing = getattr(t, "cheapconv_preprocessing", None)
    train_set, test_set = opts.datasets(s)
    result = opts.run(t, s, train_set, test_set, cfg, checkpoint=ckpt)
    _save_and_report(s, opts.output, result, role=student, data=opts.data, cfg=cfg,
                     extra={"teacher": teacher, **opts.recorded(result)}, trained_on=test_set)
    _say_start_end(result, cfg, start_file=student, output=opts.output)


def _recipe_for_start(student, cfg, opts: RunOptions, *, teacher=None):
    """For a student that starts from its teacher (``cheapen --init teacher``), the fine-tuning settings
    (:data:`cheapconv.train.config.FINE_TUNING`: gradient clip 1, cosine schedule; the lr its teacher was trained
    with, :func:`cheapconv.train.fine_tuning.teacher_lr`, where the teacher's file records it) where the command
    line leaves them open, said in a note. They apply on --resume too (so the resumed config matches the run's),
    except those a resume takes from its checkpoint (the clip and the lr: see :func:`_prepare_run`)."""
    from cheapconv.train.fine_tuning import starts_from_teacher, teacher_lr

    if not starts_from_teacher(student):
        return cfg
    recipe = dict(FINE_TUNING)
    lr = teacher_lr(teacher) if teacher is not None else None
    if lr is not None:
        recipe["lr"] = lr
    changes = {k: v for k, v in recipe.items()
               if k not in opts.settings and not (opts.resume and k in RESUME_ADJUSTABLE)}
    if changes and _is_main() and not opts.resume:
        said = ", ".join(f"--{k.replace('_', '-')} {v if isinstance(v, str) else format(v, 'g')}"
                         + (" (its teacher's)" if k == "lr" else "") for k, v in changes.items())
        _note(f"the student starts from its teacher: training it with {said} (unclipped first steps of the "
              "paper's recipe undo such a start, and a student fine-tunes best near its teacher's lr; see "
              "benchmarks/teacher_init/README.md and benchmarks/pretrained_journey/README.md). Give the options to "
              "choose otherwise.")
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
    device: str = _setting("device"), precision: str = _setting("precision"), workers: int = _setting("num_workers"),
    trust: bool = TRUST,
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
