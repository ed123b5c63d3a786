"""The typer application object and helpers every command module shares.

Command modules register themselves with ``@app.command()``; :mod:`cheapconv_cli.main` imports them all.
Tables and results go to stdout, progress and diagnostics to stderr.

Starting is cheap: this module and the command modules import typer, rich and the standard library only, so
``cheapconv --help`` never loads torch. A command imports the library (and so torch) inside its function, when
it runs; tests/test_structure.py checks both.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from cheapconv.errors import UsageError


class _Typer(typer.Typer):
    """A typer app whose commands run with torch.fx's own traceback printing turned off (see
    :func:`quiet_fx_errors`; ``--debug`` keeps it): installed when a command runs, so ``--help`` imports no torch."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(function):
            register(_quiet_fx_while_running(function))
            return function

        return decorate


def _quiet_fx_while_running(command):
    @functools.wraps(command)
    def run(*args, **kwargs):
        undo = (lambda: None) if STATE["debug"] else quiet_fx_errors()
        try:
            return command(*args, **kwargs)
        finally:
            undo()

    return run


app = _Typer(
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


def emit(text: str) -> None:
    """Write machine-readable output (JSON, policy files, paths) to stdout as plain text: never through rich,
    so it is not wrapped at the console width, marked up or coloured, whatever the terminal or the pipe."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """A warning on stderr; ``message`` is printed literally (it may quote layer names from a file)."""
    err.print(f"[yellow]warning:[/yellow] {literal(message)}", highlight=False)


def save_model(model, path: Path, **kwargs) -> str:
    """:func:`cheapconv.save`, with its warnings (why a model had to be pickled, say) printed as warnings."""
    import cheapconv

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kind = cheapconv.save(model, path, **kwargs)
    for w in caught:
        warn(str(w.message))
    return kind


def weights_notes(model) -> list[str]:
    """What loading ``--weights`` into ``model`` did (tensors paired by position, a replaced classifier head)."""
    record = getattr(model, "cheapconv_weights", None)
    return record.notes() if record is not None else []


def output_path(path: Path | None, *, required: bool = True) -> Path | None:
    """Validate an output path before any work is done (missing folder -> usage error, exit 2)."""
    from cheapconv.store.files import check_writable

    if path is None:
        if required:
            raise typer.BadParameter("an output file is required", param_hint="-o/--output")
        return None
    return check_writable(path)


# ------------------------------------------------------------------------ outputs that would destroy inputs

def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: equal once resolved (symlinks followed), or one inode (hard
    links, bind mounts) when both exist."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop
        pass
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def labelled_paths(items) -> list[tuple[str, Path]]:
    """``(option label, Path)`` for each path of ``items``: a mapping of labels to a path, a list of paths or
    None (skipped), or such pairs already (see :func:`check_outputs`)."""
    if items is None:
        return []
    pairs = items.items() if hasattr(items, "items") else items
    out_pairs = []
    for label, value in pairs:
        if value is None or value == "":
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        out_pairs += [(label, Path(v)) for v in values if v is not None and str(v) != ""]
    return out_pairs


def check_outputs(*, inputs=None, outputs=None) -> None:
    """Refuse, before any work, a run whose output would overwrite one of its inputs or another of its outputs.

    ``inputs`` and ``outputs`` map an option label (``"--teacher"``, ``"-o/--output"``) to a path, a list of
    paths or None (ignored); pairs ``(label, path)`` work too. Paths are compared resolved (through symlinks)
    and, when both exist, by inode (hard links). Each output's folder is also checked to exist and be writable
    (:func:`cheapconv.store.files.check_writable`). Raises :class:`cheapconv.errors.UsageError` (exit 2).
    """
    from cheapconv.store.files import check_writable

    ins, outs = labelled_paths(inputs), labelled_paths(outputs)
    for i, (label, path) in enumerate(outs):
        for in_label, in_path in ins:
            if same_file(path, in_path):
                raise UsageError(f"The output {label} {str(path)!r} is the same file as the input {in_label} "
                                 f"{str(in_path)!r}: writing it would destroy the input. Choose another "
                                 f"{label} path.")
        for other_label, other in outs[:i]:
            if same_file(path, other):
                raise UsageError(f"The outputs {other_label} {str(other)!r} and {label} {str(path)!r} are the "
                                 "same file: one would overwrite the other. Give them different paths.")
    for _, path in outs:
        check_writable(path)


# ------------------------------------------------------------------------ strings that come from files

#: C0/C1 controls (newline excepted), DEL, and the bidirectional overrides that can reorder what a terminal shows
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def literal(text) -> str:
    """``text`` made safe to print with rich: markup escaped (so ``[red]`` prints as ``[red]``) and control
    characters (ESC and the other C0/C1 controls except newline, DEL, bidirectional overrides) shown as
    ``\\xNN``/``\\uNNNN`` escapes instead of being sent to the terminal. Use it on every string read from a file."""
    text = str(text)

    def show(m) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return escape(_CONTROL.sub(show, text))


def literal_table(table):
    """A rich Table with every string cell, its title and caption passed through :func:`literal` (for tables
    built from file contents: layer names, policies, recipe fields). Returns the same table."""
    for attr in ("title", "caption"):
        value = getattr(table, attr, None)
        if isinstance(value, str):
            setattr(table, attr, literal(value))
    for column in getattr(table, "columns", ()):
        cells = getattr(column, "_cells", None)
        if isinstance(cells, list):
            column._cells = [literal(c) if isinstance(c, str) else c for c in cells]
    return table


# ------------------------------------------------------------------------ devices, input sizes, downloads

def check_device(text: str | None, *, option: str = "--device") -> str | None:
    """Validate a device string before any work: unknown names and absent devices are usage errors."""
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"Unknown device {text!r} for {option}; use cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{option} {text}: no CUDA device is available on this machine (no GPU, or no "
                             "driver). Use --device cpu.")
        if device.index is not None and device.index >= count:
            raise UsageError(f"{option} {text}: this machine has {count} CUDA device(s), numbered 0 to "
                             f"{count - 1}. Use --device cuda:0 or --device cpu.")
        return text
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"{option} {text}: MPS is not available on this machine. Use --device cpu.")
        return text
    raise UsageError(f"{option} {text}: cheapconv measures on cpu or cuda only. Use --device cpu or cuda.")


def check_input_size(model, size: tuple[int, int, int] | None, *, what: str = "The model") -> None:
    """Fail with a usage error (exit 2) when ``model`` cannot run on a ``--input-size`` the user gave.

    One forward pass of a single image in eval mode on a storage-less (meta) copy, so a size too large for
    memory is checked without allocating it (even under --dry-run); a real forward on a copy only for a
    model that cannot run on meta tensors, and only for an input of at most 2^28 elements."""
    if size is None:
        return
    from cheapconv.counting import check_input_shape, input_mismatch, shape_forward

    try:
        check_input_shape((1, *size))
    except UsageError as e:
        raise UsageError(f"--input-size {','.join(str(v) for v in size)}: {e}") from None
    try:
        with _quiet_fx():
            shape_forward(model, (1, *size))
    except Exception as e:  # noqa: BLE001 - any failure here is the input size's
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, UsageError):   # shape_forward's diagnosis: quote it without its own advice
            first = input_mismatch(model, (1, *size)) or first
        c, h, w = size
        native = getattr(model, "default_input_size", None) or \
            (getattr(model, "cheapconv_recipe", None) or {}).get("input_size")
        hint = f" (its own is {','.join(str(v) for v in native)})" if native else ""
        raise UsageError(f"{what} cannot run on --input-size {c},{h},{w}: {first}. Give the C,H,W the model "
                         f"expects{hint}, or leave --input-size out.") from None


class _quiet_fx:
    """Within this block, torch.fx-generated code does not print its own traceback to stderr on an error (it
    still raises, and the command line turns the error into one message)."""

    def __enter__(self):
        self._undo = quiet_fx_errors()
        return self

    def __exit__(self, *exc):
        self._undo()
        return False


def quiet_fx_errors():
    """Stop torch.fx's generated-forward wrapper from printing a traceback before re-raising; returns a
    function that restores it. A no-op where torch.fx has no such wrapper."""
    try:
        from torch.fx import graph_module
    except Exception:  # noqa: BLE001 - torch missing or broken: nothing to quiet
        return lambda: None
    wrapped = getattr(graph_module, "_WrappedCall", None)
    original = wrapped.__dict__.get("__call__") if isinstance(wrapped, type) else None
    if original is None or getattr(original, "_cheapconv_quiet", False):
        return lambda: None

    def __call__(self, obj, *args, **kwargs):
        cls_call = getattr(self, "cls_call", None)
        if cls_call is not None:
            return cls_call(obj, *args, **kwargs)
        return super(self.cls, obj).__call__(*args, **kwargs)

    __call__._cheapconv_quiet = True
    wrapped.__call__ = __call__

    def undo() -> None:
        wrapped.__call__ = original

    return undo
