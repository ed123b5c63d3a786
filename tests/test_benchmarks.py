"""benchmarks/ as a package: every study imports as a module and runs as ``python -m benchmarks.<study>``,
results/ holds data only, the pages' links and anchors resolve, and nothing edits ``sys.path``.
(Which names the studies may import is tests/test_structure.py's rule.)"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
#: folders of the benchmarks that are not studies run with ``python -m``
NOT_STUDIES = {"common", "gpu", "results"}


def test_every_benchmark_module_imports_as_a_module():
    """Imported by name, as the tests and the studies import each other's parts: no path juggling needed."""
    names = [m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks.") if ".__main__" not in m.name]
    assert "benchmarks.reproduce.study" in names and "benchmarks.common.records" in names
    for name in names:
        importlib.import_module(name)


STUDIES = sorted(p.name for p in BENCHMARKS.iterdir()
                 if p.is_dir() and p.name not in NOT_STUDIES and not p.name.startswith(("_", ".")))


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_runs_as_a_module(study):
    assert (BENCHMARKS / study / "__init__.py").is_file() and (BENCHMARKS / study / "__main__.py").is_file()


def test_a_study_runs_from_the_repository_root_without_an_install_path():
    """``python -m benchmarks.perf`` lists the performance studies (it imports nothing heavy)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.perf"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "python -m benchmarks.perf.latency_table" in out


def test_results_hold_data_only():
    code = [p.name for p in (BENCHMARKS / "results").rglob("*") if p.suffix in (".py", ".sh", ".ipynb")]
    assert not code, code


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(BENCHMARKS.rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_pages_resolve(page):
    """Every relative link of the README, docs/ and the benchmark pages names a file that exists, and an anchor
    that is one of its headings (the studies' pages kept the headings of the sections they took over)."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", page.read_text(), flags=re.S)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, broken


def _edits_sys_path(tree: ast.AST) -> bool:
    """A call of a ``sys.path`` method (insert, append, ...) or of pytest's ``monkeypatch.syspath_prepend``, or an
    assignment to ``sys.path`` or an item of it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and (ast.unparse(node.func.value) == "sys.path" or node.func.attr == "syspath_prepend"):
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AugAssign) else []
        if any(ast.unparse(t).startswith("sys.path") for t in targets):
            return True
    return False


def test_nothing_edits_sys_path():
    """Modules import each other by name (``python -m`` from the repository root, pytest's rootdir)."""
    folders = ("cheapconv", "cli", "benchmarks", "tests", "examples")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*.py")]
    found = [str(p.relative_to(ROOT)) for p in files if _edits_sys_path(ast.parse(p.read_text()))]
    assert not found, found


def test_the_committed_reproduction_page_is_what_its_results_render(tmp_path):
    """The page is generated: rendered again from the committed results (into a copy of the layout, so its
    relative paths are the same), it is byte for byte the committed page."""
    from benchmarks.reproduce import report

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    for name in ("reproduce.jsonl", "fisher_check.json", "fisher_check_wrn_40_2.json"):
        (results / name).write_bytes((BENCHMARKS / "results" / name).read_bytes())
    page = tmp_path / "benchmarks" / "reproduce" / "README.md"
    page.parent.mkdir()
    report.render(results / "reproduce.jsonl", page)
    assert page.read_bytes() == (BENCHMARKS / "reproduce" / "README.md").read_bytes()


@pytest.mark.parametrize("module,results", [("zoo", "zoo-results.jsonl"), ("dense", "dense-results.jsonl")])
def test_the_coverage_tables_are_what_their_results_render(module, results, capsys):
    """docs/coverage.md holds the tables ``--render`` prints from the committed results, verbatim."""
    study = importlib.import_module(f"benchmarks.coverage.{module}")
    assert study.main(["--render", str(ROOT / "docs" / "data" / results)]) == 0
    out = capsys.readouterr().out
    assert out.strip() and out in (ROOT / "docs" / "coverage.md").read_text()
