"""``python -m benchmarks.perf``: the performance studies, one line each (read from their docstrings, nothing
imported), and how to run one."""

import ast
import pkgutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def studies() -> dict[str, str]:
    """Module name -> the first line of its docstring, for every study module beside this file."""
    found = {}
    for info in pkgutil.iter_modules([str(HERE)]):
        if not info.name.startswith("_"):
            doc = ast.get_docstring(ast.parse((HERE / f"{info.name}.py").read_text())) or ""
            found[info.name] = doc.split("\n")[0]
    return found


if __name__ == "__main__":
    for name, line in sorted(studies().items()):
        print(f"python -m benchmarks.perf.{name:<20} {line}")
    print("\n(--help on any of them lists its options)")
