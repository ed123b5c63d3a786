"""Datasets by name: IDX parsing, augmentation, adapters (and fitting data to a model), synthetic data,
messages for missing data, loaders and the worker-count rule.

Everything runs on small files written to a temporary folder; the test that reads the real Fashion-MNIST
(Debian package ``dataset-fashion-mnist``) skips when it is not installed.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cheapconv.data import (
    DatasetInfo,
    TensorImageDataset,
    adapt_for_model,
    dataset_info,
    default_workers,
    get_dataset,
    make_loader,
    read_idx,
    synthetic_dataset,
)
from cheapconv.data import folders as data  # the module that reads DEBIAN_FASHION_MNIST_DIR
from cheapconv.errors import DatasetNotFoundError, FileFormatError, UsageError

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530

# ------------------------------------------------------------------------------------------- helpers


def idx_bytes(type_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand: 0, 0, type code, ndim, big-endian uint32 dims, data."""
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_fake_fmnist(folder: Path, n: int, *, compress: bool, prefix: str = "train") -> torch.Tensor:
    """Write n 28×28 images (pixel value = (index + row + col) % 256) and labels i % 10; return the images."""
    folder.mkdir(parents=True, exist_ok=True)
    images = torch.tensor(
        [[[(i + r + c) % 256 for c in range(28)] for r in range(28)] for i in range(n)], dtype=torch.uint8
    )
    files = {
        f"{prefix}-images-idx3-ubyte": idx_bytes(0x08, (n, 28, 28), bytes(images.flatten().tolist())),
        f"{prefix}-labels-idx1-ubyte": idx_bytes(0x08, (n,), bytes(i % 10 for i in range(n))),
    }
    for name, raw in files.items():
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return images


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the Debian fallback at an empty folder so tests see only their own files."""
    empty = tmp_path / "no-debian-here"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", empty)
    return empty


# ----------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_uint8_3d(tmp_path: Path, compress: bool) -> None:
    raw = idx_bytes(0x08, (2, 2, 3), bytes(range(12)))
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path)
    assert got.dtype == torch.uint8 and got.shape == (2, 2, 3)
    assert got[1, 0].tolist() == [6, 7, 8]


def test_read_idx_big_endian_multibyte(tmp_path: Path) -> None:
    values = [1, 256, -2, 2**31 - 1]
    (tmp_path / "i32").write_bytes(idx_bytes(0x0C, (4,), struct.pack(">4i", *values)))
    assert read_idx(tmp_path / "i32").tolist() == values
    (tmp_path / "f32").write_bytes(idx_bytes(0x0D, (2, 1), struct.pack(">2f", 1.5, -0.25)))
    got = read_idx(tmp_path / "f32")
    assert got.dtype == torch.float32 and got.flatten().tolist() == [1.5, -0.25]


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(FileFormatError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(idx_bytes(0x08, (10,), bytes(3)))
    with pytest.raises(FileFormatError, match="needs 10 bytes"):
        read_idx(tmp_path / "short")
    (tmp_path / "badgz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(FileFormatError, match="gzip"):
        read_idx(tmp_path / "badgz")


def test_read_idx_corrupt_deflate_data_is_a_file_format_error(tmp_path: Path) -> None:
    # a valid gzip header followed by a corrupt deflate stream: zlib.error, not OSError
    (tmp_path / "corrupt.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"garbage" * 5)
    with pytest.raises(FileFormatError, match="does not decompress"):
        read_idx(tmp_path / "corrupt.gz")
    (tmp_path / "adir").mkdir()
    with pytest.raises(FileFormatError, match="Cannot read the IDX file"):
        read_idx(tmp_path / "adir")


# ----------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_data_dir(tmp_path: Path, no_debian: Path, compress: bool) -> None:
    images = write_fake_fmnist(tmp_path, 6, compress=compress, prefix="t10k")
    ds = get_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert isinstance(ds, TensorImageDataset) and len(ds) == 6
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    expected = (images[3].float() / 255 - FMNIST_MEAN) / FMNIST_STD
    torch.testing.assert_close(x[0], expected)
    assert ds.info == dataset_info("fashion-mnist")


def test_fashion_mnist_torchvision_layout(tmp_path: Path, no_debian: Path) -> None:
    write_fake_fmnist(tmp_path / "FashionMNIST" / "raw", 4, compress=True)
    assert len(get_dataset("Fashion_MNIST", data_dir=tmp_path)) == 4


def test_fashion_mnist_pad_to_32_and_rgb_adapter(tmp_path: Path, no_debian: Path) -> None:
    images = write_fake_fmnist(tmp_path, 3, compress=True)
    ds = get_dataset("fashion-mnist", "train", data_dir=tmp_path, in_chans=3, image_size=32, augment=False)
    assert ds.info.channels == 3 and ds.info.image_size == 32 and ds.info.mean == (FMNIST_MEAN,) * 3
    x, _ = ds[1]
    assert x.shape == (3, 32, 32)
    # The three channels are copies; the centre is the image, the 2-px border is black (pixel 0).
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    torch.testing.assert_close(x[0, 2:30, 2:30], (images[1].float() / 255 - FMNIST_MEAN) / FMNIST_STD)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    torch.testing.assert_close(x[0][border], torch.full((int(border.sum()),), -FMNIST_MEAN / FMNIST_STD))


def test_missing_fashion_mnist_says_where_and_how(tmp_path: Path, no_debian: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    msg = str(info.value)
    for needle in (
        str(tmp_path / "mine"),
        str(tmp_path / "mine" / "FashionMNIST" / "raw"),
        str(no_debian),
        "train-images-idx3-ubyte[.gz]",
        "apt-get install dataset-fashion-mnist",
        "--data-dir",
        "--download",
    ):
        assert needle in msg, needle


def test_real_fashion_mnist_debian_files() -> None:
    if not (data.DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    test = get_dataset("fashion-mnist", "test", data_dir="/nonexistent")
    assert len(test) == 10_000 and test.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = test.images.float().mean().item() / 255
    assert mean == pytest.approx(FMNIST_MEAN, abs=0.005)
    train = get_dataset("fashion-mnist", "train", data_dir="/nonexistent")
    assert len(train) == 60_000


# ------------------------------------------------------------------------------------ augmentation


def _dataset(augment: bool, n: int = 16, c: int = 3, s: int = 8) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (n, c, s, s), dtype=torch.uint8, generator=gen)
    info = DatasetInfo("toy", 10, c, s, (0.0,) * c, (1 / 255,) * c)  # normalised value = raw pixel value
    return TensorImageDataset(images, torch.arange(n) % 10, info, augment=augment)


def test_augmentation_preserves_shape_and_dtype() -> None:
    ds = _dataset(augment=True)
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    batch = ds.__getitems__([0, 1, 2])
    assert [b[0].shape for b in batch] == [(3, 8, 8)] * 3 and [b[1] for b in batch] == [0, 1, 2]


def test_augmentation_is_a_zero_padded_crop_or_its_mirror() -> None:
    torch.manual_seed(0)
    ds = _dataset(augment=True)
    seen = set()
    for i in range(len(ds)):
        for _ in range(4):
            x, _ = ds[i]
            padded = torch.nn.functional.pad(ds.images[i].float(), (4, 4, 4, 4))
            matches = [
                (dy, dx, flip)
                for dy in range(9)
                for dx in range(9)
                for flip in (False, True)
                if torch.equal(x, (lambda w: w.flip(-1) if flip else w)(padded[:, dy : dy + 8, dx : dx + 8]))
            ]
            assert matches, "augmented image is not a crop of the zero-padded image"
            seen.add(matches[0])
    assert len(seen) > 10  # offsets and flips actually vary


def test_no_augmentation_is_deterministic_and_batch_equals_single() -> None:
    ds = _dataset(augment=False)
    batch = torch.stack([x for x, _ in ds.__getitems__(list(range(5)))])
    single = torch.stack([ds[i][0] for i in range(5)])
    assert torch.equal(batch, single)
    assert torch.equal(single, ds.images[:5].float())


def test_in_chans_mismatch_that_cannot_be_adapted() -> None:
    with pytest.raises(UsageError, match="only adapter is grayscale"):
        get_dataset("synthetic:3x8x8:2:4", in_chans=1)
    with pytest.raises(UsageError, match="only adapter is grayscale"):
        dataset_info("cifar10", in_chans=4)
    info = dataset_info("fashion-mnist", in_chans=3, image_size=32)
    assert (info.channels, info.image_size, len(info.std)) == (3, 32, 3)
    with pytest.raises(UsageError, match="would crop"):
        get_dataset("synthetic:1x28x28:2:4", image_size=24)


# -------------------------------------------------------------------------------------- synthetic


def test_synthetic_defaults_and_spec() -> None:
    ds = get_dataset("synthetic")
    assert len(ds) == 512 and ds[0][0].shape == (3, 32, 32)
    assert ds.info.num_classes == 10 and ds.info.name == "synthetic:3x32x32:10:512"
    small = get_dataset("synthetic:1x28x28:4:40", "test", in_chans=3, image_size=32)
    assert len(small) == 40 and small[0][0].shape == (3, 32, 32) and small.info.num_classes == 4
    assert torch.bincount(small.labels).tolist() == [10] * 4
    with pytest.raises(UsageError, match="synthetic\\[:CxHxW"):
        get_dataset("synthetic:3x32")


def test_synthetic_is_deterministic() -> None:
    a = synthetic_dataset("train", channels=1, image_size=8, num_classes=3, num_samples=30, seed=5)
    b = get_dataset("synthetic:1x8x8:3:30", "train", seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = synthetic_dataset("train", channels=1, image_size=8, num_classes=3, num_samples=30, seed=6)
    test = synthetic_dataset("test", channels=1, image_size=8, num_classes=3, num_samples=30, seed=5)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.images, test.images)


def test_synthetic_is_learnable() -> None:
    # Nearest class mean on the training images classifies the test images well above chance (1/10).
    train = synthetic_dataset("train", num_samples=500, augment=False)
    test = synthetic_dataset("test", num_samples=200, augment=False)
    xtr = train.transform_batch(torch.arange(len(train))).flatten(1)
    xte = test.transform_batch(torch.arange(len(test))).flatten(1)
    means = torch.stack([xtr[train.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(xte, means).argmin(1) == test.labels).float().mean().item()
    assert accuracy > 0.9


# ------------------------------------------------------------------------------ names and messages


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UsageError) as info:
        get_dataset("mnist")
    for name in ("fashion-mnist", "cifar10", "cifar100", "imagefolder:<path>", "synthetic"):
        assert name in str(info.value)
    with pytest.raises(UsageError, match="Unknown split"):
        get_dataset("synthetic", "val")  # type: ignore[arg-type]


def test_missing_cifar_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("cifar100", data_dir=tmp_path)
    msg = str(info.value)
    assert "cifar-100-python" in msg and str(tmp_path) in msg and "--download" in msg and "--data-dir" in msg


def test_import_does_not_import_torchvision() -> None:
    code = "import sys, cheapconv.data; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ------------------------------------------------------------------------- torchvision-backed sets


def test_cifar10_from_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tv_cifar = pytest.importorskip("torchvision.datasets.cifar")
    np = pytest.importorskip("numpy")
    # Tiny stand-in batches in the python-pickle layout; the md5 check is for the real files only.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": rows, "labels": [0, 1, 2, 3]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    ds = get_dataset("CIFAR-10", "test", data_dir=folder)  # the extracted folder itself is accepted
    assert len(ds) == 4 and ds.info.classes == tuple(f"c{i}" for i in range(10))
    assert ds.images.shape == (4, 3, 32, 32)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each 32×32 row-major.
    assert ds.images[1, 2, 0, 5].item() == rows[1, 2048 + 5]
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and y == 1
    assert len(get_dataset("cifar10", "train", data_dir=tmp_path)) == 20


def _write_tree(root: Path, classes: list[str], per_class: int = 2) -> None:
    image = pytest.importorskip("PIL.Image")
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image.new("RGB", (40 + 3 * i, 30), color=(40 * k, 10 * i, 100)).save(root / name / f"{i}.png")


def test_imagefolder_tree(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    _write_tree(tmp_path / "train", ["cat", "dog", "emu"])
    _write_tree(tmp_path / "val", ["cat", "dog", "emu"], per_class=1)
    info = dataset_info(f"imagefolder:{tmp_path}")
    assert info.num_classes == 3 and info.classes == ("cat", "dog", "emu") and info.image_size == 224
    train = get_dataset(f"imagefolder:{tmp_path}", "train", image_size=32)
    test = get_dataset(f"imagefolder:{tmp_path}", "test", image_size=32)
    assert len(train) == 6 and len(test) == 3 and train.info.image_size == 32
    (x, y), (xt, yt) = train[5], test[2]
    assert x.shape == xt.shape == (3, 32, 32) and (y, yt) == (2, 2)
    with pytest.raises(UsageError, match="only adapter"):
        get_dataset(f"imagefolder:{tmp_path}", in_chans=1)


def test_imagefolder_flat_tree_and_missing(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    _write_tree(tmp_path / "flat", ["a", "b"])
    assert len(get_dataset(f"imagefolder:{tmp_path / 'flat'}", "test", image_size=16)) == 4
    with pytest.raises(DatasetNotFoundError, match=r"train.*does not exist"):
        get_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "only-train" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="only-train/val"):
        get_dataset(f"imagefolder:{tmp_path / 'only-train'}", "test")


# ------------------------------------------------------------------------------------------ loader


def test_make_loader_batches_and_seeded_shuffle() -> None:
    ds = get_dataset("synthetic:1x8x8:4:50", augment=False)
    loader = make_loader(ds, 16, shuffle=True, seed=3)
    assert loader.num_workers == 0 or torch.cuda.is_available()
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = next(iter(make_loader(ds, 16, shuffle=True, seed=3)))
    assert torch.equal(y, again[1])
    assert sum(len(b[1]) for b in make_loader(ds, 16, shuffle=False, drop_last=True)) == 48


def test_make_loader_distributed_needs_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(UsageError, match="torch.distributed"):
        make_loader(get_dataset("synthetic"), 8, shuffle=True, distributed=True)


class _Plain(torch.utils.data.Dataset):
    """A dataset that is not in memory (stands for ImageFolder: one decoded image per item)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(3, 8, 8), i


def test_one_worker_rule_for_loaders_training_and_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    from cheapconv.train import distributed

    in_memory, plain = get_dataset("synthetic:1x8x8:4:16"), _Plain()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for cuda in (False, True):  # in-memory data is batched in the main process, GPU or not
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert default_workers(in_memory) == 0 and make_loader(in_memory, 4, shuffle=False).num_workers == 0
        assert default_workers(plain) == min(8, cpus) == make_loader(plain, 4, shuffle=False).num_workers
    # the training loop and evaluation ask through train.distributed: the same answers
    for dataset in (in_memory, plain):
        assert distributed.default_workers(dataset) == default_workers(dataset)


# -------------------------------------------------------------------------------- fitting to a model


def _net(in_chans: int = 3, declared: int | None = None, recipe_size: int | None = None) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Conv2d(in_chans, 4, 3), torch.nn.Flatten())
    if declared is not None:
        net.default_input_size = (in_chans, declared, declared)
    if recipe_size is not None:
        net.cheapconv_recipe = {"input_size": [in_chans, recipe_size, recipe_size]}
    return net


def test_adapt_for_model_repeats_grey_and_pads_to_the_declared_size() -> None:
    fit = adapt_for_model("synthetic:1x28x28:10:8", _net(3, declared=32))
    assert (fit.in_chans, fit.image_size, fit.native.channels) == (3, 32, 1)
    assert "repeating the channel" in fit.notes["in_chans"] and "zero-padding them to 32×32" in fit.notes["image_size"]
    ds = get_dataset("synthetic:1x28x28:10:8", in_chans=fit.in_chans, image_size=fit.image_size)
    assert ds[0][0].shape == (3, 32, 32)
    # a cheapconv file declares its size in the recipe; Fashion-MNIST is described without reading files
    fit = adapt_for_model("fashion-mnist", _net(1, recipe_size=32))
    assert (fit.in_chans, fit.image_size, list(fit.notes)) == (1, 32, ["image_size"])


def test_adapt_for_model_leaves_fitting_data_alone_and_caller_wins() -> None:
    fit = adapt_for_model("synthetic:3x32x32:10:8", _net(3, declared=32))
    assert (fit.in_chans, fit.image_size, fit.notes) == (3, None, {})
    # nothing declared (a timm network, say): the data keeps its size, no 224 guess
    assert adapt_for_model("synthetic:3x32x32:10:8", _net(3)).image_size is None
    # in-memory data is never cropped to a smaller declared size
    assert adapt_for_model("synthetic:3x32x32:10:8", _net(3, declared=16)).image_size is None
    fit = adapt_for_model("synthetic:1x28x28:10:8", _net(3, declared=32), in_chans=1, image_size=28)
    assert (fit.in_chans, fit.image_size, fit.notes) == (1, 28, {})
    with pytest.raises(UsageError, match="Unknown dataset"):
        adapt_for_model("mnist", _net())


def test_adapt_for_model_imagefolder_takes_the_declared_size(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    fit = adapt_for_model(f"imagefolder:{tmp_path}", _net(3, declared=32))
    assert (fit.in_chans, fit.image_size, fit.notes) == (3, 32, {})  # a crop size, not padding: no note
