"""``--phases FILE`` and ``--phase SPEC`` of ``cheapconv train`` and ``cheapconv distill``: training in phases.

A phased run is :func:`cheapconv.train.phases.run_phases`: each phase trains some modules (``all``, the modules up
to a side head such as ERFNet's ``encoder``, or module names) for its own length, with its own attention-transfer
taps and β, reading its prediction at the model's output or at a side head (ERFNet's encoder-first training reads
the encoder's own output conv, scored on labels downsampled to its size). Each phase has its own checkpoint,
``NAME.phase1.ckpt``, ``NAME.phase2.ckpt``, ...; ``--resume`` continues the interrupted phase. ``train`` runs the
same phases from scratch (cross-entropy; taps and β unused).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .app import err

PHASES_FILE = typer.Option(
    None, "--phases", metavar="FILE",
    help='Train in phases, read from this JSON file: a list of {"train": "all" | a side head (e.g. "encoder") | '
         '[modules], "target": "final" | a side head, "taps": [...], "beta": B, "epochs": N, "max_steps": N} (see '
         'cheapconv.train.phases). Each phase checkpoints to NAME.phaseI.ckpt.')
PHASE = typer.Option(
    None, "--phase", metavar="SPEC",
    help="A phase, repeated in order (instead of --phases), e.g. 'train=encoder; target=encoder; "
         "taps=layers.7,layers.12,layers.16; beta=1000; epochs=150' then 'train=all; "
         "taps=layers.7,layers.12,layers.16,layers.19,layers.22; beta=600; epochs=150' (ERFNet's recipe in the "
         "Moonshine paper).")


def phases_given(file: Path | None, specs: list[str] | None) -> list | None:
    """The phases of ``--phases FILE`` or the repeated ``--phase`` (None when neither is given); both at once, or
    a bad phase, is a :class:`~cheapconv.errors.UsageError`."""
    from cheapconv.errors import UsageError
    from cheapconv.train.phases import check_phases, load_phases, parse_phase

    if file is not None and specs:
        raise UsageError("--phases FILE and --phase give the same thing: pass the phases one way.")
    if file is not None:
        return load_phases(file)
    if specs:
        return check_phases([parse_phase(s) for s in specs])
    return None


def run_phased(teacher, student, train, val, cfg, phases, *, checkpoint: Path, resume: bool, overwrite: bool,
               is_main: bool):
    """:func:`~cheapconv.train.phases.run_phases` with each phase said on stderr; returns the last phase's result
    (its ``history`` holds every phase's epoch records, its ``start`` the first phase's)."""
    from cheapconv.train.phases import phase_checkpoint, phase_config, run_phases

    if is_main:
        for i, phase in enumerate(phases, start=1):
            loss = phase_config(cfg, phase, teacher=teacher is not None).loss
            unused = " (taps and β unused: no teacher)" if teacher is None and (phase.taps or phase.beta) else ""
            err.print(f"[cyan]phase {i}:[/cyan] {phase}; loss {loss}{unused}; checkpoint "
                      f"{phase_checkpoint(checkpoint, i)}", highlight=False, soft_wrap=True)
    results = run_phases(teacher, student, train, phases, val_data=val, config=cfg, checkpoint=checkpoint,
                         resume=resume, overwrite=overwrite)
    last = results[-1]
    last.history = [rec for r in results for rec in r.history]
    last.start = results[0].start if last.start is None else last.start
    last.steps = sum(r.steps for r in results)
    last.checkpoint = results[-1].checkpoint
    return last
