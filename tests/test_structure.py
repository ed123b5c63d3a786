"""The package's shape: one-way imports between layers, no cycles, no private names across modules.

Read from the source with ``ast`` (nothing is imported), so the rules hold for lazy imports inside
functions too; imports under ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cheapconv"

#: the layers, ground floor first: a module may import only from its own layer and the ones before it
LAYERS = [
    {"errors", "counting", "version", "threads", "progress", "registry", "extensions"},
    {"blocks"},
    {"models"},
    {"fx"},
    {"surgery"},
    {"store"},
    {"data"},
    {"reconstruction"},
    {"train"},
    {"measure"},
    {"blockswap"},
    {"sweeper", "sweep_report", "exporter", "plots"},
    {"__init__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every cheapconv import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cheapconv":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.append((full, None) if full in MODULES else (target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "cheapconv"]
    return found


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYER_OF["__init__"] if len(parts) == 1 else LAYER_OF[parts[1]]


def test_every_module_has_a_layer():
    assert all(len(m.split(".")) == 1 or m.split(".")[1] in LAYER_OF for m in MODULES), \
        sorted(m for m in MODULES if len(m.split(".")) > 1 and m.split(".")[1] not in LAYER_OF)


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_imports_go_down_the_layers():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in _graph().items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_private_name_crosses_modules():
    crossing = [f"{m} imports {name} from {t}" for m in MODULES for t, name in _imports(m)
                if name and name.startswith("_") and not name.startswith("__")]
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"))
def test_packages_declare_exports_that_do_not_shadow_modules(package):
    mod = importlib.import_module(package)
    assert isinstance(getattr(mod, "__all__", None), list), f"{package} declares no __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.__all__ names {name!r}, which it does not define"
    children = {info.name for info in pkgutil.iter_modules(mod.__path__)}
    clashes = sorted(n for n in mod.__all__ if n in children and not hasattr(getattr(mod, n), "__path__")
                     and getattr(getattr(mod, n), "__name__", "") != f"{package}.{n}")
    assert not clashes, f"{package} exports {clashes}, which shadow modules of the same name beside them"
