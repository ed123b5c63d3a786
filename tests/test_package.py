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
