"""Entry point of the ``cheapconv`` command: runs the typer app and turns errors into clean exits.

Exit codes: 0 success, 1 failure at run time, 2 usage error, 130 interrupted. No traceback unless
``--debug``.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from . import cheapen as _cheapen  # noqa: F401  (registers commands)
from . import measure as _measure  # noqa: F401
from . import search as _search  # noqa: F401
from . import train as _train  # noqa: F401
from .app import STATE, app, err


def _classes(name: str) -> tuple[type, ...]:
    """click's exception class ``name`` and, for typer versions that vendor click, typer's own."""
    found = {getattr(click.exceptions, name)}
    try:
        found.add(getattr(importlib.import_module("typer._click.exceptions"), name))
    except (ImportError, AttributeError):
        pass
    return tuple(found)


_CLICK_ERRORS = _classes("ClickException")
_EXITS = (typer.Exit, *_classes("Exit")) if hasattr(click.exceptions, "Exit") else (typer.Exit,)
_ABORTS = (typer.Abort, *_classes("Abort"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from cheapconv.errors import CheapconvError

    try:
        # Without standalone mode, click/typer *return* the code of typer.Exit(n) and of Ctrl-C (130).
        code = app(args=argv, prog_name="cheapconv", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except _EXITS as e:
        return getattr(e, "exit_code", 0)
    except _CLICK_ERRORS as e:
        e.show(file=sys.stderr)
        return e.exit_code
    except (*_ABORTS, KeyboardInterrupt):
        err.print("Interrupted.")
        return 130
    except CheapconvError as e:
        if debug or STATE["debug"]:
            raise
        err.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - last resort: a clean message, traceback only with --debug
        if debug or STATE["debug"]:
            raise
        err.print(f"[bold red]error:[/bold red] {type(e).__name__}: {e}\nThis looks like a bug in cheapconv or an "
                  "unsupported model; rerun with --debug for the traceback.", highlight=False, soft_wrap=True)
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
