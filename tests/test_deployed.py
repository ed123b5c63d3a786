"""``cheapconv evaluate`` on the deployed file itself (ONNX in onnxruntime, pt2 in torch.export), fed as the card
that ``export`` wrote beside it says: the same figures as the model file it came from, and clear refusals where a
deployed file cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cheapconv.errors import FileFormatError, UsageError
from cheapconv.store.deployed import load_deployed
from cheapconv_cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tree(root: Path) -> str:
    """Two classes of small PNGs (train/ and val/), different enough in colour that a model's figures are not all
    equal by chance."""
    image = pytest.importorskip("PIL.Image")
    pytest.importorskip("torchvision")
    for split in ("train", "val"):
        for k, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for i in range(6):
                image.new("RGB", (30, 24), color=(200 * k, 20 * i, 90 + 10 * i)).save(root / split / name / f"{i}.png")
    return f"imagefolder:{root}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny WRN trained two steps on the folder at 24×24 (so its file records a preprocessing)."""
    tmp = tmp_path_factory.mktemp("deployed")
    data = _tree(tmp / "images")
    model = tmp / "t.pt"
    assert main(["train", "wrn_10_1", "--data", data, "--image-size", "24", "--max-steps", "2", "-b", "4",
                 "--no-progress", "-o", str(model)]) == 0
    return tmp, data, model


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_evaluate_deployed_file_matches_its_model_file(trained, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    tmp, data, model = trained
    deployed = tmp / f"t.{fmt}"
    assert run(capsys, "export", str(model), "--format", fmt, "-o", str(deployed))[0] == 0
    code, out_pt, _ = run(capsys, "evaluate", str(model), "--data", data, "--json")
    assert code == 0
    code, out_dep, err = run(capsys, "evaluate", str(deployed), "--data", data, "--json")
    assert code == 0, err
    assert "evaluating the deployed file itself" in err and "card beside it" in err
    a, b = json.loads(out_pt), json.loads(out_dep)
    assert a["n"] == b["n"] == 12 and a["top1"] == b["top1"]
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert b["runtime"] in ("onnxruntime (CPU)", "torch.export")


def test_deployed_model_without_card_runs_on_the_data_as_stored(trained, capsys):
    pytest.importorskip("onnxruntime")
    tmp, data, model = trained
    deployed = tmp / "bare.onnx"
    assert run(capsys, "export", str(model), "--format", "onnx", "-o", str(deployed))[0] == 0
    Path(f"{deployed}.json").unlink()
    net = load_deployed(deployed)
    assert net.cheapconv_preprocessing is None and net.format == "onnx"
    code, _, err = run(capsys, "evaluate", str(deployed), "--data", data, "--image-size", "24", "--json")
    assert code == 0 and "no FILE.json card" in err


def test_crafted_card_is_refused(trained, capsys):
    pytest.importorskip("onnxruntime")
    tmp, data, model = trained
    deployed = tmp / "crafted.onnx"
    assert run(capsys, "export", str(model), "--format", "onnx", "-o", str(deployed))[0] == 0
    card_path = Path(f"{deployed}.json")
    card = json.loads(card_path.read_text())
    card["resize"] = 10**9
    card_path.write_text(json.dumps(card))
    with pytest.raises(FileFormatError, match="refuses"):
        load_deployed(deployed)
    card_path.write_text("[1, 2]")
    with pytest.raises(FileFormatError, match="not a deployment card"):
        load_deployed(deployed)


def test_deployed_file_is_refused_where_a_model_file_is_needed(trained, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    tmp, _, model = trained
    deployed = tmp / "t2.onnx"
    assert run(capsys, "export", str(model), "--format", "onnx", "-o", str(deployed))[0] == 0
    code, _, err = run(capsys, "cheapen", str(deployed), "--block", "G(2)", "-o", str(tmp_path / "x.pt"))
    assert code == 2 and "deployed onnx file" in err and "exported from" in err
    with pytest.raises(UsageError, match="not a deployed file"):
        load_deployed(model)
