"""Command-line options made from config dataclasses, and help texts that list a registry's names.

:func:`field_option` turns a dataclass field into a typer option: the option's name is the field's
(``--batch-size`` for ``batch_size``), its type the field's, its help the field's ``metadata["help"]`` and its
smallest value ``metadata["min"]``, so a new field is a new option with no second edit. Booleans are flags
(``--nesterov``; ``--progress/--no-progress`` where the default is on or open), tuples are comma-separated
(``--milestones 0.3,0.6,0.8``). An option's default is the field's; :func:`given` tells the values typed on the
command line from the defaults (what a resumed run needs to tell its own settings from the checkpoint's).

:class:`Listing` is an option whose help ends with a registry's names, read when the command line is built, so
that entries added at run time (a plug-in's, a test's) are listed too.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer.models import OptionInfo

from cheapconv.extensions import DATASETS, RUNTIMES

__all__ = ["Derived", "Listing", "datasets_listed", "field_option", "given", "round_option", "runtime_option"]


@dataclass(frozen=True)
class Derived:
    """One option made from a dataclass field: the command's ``parameter`` (named as the field) and ``parse``,
    which turns what typer parsed into the field's value."""

    name: str
    parameter: inspect.Parameter
    parse: Callable[[Any], Any]


class Listing(OptionInfo):
    """A typer option whose help is ``text()``, called each time the command line is built (see the module
    docstring)."""

    def __init__(self, text: Callable[[], str], **kwargs: Any) -> None:
        self._text = text
        super().__init__(**kwargs)

    @property
    def help(self) -> str:  # type: ignore[override]
        return self._text()

    @help.setter
    def help(self, value: str | None) -> None:   # OptionInfo.__init__ sets it; the text is computed instead
        pass


def _base(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None was allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def field_option(field: dataclasses.Field, hint: Any, *, decls: Sequence[str] | None = None,
                 note: str = "") -> Derived:
    """The option for ``field`` (whose resolved type is ``hint``): see the module docstring. ``decls``: the
    option's names (default ``--field-name``); ``note``: a sentence added to the help."""
    decls = tuple(decls or ("--" + field.name.replace("_", "-"),))
    value = field.default
    help = " ".join(t for t in (field.metadata.get("help", ""), note) if t)
    base, optional = _base(hint)
    if base is bool:
        if value is False:
            info = typer.Option(False, *decls, help=help)
        else:   # on by default, or open (None): both spellings
            info = typer.Option(value, *(f"{d}/--no-{d[2:]}" if d.startswith("--") else d for d in decls), help=help)
        return Derived(field.name, _param(field.name, bool | None if optional else bool, info), lambda v: v)
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        info = typer.Option(",".join(map(str, value)) or None, *decls, help=help + " Comma-separated.")
        return Derived(field.name, _param(field.name, str | None, info), lambda v: _items(v, item))
    bounds = {"min": field.metadata["min"]} if "min" in field.metadata else {}
    info = typer.Option(value, *decls, help=help, **bounds)
    return Derived(field.name, _param(field.name, base | None if optional else base, info), lambda v: v)


def _param(name: str, annotation: Any, info: OptionInfo) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info, annotation=annotation)


def _items(text: str | None, item: type) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(item(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {item.__name__} values, got {text!r}") from None


def given(derived: Sequence[Derived], values: dict[str, Any], context: typer.Context) -> dict[str, Any]:
    """The parsed values of the ``derived`` options typed on the command line (all are popped from ``values``;
    those left at their defaults are left out, so that whoever builds the config applies its own). ``context``:
    the command's (a parameter annotated ``typer.Context`` receives it)."""
    found = {d.name: values.pop(d.name) for d in derived}
    typed = {d.name for d in derived
             if getattr(context.get_parameter_source(d.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    return {d.name: d.parse(found[d.name]) for d in derived if d.name in typed}


def runtime_option(what: str = "Where latency is measured", more: str = "") -> Listing:
    """``--runtime`` (default ``torch``), its help listing the runtimes (:data:`~cheapconv.extensions.RUNTIMES`)."""
    return Listing(lambda: f"{what}: {RUNTIMES.describe()}; the model is exported (compiled) once and checked "
                   f"against eager torch before it is timed.{more}", default="torch", param_decls=("--runtime",))


def round_option() -> Any:
    """``--round 8|16``: every block's inner widths (ranks, bottleneck widths, channels per group) rounded to
    multiples of it, as ``@8`` after a spec does."""
    return typer.Option(None, "--round", metavar="8|16",
                        help="Round every block's inner widths (ranks, bottleneck widths, channels per group) to "
                             "multiples of this, where int8 and tensor-core kernels want them; the same as @8 after "
                             "a spec (B(2)@8). Dense and depthwise convs stay as they are.")


def datasets_listed() -> str:
    """How a dataset is named, for help texts, with the names of :data:`~cheapconv.extensions.DATASETS`."""
    return (f"NAME or NAME:ARGUMENT, NAME one of {DATASETS.describe()} (e.g. imagefolder:PATH, "
            "synthetic:1x28x28:10:256; an unknown name lists what each takes)")
