"""The README's worked example (examples/pretrained_teacher.sh) end to end from the command line, small: an
ImageFolder in, a random-weight timm network whose weights file names its tensors differently standing in for
pretrained weights, fine-tuned with a new head, cheapened, reconstructed from the saved student, distilled,
exported to folded ONNX, the ONNX file evaluated with its recorded preprocessing, and timed against the teacher in
ONNX Runtime. CI also runs it against a plain (non-editable) install of the wheel (.ci/wheel-check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pretrained_teacher.sh"


@pytest.mark.slow
@pytest.mark.parametrize(("model", "block", "mean"), [("timm:tf_efficientnet_lite0", "LRp(0.5)", [0.5, 0.5, 0.5]),
                                                      ("timm:resnet18", "G(4)", [0.485, 0.456, 0.406])])
def test_worked_example_runs_from_the_cli(tmp_path, model, block, mean):
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    env = {**os.environ, "MODEL": model, "BLOCK": block, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "by position (their names differ" in log, "the renamed weights were not paired by position"
    assert "replaced the classifier head" in log
    assert "→" in log and "before the first step → after the last" in log       # distill's start and end
    assert "check passed" in log and "evaluating the deployed file itself" in log
    for name in ("teacher.pt", "student.pt", "student-init.pt", "student-trained.pt", "student.onnx"):
        assert (tmp_path / name).is_file(), name
    card = json.loads((tmp_path / "student.onnx.json").read_text())
    assert card["input_shape"][1:] == [3, 32, 32] and card["classes"] == ["bag", "shirt", "shoe"]
    assert card["mean"] == pytest.approx(mean)    # the teacher's own normalisation (timm's pretrained_cfg)
