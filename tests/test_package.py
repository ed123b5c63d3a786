"""Package-level contracts: a light import, explicit exports, the console script."""

from __future__ import annotations

import subprocess
import sys

import cheapconv


def test_import_cheapconv_imports_torch_only():
    code = ("import sys, cheapconv; heavy = [m for m in ('torchvision', 'timm', 'onnx', 'onnxruntime', "
            "'matplotlib', 'typer', 'rich', 'safetensors') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import cheapconv pulled in: {out.stdout.strip()}"


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
