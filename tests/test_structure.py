"""The package's shape: one-way imports between layers, no cycles, no private names across modules, imports at
module level (a function imports only a heavy optional dependency), and a command line that imports the library
only when a command runs.

Read from the source with ``ast`` (nothing is imported), so the rules hold for every import: inside functions
and under ``if TYPE_CHECKING:`` too (an annotation that needs a type is a dependency on its module).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cheapconv"
CLI = ROOT / "cli"          # installed as cheapconv_cli

#: the layers, ground floor first: a module may import only from its own layer and the ones before it
LAYERS = [
    {"errors", "counting", "version", "threads", "progress", "registry", "formatting", "extensions", "bounded"},
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
    {"compression"},      # the teacher-aware selection under a measured budget uses everything below it
    {"__init__"},
    {"cli"},              # the command line (cli/, installed as cheapconv_cli) sits on top of everything
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*PACKAGE.rglob("*.py"), *CLI.glob("*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "cli":
            parts[0] = "cheapconv_cli"
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


OURS = ("cheapconv", "cheapconv_cli")


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every cheapconv or cheapconv_cli import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in OURS:
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.append((full, None) if full in MODULES else (target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] in OURS]
    return found


def _packages_run_by(target: str, importer: str) -> set[str]:
    """The packages whose ``__init__`` importing ``target`` runs first (``a.b`` for ``a.b.c``), those that
    ``importer`` is inside aside (they are being imported already)."""
    parts = target.split(".")
    outer = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {p for p in outer if p in MODULES and not (importer == p or importer.startswith(p + "."))}


def _graph() -> dict[str, set[str]]:
    """module -> the modules importing it runs: what it imports, and the packages' ``__init__`` on the way."""
    graph = {}
    for m in MODULES:
        targets = {t for t, _ in _imports(m) if t in MODULES}
        graph[m] = {x for t in targets for x in {t, *_packages_run_by(t, m)} if x != m}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] == "cheapconv_cli":
        return LAYER_OF["cli"]
    return LAYER_OF["__init__"] if len(parts) == 1 else LAYER_OF[parts[1]]


def test_every_module_has_a_layer():
    library = [m for m in MODULES if m.split(".")[0] == "cheapconv"]
    assert all(len(m.split(".")) == 1 or m.split(".")[1] in LAYER_OF for m in library), \
        sorted(m for m in library if len(m.split(".")) > 1 and m.split(".")[1] not in LAYER_OF)


def test_no_import_cycle():
    """No two modules import each other, even through an annotation under ``TYPE_CHECKING``, a function-level
    import or a package's ``__init__``: the thing both need belongs in the module below them."""
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


# ------------------------------------------------------------------------ where imports stand

#: optional dependencies (not in install_requires), slow to import: the only modules a library function may
#: import, each import with a one-line comment saying why (the feature that needs it)
OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "matplotlib", "torchvision", "timm", "safetensors", "numpy", "scipy",
            "torch.utils.tensorboard", "PIL")
#: what the command line imports when a command runs (a library module that loads none of HEAVY may be
#: imported at start: the ground floor, the registries, the config dataclasses its options come from)
AT_RUN_TIME = ("cheapconv", "torch")
#: what ``cheapconv --help`` must never load
HEAVY = ("torch", *OPTIONAL)
#: (module, imported package) -> why that module imports it inside a function
FUNCTION_LEVEL = {
    ("cheapconv_cli.main", "click"): "Ctrl-C while the command line loads must be a clean exit 130: main() "
                                     "imports everything but the standard library inside its try",
    ("cheapconv_cli.main", "typer"): "as click",
    ("cheapconv_cli.main", "cheapconv_cli"): "as click (the command modules import typer and rich)",
    ("cheapconv_cli.main", "importlib"): "as click (finds typer's own copy of click's exceptions)",
}


def _is(module: str, names) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def _statements(module: str) -> list[tuple[ast.stmt, str, bool, bool, ast.AST]]:
    """(import statement, imported module, inside a function, under ``TYPE_CHECKING``, the statement holding it)
    for every import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []

    def walk(node, in_function, typing_only):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                target = (".".join(base[:len(base) - child.level + 1] + ([child.module] if child.module else []))
                          if child.level else child.module or "")
                found.append((child, target, in_function, typing_only, node))
            elif isinstance(child, ast.Import):
                found.extend((child, a.name, in_function, typing_only, node) for a in child.names)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                 typing_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)))

    walk(tree, False, False)
    return found


def _says_why(lines: list[str], node: ast.stmt, parent: ast.AST) -> bool:
    """A comment other than a bare ``noqa`` on the import's line, the line above it or its ``try:`` line."""
    def why(line: str) -> bool:
        comment = line.partition("#")[2].strip()
        words = comment.split(" - ", 1)[1] if comment.startswith("noqa") and " - " in comment else comment
        return bool(words) and not words.startswith("noqa")

    at = [node.lineno - 1, node.lineno - 2]
    if isinstance(parent, ast.Try):
        at.append(parent.lineno - 1)
    return any(why(lines[i]) for i in at if i >= 0)


def test_functions_import_only_heavy_optional_dependencies():
    """An import inside a function hides a dependency and saves nothing when its module is loaded anyway: in the
    library only an optional, slow dependency is imported there (with its reason); the command line imports the
    library and torch there, when a command runs; everything else is imported at module level."""
    wrong = []
    for module, path in sorted(MODULES.items()):
        lines = path.read_text().splitlines()
        for node, target, in_function, _, parent in _statements(module):
            if not in_function:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno} imports {target}"
            if module.startswith("cheapconv_cli") and _is(target, AT_RUN_TIME) and not _is(target, ["cheapconv_cli"]):
                continue
            if (module, target.split(".")[0]) in FUNCTION_LEVEL:
                continue
            if not _is(target, OPTIONAL):
                wrong.append(f"{where} inside a function: import it at module level (if that makes a cycle, move "
                             "what both modules need to the module below them)")
            elif not _says_why(lines, node, parent):
                wrong.append(f"{where}, an optional dependency, inside a function without a comment saying why")
    assert not wrong, "\n".join(wrong)


def _at_start(module: str) -> list[str]:
    """What importing ``module`` imports at once: its module-level imports (``TYPE_CHECKING`` aside), the
    submodules named by ``from package import module``, and the packages whose ``__init__`` runs on the way."""
    found = []
    for node, target, in_function, typing_only, _ in _statements(module):
        if in_function or typing_only:
            continue
        names = node.names if isinstance(node, ast.ImportFrom) else []
        submodules = [f"{target}.{a.name}" for a in names if f"{target}.{a.name}" in MODULES]
        found += [*sorted(_packages_run_by(target, module)), target, *submodules]
    return found


def _heavy_chain(module: str, seen: set[str] | None = None) -> list[str] | None:
    """The import chain by which importing ``module`` loads one of :data:`HEAVY`, or None where it loads none."""
    seen = set() if seen is None else seen
    seen.add(module)
    for target in _at_start(module):
        if _is(target, HEAVY):
            return [module, target]
        if target in MODULES and target not in seen:
            chain = _heavy_chain(target, seen)
            if chain:
                return [module, *chain]
    return None


def test_the_command_line_imports_the_library_only_when_a_command_runs():
    """``cheapconv --help`` must not load torch: at start the command modules import typer, rich, the standard
    library and library modules that load none of :data:`HEAVY` (the ground floor, the registries, the config
    dataclasses the options come from); whatever loads torch is imported by the command that runs."""
    eager = [f"{MODULES[m].relative_to(ROOT)} loads {chain[-1]} at start: " + " -> ".join(chain)
             for m in sorted(MODULES) if m.startswith("cheapconv_cli") and (chain := _heavy_chain(m))]
    assert not eager, "\n".join(eager)


# --- benchmarks/: one subpackage per study, public cheapconv names only --------------------------------------
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _public_exports() -> dict[str, set[str]]:
    """What each public import path exports: ``cheapconv`` and every package under it, their ``__all__``, and
    the packages inside them."""
    root = BENCHMARKS.parent / "cheapconv"
    paths = sorted(".".join(("cheapconv", *p.parent.relative_to(root).parts)) for p in root.rglob("__init__.py"))
    exports = {p: set(importlib.import_module(p).__all__) for p in paths}
    for p in paths:
        parent, _, name = p.rpartition(".")
        if parent:
            exports[parent].add(name)
    return exports


def _attribute_chain(node: ast.Attribute) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def _benchmark_imports(path: Path) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(cheapconv uses as (import path, name or None), benchmarks modules imported) of one benchmark file: every
    import, lazy ones included, and every ``cheapconv.x.y`` attribute chain."""
    package = ".".join(path.relative_to(BENCHMARKS.parent).parent.parts)
    uses, local = [], []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] == "cheapconv":
                uses += [(base, a.name) for a in node.names]
            elif base.split(".")[0] == "benchmarks":
                local += [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            uses += [(a.name, None) for a in node.names if a.name.split(".")[0] == "cheapconv"]
            local += [a.name for a in node.names if a.name.split(".")[0] == "benchmarks"]
        elif isinstance(node, ast.Attribute) and (chain := _attribute_chain(node)) and chain[0] == "cheapconv":
            uses.append((".".join(chain), "..."))
    return uses, local


def _not_public(use: tuple[str, str | None], exports: dict[str, set[str]]) -> bool:
    target, name = use
    if name == "...":   # an attribute chain: packages down to one exported name
        parts, current = target.split("."), "cheapconv"
        for part in parts[1:]:
            if f"{current}.{part}" in exports:
                current = f"{current}.{part}"
                continue
            return part not in exports[current]
        return False
    if name is None:
        return target not in exports
    return target not in exports or (name not in exports[target] and f"{target}.{name}" not in exports)


BENCHMARK_FILES = sorted(BENCHMARKS.rglob("*.py"))


def test_benchmarks_use_only_public_cheapconv_names():
    """A study is a user of the library: it imports what ``cheapconv`` and its packages export, nothing deeper."""
    exports = _public_exports()
    deep = sorted({f"{p.relative_to(BENCHMARKS.parent)}: {target}" + (f" ({name})" if name and name != "..." else "")
                   for p in BENCHMARK_FILES for target, name in _benchmark_imports(p)[0]
                   if _not_public((target, name), exports)})
    assert not deep, "\n".join(deep)


def test_studies_import_only_themselves_and_common():
    """No study imports another; ``benchmarks.common`` imports no study."""
    crossing = []
    for p in BENCHMARK_FILES:
        parts = p.relative_to(BENCHMARKS).parts
        own = f"benchmarks.{parts[0]}" if len(parts) > 1 else "benchmarks"
        allowed = (own,) if own == "benchmarks.common" else (own, "benchmarks.common")
        crossing += [f"{p.relative_to(BENCHMARKS.parent)} imports {m}" for m in _benchmark_imports(p)[1]
                     if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert not crossing, "\n".join(crossing)


def test_the_library_never_imports_the_benchmarks():
    found = []
    for p in [*(BENCHMARKS.parent / "cheapconv").rglob("*.py"), *(BENCHMARKS.parent / "cli").rglob("*.py")]:
        for n in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                     [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level else [])
            found += [f"{p.relative_to(BENCHMARKS.parent)} imports {x}" for x in names
                      if x.split(".")[0] == "benchmarks"]
    assert not found, "\n".join(found)
