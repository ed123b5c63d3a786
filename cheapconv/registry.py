"""Extension points as registries: one file per entry, found by its file name, loaded when first used.

A :class:`Registry` belongs to a package whose modules are its entries (``cheapconv/data/sets/``,
``cheapconv/train/objectives/``, ``cheapconv/measure/backends/``, say). Adding an entry is adding one file:

* the file's name is the entry's name (underscores read as hyphens where the registry says so:
  ``fashion_mnist.py`` -> ``fashion-mnist``), so :meth:`Registry.names` lists every entry from the folder
  *without importing anything*: help texts and error messages list the names, and ``cheapconv --help`` stays
  fast (the entries import torch);
* the file registers its entry when it is imported (``@DATASETS.register("fashion-mnist")``), and
  :meth:`Registry.get` imports it on first use, so a command loads only what it runs;
* entries added at run time (:meth:`Registry.add`: a test's toy entry, a user's plug-in) join the same list.

Example::

    LOSSES = Registry("loss", package="cheapconv.train.objectives")

    # cheapconv/train/objectives/at.py
    @LOSSES.register("at", help="attention transfer")
    class AttentionTransfer: ...

    LOSSES.names()        # ('at', 'ce', 'kd', ...) from the file names; nothing imported
    LOSSES.get("at")      # imports objectives/at.py, returns the class
    LOSSES.get("atx")     # UsageError: Unknown loss 'atx'. Valid: at, ce, kd. Did you mean 'at'?

This module is on the ground floor: it imports nothing else from cheapconv but :mod:`cheapconv.errors`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .errors import UsageError

__all__ = ["Entry", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its ``name``, the object, a one-line ``help`` and other spellings (``aliases``)."""

    name: str
    obj: T
    help: str = ""
    aliases: tuple[str, ...] = ()


class Registry(Generic[T]):
    """Names -> entries of one ``kind`` (used in messages: "Unknown dataset 'x'").

    ``package`` (dotted) holds one module per entry, named after it; ``hyphens=True`` spells a module
    ``fashion_mnist`` as the entry ``fashion-mnist``; ``spellings`` names the entries whose names hold a character
    no file name can (``{"at_kd": "at+kd"}``: the module ``at_kd`` is the entry ``at+kd``). Modules whose names
    start with ``_`` are helpers, not entries. Without ``package`` the registry holds only what is added with
    :meth:`register`/:meth:`add`.
    """

    def __init__(self, kind: str, *, package: str | None = None, hyphens: bool = False,
                 spellings: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.package = package
        self.hyphens = hyphens
        self.spellings = dict(spellings or {})
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------ filling

    def register(self, name: str, *, help: str = "", aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: register the decorated object (a class or a function) as ``name``."""

        def decorate(obj: T) -> T:
            self.add(name, obj, help=help, aliases=aliases)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, help: str = "", aliases: tuple[str, ...] = ()) -> None:
        """Register ``obj`` as ``name``. A name (or alias) registered twice for different objects is an error:
        two files claiming one name would otherwise depend on import order."""
        for key in (name, *aliases):
            owner = self._aliases.get(key, key)
            held = self._entries.get(owner)
            if held is not None and held.obj is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice ({held.obj!r} and {obj!r}).")
        self._entries[name] = Entry(name, obj, help, tuple(aliases))
        for alias in aliases:
            self._aliases[alias] = name

    def remove(self, name: str) -> None:
        """Forget an entry added at run time (a test's toy entry); entries of the package come back on next use."""
        entry = self._entries.pop(name, None)
        for alias in entry.aliases if entry else ():
            self._aliases.pop(alias, None)

    # ------------------------------------------------------------------ reading

    def names(self) -> tuple[str, ...]:
        """Every entry's name, sorted: the package's modules (found by file name, not imported) and the entries
        added at run time."""
        return tuple(sorted({*self._module_names(), *self._entries}))

    def describe(self, *, last: str = "or") -> str:
        """The names as prose for help texts: ``"at, ce or kd"``."""
        names = self.names()
        if len(names) < 2:
            return names[0] if names else "(none)"
        return f"{', '.join(names[:-1])} {last} {names[-1]}"

    def get(self, name: str) -> T:
        """The object registered as ``name`` (or an alias), importing its module on first use. An unknown name
        is a :class:`~cheapconv.errors.UsageError` that lists the valid names and suggests close ones."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` registered as ``name`` (see :meth:`get`)."""
        key = self._aliases.get(name, name)
        if key not in self._entries and key in self._module_names():
            importlib.import_module(f"{self.package}.{self._module_of(key)}")
            key = self._aliases.get(name, name)
        if key not in self._entries and self.package is not None:
            # not an entry's name: an alias is known only once the file that declares it is imported
            for other in self._module_names():
                importlib.import_module(f"{self.package}.{self._module_of(other)}")
            key = self._aliases.get(name, name)
        if key not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=2, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"Unknown {self.kind} {name!r}. Valid: {', '.join(self.names())}.{hint}")
        return self._entries[key]

    def entries(self) -> list[Entry[T]]:
        """Every entry, each module imported: for code that needs them all (tests parametrised over the registry)."""
        return [self.entry(name) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._aliases or name in self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    # ------------------------------------------------------------------ the package's files

    def _module_names(self) -> list[str]:
        if self.package is None:
            return []
        found = (m.name for m in pkgutil.iter_modules(self._folders()))
        return [self._entry_name(m) for m in found if not m.startswith("_")]

    def _folders(self) -> list[str]:
        """Where the package's files are, found without importing it (nor its parents, whose ``__init__`` may
        import torch): cheapconv's own packages by path, any other package by its import spec."""
        head, _, rest = self.package.partition(".")
        if head == __name__.partition(".")[0]:
            return [str(Path(__file__).resolve().parent.joinpath(*rest.split(".")))]
        spec = importlib.util.find_spec(self.package)
        return list(spec.submodule_search_locations or []) if spec is not None else []

    def _entry_name(self, module: str) -> str:
        if module in self.spellings:
            return self.spellings[module]
        return module.replace("_", "-") if self.hyphens else module

    def _module_of(self, name: str) -> str:
        spelled = next((m for m, n in self.spellings.items() if n == name), None)
        if spelled is not None:
            return spelled
        return name.replace("-", "_") if self.hyphens else name
