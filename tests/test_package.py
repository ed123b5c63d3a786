"""Package-level contracts: a light import, explicit exports, a command line that starts without torch, the
console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cheapconv

#: optional dependencies, slow to import: loaded only by the feature that needs them
OPTIONAL = ("torchvision", "timm", "onnx", "onnxruntime", "matplotlib", "tensorboard", "safetensors")
#: what a ``--help`` must never load
HEAVY = ("torch", *OPTIONAL, "numpy")


def _loaded_after(code: str) -> list[str]:
    """The modules of ``HEAVY`` (and typer, the command line's) that running ``code`` in a fresh interpreter
    imported."""
    check = f"{code}\nimport sys\nprint(','.join(m for m in {(*HEAVY, 'typer')!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().splitlines()[-1].split(",") if m] if out.stdout.strip() else []


def test_import_cheapconv_imports_nothing_heavy():
    """``import cheapconv`` (and its ground floor: errors, registry) imports no torch: each public name is
    imported from its module when first used."""
    assert _loaded_after("import cheapconv, cheapconv.errors, cheapconv.registry") == []


def test_every_public_name_imports_no_optional_dependency():
    """Using every public name loads torch and the library, but no optional dependency: torchvision and timm
    when a model name needs them, onnx when exporting, matplotlib when plotting, and so on."""
    loaded = _loaded_after("import cheapconv\nfor name in cheapconv.__all__: getattr(cheapconv, name)")
    assert "torch" in loaded and not set(loaded) & {*OPTIONAL, "typer"}, f"the public names pulled in: {loaded}"


def test_lazy_names_are_the_modules_own():
    """``from cheapconv import X``, ``cheapconv.X`` and ``dir(cheapconv)`` see the same objects as the modules
    that define them; a submodule is reachable after a bare ``import cheapconv``."""
    from cheapconv import cheapen
    from cheapconv.surgery.rewrite import cheapen as defined

    assert cheapen is defined is cheapconv.cheapen
    assert set(cheapconv.__all__) <= set(dir(cheapconv))
    assert cheapconv.measure.profile is cheapconv.profile
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        cheapconv.not_a_name  # noqa: B018


def test_every_help_imports_no_torch():
    """``cheapconv --help`` and every command's ``--help`` start without torch or any other heavy module: the
    command modules import the library only when a command runs (one fresh interpreter, the commands in turn)."""
    code = """
import contextlib, io, sys
import typer.main
from cheapconv_cli.main import main
from cheapconv_cli.app import app

def run(args):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0, args
    return [m for m in HEAVY if m in sys.modules]

assert run(["--help"]) == [], ("--help", run(["--help"]))
commands = sorted(typer.main.get_command(app).commands)
assert len(commands) > 5, commands
for name in commands:
    loaded = run([name, "--help"])
    assert loaded == [], f"cheapconv {name} --help imported {loaded}"
print(len(commands))
"""
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_public_names_exist():
    for name in cheapconv.__all__:
        assert hasattr(cheapconv, name), name
    for name in ("cheapen", "plan", "count_params", "count_macs", "create_model", "save", "load", "record"):
        assert callable(getattr(cheapconv, name))


def test_wheel_holds_every_package(tmp_path):
    """A non-editable install ships exactly what the wheel holds: every package of the source tree must be in it
    (a hand-written package list once left cheapconv.reconstruction out, and every plain install failed)."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # built from a copy: a build/ folder left in the checkout by an earlier build would put stale modules in the wheel
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(root / name, tree / name)
    for name in ("cheapconv", "cli"):
        shutil.copytree(root / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(tmp_path), str(tree)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("cheapconv-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    source = {str(p.relative_to(root)) for p in (root / "cheapconv").rglob("*.py") if "__pycache__" not in p.parts}
    source |= {"cheapconv_cli/" + p.name for p in (root / "cli").glob("*.py")}
    assert source - shipped == set(), f"missing from the wheel: {sorted(source - shipped)}"


def test_startup_benchmark_times_whole_processes_in_turn(monkeypatch):
    """benchmarks/perf/cli_startup.py times each command as a whole process, alternating A B, B A, ... after one
    untimed run of each; a command that fails stops it rather than giving a figure."""
    from benchmarks.perf import cli_startup

    quick = cli_startup.interleaved({"a": [sys.executable, "-c", "pass"], "b": [sys.executable, "-c", "pass"]}, 2)
    assert {k: len(v) for k, v in quick.items()} == {"a": 2, "b": 2} and all(t > 0 for v in quick.values() for t in v)
    with pytest.raises(SystemExit, match="exited with 3"):
        cli_startup.time_process([sys.executable, "-c", "raise SystemExit(3)"])
    order = []
    monkeypatch.setattr(cli_startup, "time_process", lambda argv: order.append(argv[0]) or 1.0)
    cli_startup.interleaved({"a": ["A"], "b": ["B"]}, 4)
    assert order == ["A", "B", "A", "B", "B", "A", "A", "B", "B", "A"]
