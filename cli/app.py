"""The typer application object and helpers every command module shares.

Command modules register themselves with ``@app.command()``; :mod:`cheapconv_cli.main` imports them all.
Tables and results go to stdout, progress and diagnostics to stderr.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="cheapconv",
    help="Make trained convolutional networks cheap: swap in cheap conv blocks, measure, distil.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

out = Console()                      # tables, results
if not out.is_terminal:              # pipes and logs: wide enough that plan tables stay readable
    out = Console(width=160)
err = Console(stderr=True)           # progress, warnings, errors

STATE = {"debug": False}


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors.")) -> None:
    STATE["debug"] = debug


def parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    """``3,32,32`` (or ``3x32x32``) -> (3, 32, 32)."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise typer.BadParameter(f"expected C,H,W such as 3,224,224; got {text!r}", param_hint="--input-size")
    return values


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def output_path(path: Path | None, *, required: bool = True) -> Path | None:
    """Validate an output path before any work is done (missing folder -> usage error, exit 2)."""
    from cheapconv.io import check_writable

    if path is None:
        if required:
            raise typer.BadParameter("an output file is required", param_hint="-o/--output")
        return None
    return check_writable(path)
