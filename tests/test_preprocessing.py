"""Every file records how it must be fed (``Preprocessing``): where the record comes from (pretrained weights'
metadata, the training data), that it survives save/load and cheapen, that evaluation, calibration and
``compare`` feed data as it says, and that ``export`` writes it beside the deployed file."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest
import torch

import cheapconv
from cheapconv.data import adapt_for_model, data_preprocessing, dataset_info, get_dataset
from cheapconv.errors import FileFormatError, UsageError
from cheapconv.models.preprocessing import Preprocessing, preprocessing_of
from cheapconv_cli.main import main

HALF = Preprocessing((3, 16, 16), (0.5,) * 3, (0.5,) * 3, resize=18, crop=16, interpolation="bicubic",
                     source="weights")


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tree(root: Path, classes=("a", "b"), per_class: int = 3, size: tuple[int, int] = (30, 24)) -> str:
    """An ImageFolder of small PNGs, train/ and val/: a few images per class, one colour per class."""
    image = pytest.importorskip("PIL.Image")
    pytest.importorskip("torchvision")
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                image.new("RGB", size, color=(200 * k, 20 * i, 90)).save(root / split / name / f"{i}.png")
    return f"imagefolder:{root}"


# ------------------------------------------------------------------------------------------- the record

def test_record_validates_describes_and_round_trips() -> None:
    assert Preprocessing.from_dict(HALF.to_dict()) == HALF
    assert HALF.describe() == "3×16×16: resize 18 bicubic, centre crop 16, RGB /255, mean 0.5,0.5,0.5 std 0.5,0.5,0.5"
    at32 = HALF.at_size(32)
    assert at32.input_size == (3, 32, 32) and at32.crop == 32 and at32.resize == 36 and at32.mean == HALF.mean
    padded = Preprocessing((1, 32, 32), (0.286,), (0.353,), pad_from=28, channel_order="L")
    assert "28×28 images zero-padded to 32×32" in padded.describe()
    bad = [{"input_size": [3, 100000, 16]}, {"mean": ["0.5", 0.5, 0.5]}, {"std": [0.5, 0.0, 0.5]},
           {"mean": [0.5]}, {"interpolation": "__import__"}, {"resize": 18.5}, {"channel_order": "L"},
           {"mean": [float("nan"), 0.5, 0.5]}, {"crop": None}, {"exec": "x"}, {"input_size": [True, 16, 16]}]
    for change in bad:
        with pytest.raises(UsageError, match="preprocessing"):
            Preprocessing.from_dict({**HALF.to_dict(), **change})


def test_record_survives_save_load_and_cheapen(tmp_path) -> None:
    teacher = cheapconv.create_model("wrn_10_1")
    teacher.cheapconv_preprocessing = HALF.at_size(32)
    student = cheapconv.cheapen(teacher, "G(2)")
    assert preprocessing_of(student) == HALF.at_size(32)
    assert preprocessing_of(cheapconv.cheapen(teacher, "G(2)", input_size=(3, 24, 24))) == HALF.at_size(24)
    path = tmp_path / "s.pt"
    cheapconv.save(student, path)
    assert cheapconv.read_recipe(path)["preprocessing"] == HALF.at_size(32).to_dict()
    loaded = cheapconv.load(path)
    assert loaded.cheapconv_preprocessing == HALF.at_size(32)
    assert preprocessing_of(cheapconv.cheapen(loaded, "LRp(0.5)")) == HALF.at_size(32)   # students of students too
    # what it is fed at is also the size it is measured and exported at by default
    assert cheapconv.models.default_input_size(loaded) == (3, 32, 32)


def test_deep_copies_of_students_keep_their_records(tmp_path) -> None:
    # Students are fx graph modules, whose deepcopy rebuilds them from the graph and dropped every cheapconv_*
    # attribute: a copy lost its recipe (no step-0 evaluation, no classes) and how it must be fed.
    teacher = cheapconv.create_model("wrn_10_1")
    teacher.cheapconv_preprocessing = HALF.at_size(32)
    student = cheapconv.cheapen(teacher, "G(2)", init="teacher")
    path = tmp_path / "s.pt"
    cheapconv.save(student, path)
    for model in (student, cheapconv.load(path)):
        twin = copy.deepcopy(model)
        assert preprocessing_of(twin) == HALF.at_size(32)
        assert twin.cheapconv_recipe == model.cheapconv_recipe
        assert twin.cheapconv_recipe is not model.cheapconv_recipe          # a copy, not a shared record
        assert twin.cheapconv_stages == model.cheapconv_stages
        assert twin.cheapconv_plan.to_dict() == model.cheapconv_plan.to_dict()
        cheapconv.save(twin, tmp_path / "twin.pt")                          # and it saves as the original did
        assert _unstamped(cheapconv.read_recipe(tmp_path / "twin.pt")) == _unstamped(cheapconv.read_recipe(path))


def _unstamped(recipe: dict) -> dict:
    """A saved recipe without the second it was saved at (two saves can fall in different seconds)."""
    assert "saved_at" in recipe
    return {k: v for k, v in recipe.items() if k != "saved_at"}


@pytest.mark.parametrize("change", [{"input_size": [3, 10**9, 10**9]}, {"mean": "0.5"}, {"std": [0, 0, 0]},
                                    {"interpolation": {"x": 1}}, {"unknown": 1}])
def test_a_crafted_record_is_refused(tmp_path, change) -> None:
    path = tmp_path / "s.pt"
    model = cheapconv.create_model("wrn_10_1")
    model.cheapconv_preprocessing = HALF.at_size(32)
    cheapconv.save(model, path)
    payload = torch.load(path, weights_only=True)
    recipe = json.loads(payload["recipe_json"])
    recipe["preprocessing"] = {**recipe["preprocessing"], **change}
    payload["recipe_json"] = json.dumps(recipe)
    torch.save(payload, path)
    with pytest.raises(FileFormatError, match="preprocessing record is invalid"):
        cheapconv.load(path)


def test_pretrained_weights_bring_their_preprocessing(tmp_path) -> None:
    pytest.importorskip("timm")
    # timm: pretrained_cfg (EfficientNet-Lite: mean/std 0.5, bicubic, crop_pct 0.875); offline, from a local file
    built = cheapconv.create_model("timm:tf_efficientnet_lite0")
    assert preprocessing_of(built) is None   # random weights: nothing to say, the training data decides
    weights = tmp_path / "w.pth"
    torch.save(built.state_dict(), weights)
    loaded = cheapconv.create_model("timm:tf_efficientnet_lite0", pretrained=weights)
    record = loaded.cheapconv_preprocessing
    cfg = built.pretrained_cfg
    assert record.mean == tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and record.std == tuple(cfg["std"])
    assert record.input_size == (3, 224, 224) and (record.resize, record.crop) == (256, 224)
    assert record.interpolation == "bicubic" and record.source == "weights"
    # torchvision classifier from a local file: the ImageNet defaults torchvision documents
    tv = cheapconv.create_model("squeezenet1_0")
    torch.save(tv.state_dict(), weights)
    record = cheapconv.create_model("squeezenet1_0", pretrained=weights).cheapconv_preprocessing
    assert (record.resize, record.crop, record.interpolation) == (256, 224, "bilinear")
    assert record.mean == (0.485, 0.456, 0.406)


# ------------------------------------------------------------------------------------------- the data

def test_imagefolder_takes_the_model_normalisation_and_ratio(tmp_path) -> None:
    name = _tree(tmp_path)
    own = get_dataset(name, "test", image_size=16)
    fed = get_dataset(name, "test", image_size=16, preprocessing=HALF)
    assert own.info.mean == (0.485, 0.456, 0.406) and fed.info.mean == (0.5, 0.5, 0.5)
    assert fed.info.interpolation == "bicubic" and fed.info.resize == 18
    red = fed[len(fed) - 1][0][0]   # class "b": red 200 -> (200/255 - 0.5)/0.5
    assert torch.allclose(red, torch.full_like(red, (200 / 255 - 0.5) / 0.5), atol=1e-5)
    record = data_preprocessing(fed.info)
    assert (record.input_size, record.resize, record.crop, record.source) == ((3, 16, 16), 18, 16, "data")
    described = dataset_info(name, image_size=16, preprocessing=HALF)   # without loading: the same
    assert (described.mean, described.resize, described.interpolation) == (fed.info.mean, 18, "bicubic")


def test_in_memory_data_takes_per_channel_stats_on_repeated_grey() -> None:
    grey = "synthetic:1x8x8:2:4"
    imagenet = Preprocessing((3, 8, 8), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    plain = get_dataset(grey, "test", in_chans=3)
    fed = get_dataset(grey, "test", in_chans=3, preprocessing=imagenet)
    raw = plain.images[0, 0].float() / 255
    x = fed[0][0]
    for c in range(3):
        assert torch.allclose(x[c], (raw - imagenet.mean[c]) / imagenet.std[c], atol=1e-5)
    batch = torch.stack([t for t, _ in fed.__getitems__([0, 1, 2, 3])])
    assert torch.equal(batch, torch.stack([fed[i][0] for i in range(4)]))   # batch and single items agree
    with pytest.raises(UsageError, match="yields 1"):
        get_dataset(grey, "test", preprocessing=imagenet)


def test_adapters_follow_the_record() -> None:
    model = cheapconv.create_model("wrn_10_1")
    # a record from training: its size (larger than the stored 28×28: zero padding) and mean/std
    model.cheapconv_preprocessing = Preprocessing((3, 36, 36), (0.3,) * 3, (0.4,) * 3, pad_from=28)
    fit = adapt_for_model("synthetic:1x28x28:10:8", model)
    assert fit.image_size == 36 and fit.preprocessing.mean == (0.3,) * 3
    # pretrained weights' 224 is no size for small in-memory images; their mean/std still apply
    model.cheapconv_preprocessing = Preprocessing((3, 224, 224), (0.5,) * 3, (0.5,) * 3, resize=256, crop=224,
                                                  source="weights")
    fit = adapt_for_model("synthetic:3x28x28:10:8", model)
    assert fit.image_size == 32 and fit.preprocessing.mean == (0.5,) * 3   # 32: the WRN's declared size
    assert adapt_for_model("synthetic:3x28x28:10:8", model, image_size=40).image_size == 40   # the caller wins


# ------------------------------------------------------------------------------------------- the commands

def test_train_records_its_image_size_and_evaluate_uses_it(tmp_path, capsys) -> None:
    data = _tree(tmp_path / "images")
    model = tmp_path / "m.pt"
    code, _, err = run(capsys, "train", "wrn_10_1", "--data", data, "--image-size", "20", "--max-steps", "1",
                       "--batch-size", "4", "--no-progress", "--workers", "0", "-o", str(model))
    assert code == 0, err
    assert "preprocessing: 3×20×20: resize 23 bilinear, centre crop 20" in err
    recipe = cheapconv.read_recipe(model)
    assert recipe["preprocessing"]["input_size"] == [3, 20, 20] and recipe["classes"] == ["a", "b"]
    code, out, err = run(capsys, "evaluate", str(model), "--data", data, "--json", "--workers", "0")
    assert code == 0, err
    assert "preprocessing: 3×20×20" in err and "from the model file" in err
    # what training measured on its test split is what evaluate measures: the same size and normalisation
    assert json.loads(out)["top1"] == pytest.approx(recipe["training"]["val_top1"])
    code, _, err = run(capsys, "evaluate", str(model), "--data", data, "--image-size", "24", "--workers", "0")
    assert code == 0 and "preprocessing: 3×24×24" in err   # an explicit size wins


def test_cheapen_calibration_follows_input_size(tmp_path, capsys) -> None:
    data = _tree(tmp_path / "images")
    teacher = cheapconv.create_model("wrn_10_1", num_classes=2)
    teacher.cheapconv_preprocessing = Preprocessing((3, 32, 32), (0.5,) * 3, (0.5,) * 3, resize=37, crop=32)
    teacher_file, student = tmp_path / "t.pt", tmp_path / "s.pt"
    cheapconv.save(teacher, teacher_file)
    code, _, err = run(capsys, "cheapen", str(teacher_file), "--policy", "block1.0.conv2=LR(0.5)", "--init", "teacher",
                       "--calib-data", data, "--calib-samples", "4", "--calib-steps", "0", "--input-size", "3,24,24",
                       "-o", str(student))
    assert code == 0, err
    assert "calibration preprocessing: 3×24×24: resize 28 bilinear, centre crop 24" in err
    assert "mean 0.5,0.5,0.5" in err
    assert cheapconv.load(student).cheapconv_preprocessing.input_size == (3, 24, 24)


def test_reconstruct_builds_a_named_dataset_as_the_record_says(tmp_path) -> None:
    data = _tree(tmp_path / "images")
    teacher = cheapconv.create_model("wrn_10_1", num_classes=2)
    teacher.cheapconv_preprocessing = Preprocessing((3, 16, 16), (0.5,) * 3, (0.5,) * 3, resize=18, crop=16)
    student = cheapconv.cheapen(teacher, "block1.0.conv2=LR(0.5)", init="teacher")
    report = cheapconv.reconstruct(student, teacher, data, samples=4, steps=0, progress=False)
    assert report.samples == 4
    other = get_dataset(data, "train", augment=False, image_size=16)   # ImageNet mean/std, not the record's
    with pytest.warns(UserWarning, match="the model records"):
        cheapconv.reconstruct(student, teacher, other, samples=4, steps=0, progress=False)


def test_export_writes_the_preprocessing_beside_the_file(tmp_path, capsys, monkeypatch) -> None:
    model = cheapconv.create_model("wrn_10_1", num_classes=2)
    model.cheapconv_preprocessing = Preprocessing((3, 16, 16), (0.5,) * 3, (0.25,) * 3, resize=18, crop=16)
    model.cheapconv_recipe = {"classes": ["a", "b"]}
    src, out_file = tmp_path / "m.pt", tmp_path / "m.pt2"
    cheapconv.save(model, src)
    code, out, err = run(capsys, "export", str(src), "--format", "pt2", "-o", str(out_file))
    assert code == 0, err
    card = json.loads((tmp_path / "m.pt2.json").read_text())
    assert card["input_shape"] == ["batch", 3, 16, 16] and card["std"] == [0.25] * 3 and card["resize"] == 18
    assert card["classes"] == ["a", "b"] and card["model_file"] == "m.pt2" and card["channel_order"] == "RGB"
    assert "preprocessing: 3×16×16: resize 18 bilinear, centre crop 16" in out and "m.pt2.json" in err

    export_module = importlib.import_module("cheapconv.exporter")
    monkeypatch.setitem(export_module._RUNNERS, "pt2", lambda path, x: [torch.zeros(x.shape[0], 2)])
    code, _, err = run(capsys, "export", str(src), "--format", "pt2", "-o", str(tmp_path / "bad.pt2"))
    assert code == 1 and "check FAILED" in err
    assert not (tmp_path / "bad.pt2").exists() and not (tmp_path / "bad.pt2.json").exists()
