"""Entry point of the ``cheapconv`` command: runs the typer app and turns errors into clean exits.

Exit codes: 0 success, 1 failure at run time, 2 usage error (a full disk too: the fix is the user's), 130
interrupted. No traceback unless ``--debug``.
"""

from __future__ import annotations

import sys

# Only the standard library is imported at module level: the command modules (typer, rich) are imported
# inside main(), so that Ctrl-C while they load is a clean "Interrupted." (exit 130), not a traceback. The
# library and torch are imported by the command that runs, never at start (``cheapconv --help`` stays fast).


def _classes(name: str) -> tuple[type, ...]:
    """click's exception class ``name`` and, for typer versions that vendor click, typer's own."""
    import importlib

    import click

    found = {getattr(click.exceptions, name)}
    try:
        found.add(getattr(importlib.import_module("typer._click.exceptions"), name))
    except (ImportError, AttributeError):
        pass
    return tuple(found)


def _interrupted() -> int:
    try:
        sys.stderr.write("Interrupted.\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - stderr closed: the exit code still says it
        pass
    return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _main(argv, debug)
    except KeyboardInterrupt:  # anywhere: while importing, while starting, while printing an error
        return _interrupted()


def _main(argv: list[str], debug: bool) -> int:
    import click  # noqa: F401
    import typer

    from cheapconv.errors import CheapconvError

    from . import cheapen as _cheapen  # noqa: F401  (registers commands)
    from . import compress as _compress  # noqa: F401
    from . import measure as _measure  # noqa: F401
    from . import search as _search  # noqa: F401
    from . import train as _train  # noqa: F401
    from .app import STATE, app, err, literal

    click_errors = _classes("ClickException")
    exits = (typer.Exit, *_classes("Exit")) if hasattr(click.exceptions, "Exit") else (typer.Exit,)
    aborts = (typer.Abort, *_classes("Abort"))
    try:
        # Without standalone mode, click/typer *return* the code of typer.Exit(n) and of Ctrl-C (130).
        code = app(args=argv, prog_name="cheapconv", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except exits as e:
        return getattr(e, "exit_code", 0)
    except click_errors as e:
        e.show(file=sys.stderr)
        return e.exit_code
    except (*aborts, KeyboardInterrupt):
        return _interrupted()
    except CheapconvError as e:
        if debug or STATE["debug"]:
            raise
        err.print(f"[bold red]error:[/bold red] {literal(e)}", highlight=False, soft_wrap=True)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - last resort: a clean message, traceback only with --debug
        if debug or STATE["debug"]:
            raise
        err.print(f"[bold red]error:[/bold red] {literal(type(e).__name__)}: {literal(e)}\nThis looks like a bug in "
                  "cheapconv or an unsupported model; rerun with --debug for the traceback.", highlight=False,
                  soft_wrap=True)
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
