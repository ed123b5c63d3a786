"""Augmentation strength, chosen once (``none``, ``light``, ``standard``) and reaching every kind of dataset,
the command line's ``--augment``, the training metadata and the resume fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

import cheapconv
from cheapconv.data import AUGMENTS, augmentation, get_dataset
from cheapconv.errors import UsageError
from cheapconv.train.checkpoint import data_fingerprint, load_checkpoint
from cheapconv_cli.main import main

DATA = "synthetic:3x32x32:4:32"
FOLDER = Path("/work/data/fmnist-folder")


def test_levels_and_what_true_false_and_none_mean():
    assert list(AUGMENTS) == ["none", "light", "standard"]
    assert augmentation(None, "train").name == "standard" and augmentation(None, "test").name == "none"
    assert augmentation(True, "test").name == "standard" and augmentation(False, "train").name == "none"
    assert augmentation("Light", "test").name == "light"
    with pytest.raises(UsageError, match="none, light, standard"):
        augmentation("strongest", "train")


@pytest.mark.parametrize("level, padding, flip", [("none", 0, False), ("light", 2, True), ("standard", 4, True)])
def test_in_memory_data_take_the_level(level, padding, flip):
    ds = get_dataset(DATA, "train", augment=level)
    assert ds.augmentation == level and ds.augment == (level != "none")
    if ds.augment:
        assert (ds.crop_padding, ds.flip) == (padding, flip)
    assert get_dataset(DATA, "train").augmentation == "standard" and get_dataset(DATA, "test").augmentation == "none"


@pytest.mark.skipif(not FOLDER.is_dir(), reason="the Fashion-MNIST image folder is not on this machine")
def test_image_folders_take_the_level():
    from torchvision import transforms as t

    def crops(level):
        ds = get_dataset(f"imagefolder:{FOLDER}", "train", augment=level, image_size=32)
        assert ds.augmentation == level
        return [tf for tf in ds.transform.transforms if isinstance(tf, (t.RandomResizedCrop, t.CenterCrop))]

    assert crops("light")[0].scale == (0.5, 1.0)
    assert crops("standard")[0].scale == (0.08, 1.0)
    assert isinstance(crops("none")[0], t.CenterCrop)


def test_segmentation_data_take_none_or_standard():
    with pytest.raises(UsageError, match="'none' or 'standard'"):
        get_dataset("fashion-mnist-seg", "train", augment="light")


def test_a_non_standard_level_is_part_of_the_training_data_fingerprint():
    assert "augmentation" not in data_fingerprint(get_dataset(DATA, "train"))   # older checkpoints still match
    assert data_fingerprint(get_dataset(DATA, "train", augment="light"))["augmentation"] == "light"


def test_cli_augment_reaches_the_run_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "t.pt"
    code = main(["train", "wrn_10_1", "--data", DATA, "--max-steps", "1", "--batch-size", "8", "--no-progress",
                 "--augment", "light", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert cheapconv.read_recipe(out)["training"]["augment"] == "light"
    assert load_checkpoint(tmp_path / "t.ckpt")["info"]["data"]["augmentation"] == "light"

    code = main(["train", "wrn_10_1", "--data", DATA, "--max-steps", "1", "--augment", "heavy", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown augmentation 'heavy'" in err and "Traceback" not in err


def test_cli_help_documents_augment(capsys):
    assert main(["distill", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--augment" in text and "light" in text and "--no-eval-start" in text
