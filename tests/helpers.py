"""Small helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from cheapconv import Callback


def package_from_folder(name: str, folder: Path, monkeypatch) -> ModuleType:
    """A package ``name`` whose modules are the files of ``folder``, importable by name (``name.module``) without
    touching ``sys.path``: its spec names ``folder`` as its search location. It and its submodules leave
    ``sys.modules`` when the test ends (through ``monkeypatch``)."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    package = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, package)
    for module in Path(folder).glob("*.py"):   # the submodules a test imports are dropped afterwards too
        monkeypatch.delitem(sys.modules, f"{name}.{module.stem}", raising=False)
    return package


def module_from_file(name: str, path: Path, monkeypatch) -> ModuleType:
    """The module in ``path``, executed and importable as ``name`` for the test, without touching ``sys.path``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


class StopAt(Callback):
    """Ask the run to stop after step ``step`` (as Ctrl-C or a time limit would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, run) -> None:
        if run.step == self.step:
            run.request_stop()
