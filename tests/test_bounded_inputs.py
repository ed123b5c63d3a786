"""Text and data inputs are read with bounds (issue 25, items 7-9): each case is reproduced on a tiny file in
tmp_path and must end in a cheapconv error (exit 2 on the command line) or be handled, within bounds far from
what the work should take (no timing is measured beyond those bounds)."""

from __future__ import annotations

import gzip
import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from cheapconv.errors import FileFormatError, PolicySyntaxError, UsageError
from cheapconv.surgery.policy import POLICY_MAX_RULES, Policy, Rule, Selector, parse_policy

# ------------------------------------------------------------------------------------------ policy files


def test_a_fifo_policy_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO"):
        Policy.from_file(fifo)


def test_a_device_policy_file_is_refused() -> None:
    with pytest.raises(UsageError, match="character device"):
        Policy.from_file("/dev/zero")


def test_an_oversized_policy_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("# padding\n" * 120_000 + "G(4)\n")   # 1.2 MB
    with pytest.raises(UsageError, match="more than the 1,048,576 bytes"):
        Policy.from_file(path)


def test_a_policy_past_the_rule_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.txt"
    path.write_text("".join(f"l{i}=S\n" for i in range(POLICY_MAX_RULES + 1)))
    with pytest.raises(PolicySyntaxError, match="more than 10,000 rules"):
        Policy.from_file(path)


def test_rule_matching_is_one_pass_over_200000_rules() -> None:
    """200,000 literal rules (more than fnmatch's and re's pattern caches hold, which made every layer recompile
    every pattern) plus a few patterns: each look-up is a dict hit, far inside the bound."""
    g2 = parse_policy("G(2)").rules[0].block
    rules = [Rule(g2, Selector(f"layer{i}.conv1")) for i in range(200_000)]
    rules.insert(5, Rule(parse_policy("G(4)").rules[0].block, Selector("re:stem\\d")))
    policy = Policy((*rules, parse_policy("G(8)").rules[0]))
    start = time.monotonic()
    hits = [policy.first_match(f"layer{i}.conv1") for i in range(0, 200_000, 1000)]
    assert [h[0] for h in hits] == [i + 1 if i >= 5 else i for i in range(0, 200_000, 1000)]
    assert policy.first_match("stem7")[0] == 5
    assert policy.first_match("other")[0] == len(policy.rules) - 1
    assert policy.first_match("other", is_stem=True) is None
    assert time.monotonic() - start < 60   # a bound, not a benchmark: the quadratic version took minutes


def test_literal_selectors_still_match_as_before() -> None:
    policy = parse_policy("layer1.0.conv1=G(2); layer1.*=G(4); layer1.0.conv1=S; G(8)")
    assert policy.first_match("layer1.0.conv1")[0] == 0
    assert policy.first_match("layer1.1.conv1")[0] == 1
    assert policy.first_match("x", "layer1.0.conv1")[0] == 0
    assert policy.first_match("conv1")[0] == 3


# ------------------------------------------------------------------------------------------ sweep state


def test_a_sweep_state_that_is_a_fifo_or_oversized_is_refused(tmp_path: Path) -> None:
    from cheapconv.sweeper import SWEEP_JSON_MAX_BYTES, _load_state

    os.mkfifo(tmp_path / "sweep.json")
    with pytest.raises(UsageError, match="FIFO"):
        _load_state(tmp_path, {})
    big = tmp_path / "big"
    big.mkdir()
    (big / "sweep.json").write_text(" " * (SWEEP_JSON_MAX_BYTES + 1))
    with pytest.raises(UsageError, match="more than the"):
        _load_state(big, {})


# ------------------------------------------------------------------------------------------ IDX files


def _idx_header(dims: tuple[int, ...]) -> bytes:
    return b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_a_gzip_idx_holding_more_than_its_header_is_refused_without_inflating_it(tmp_path: Path) -> None:
    from cheapconv.data.idx import read_idx

    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(_idx_header((100, 28, 28)))
        for _ in range(32):
            f.write(bytes(1 << 20))        # 32 MiB of zeros, about 32 KiB on disk
    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError, match="holds more"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak   # the declared 78 KB and a read chunk, never the 32 MiB


def test_an_idx_header_past_the_cap_or_the_file_is_refused_before_allocating(tmp_path: Path) -> None:
    from cheapconv.data.idx import read_idx

    huge = tmp_path / "huge"
    huge.write_bytes(_idx_header((65535, 65535, 255)))
    with pytest.raises(FileFormatError, match="more than the 1,073,741,824 bytes"):
        read_idx(huge)
    small_gz = tmp_path / "claims.gz"
    small_gz.write_bytes(gzip.compress(_idx_header((10_000, 1000, 10))))   # 100 MB from a ~30-byte file
    with pytest.raises(FileFormatError, match="gzip file can hold"):
        read_idx(small_gz)
    with pytest.raises(FileFormatError, match="character device"):
        read_idx("/dev/zero")


# ------------------------------------------------------------------------------------------ image folders


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height pixels (a decompression bomb as far as its size goes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 16)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def _good_png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)


def test_bad_image_files_are_skipped_with_a_warning_and_counted(tmp_path: Path) -> None:
    from cheapconv.data import get_dataset

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        _good_png(tmp_path / cls / "ok.png")
    (tmp_path / "a" / "text.png").write_text("not an image")
    (tmp_path / "a" / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    os.symlink(tmp_path / "b" / "loop2.jpg", tmp_path / "b" / "loop1.jpg")
    os.symlink(tmp_path / "b" / "loop1.jpg", tmp_path / "b" / "loop2.jpg")
    os.symlink(tmp_path / "b", tmp_path / "b" / "again")             # a folder loop: walked once
    with pytest.warns(UserWarning, match="Skipped 4 files") as caught:
        ds = get_dataset(f"imagefolder:{tmp_path}", "test", image_size=8)
    message = str(caught[0].message)
    assert "2 files that are not images" not in message and "1 files that are not images" in message
    assert "2 symlink loops" in message and "1 images over 67,108,864 pixels" in message
    assert len(ds) == 2 and sorted(ds.targets) == [0, 1]
    assert ds[0][0].shape == (3, 8, 8)


def test_a_folder_without_a_usable_image_is_a_usage_error(tmp_path: Path) -> None:
    from cheapconv.data import get_dataset
    from cheapconv.errors import DatasetNotFoundError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.warns(UserWarning, match="Skipped 1 files"), pytest.raises(DatasetNotFoundError, match="classes a"):
        get_dataset(f"imagefolder:{tmp_path}", "test", image_size=8)


def test_an_image_that_changes_after_the_scan_is_a_file_format_error(tmp_path: Path) -> None:
    from cheapconv.data import get_dataset

    (tmp_path / "a").mkdir()
    _good_png(tmp_path / "a" / "ok.png")
    ds = get_dataset(f"imagefolder:{tmp_path}", "test", image_size=8)
    (tmp_path / "a" / "ok.png").write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(FileFormatError, match="no longer reads as an image"):
        ds[0]


# ------------------------------------------------------------------------------------------ block specs


@pytest.mark.parametrize("spec", ["G(４)", "G(²)", "BG(2,M/４)", "LR(0_5)", "LR(inf)", "LR(０.5)",
                                  "G(" + "9" * 5000 + ")"])
def test_block_specs_take_ascii_digits_only(spec: str) -> None:
    with pytest.raises(PolicySyntaxError):
        parse_policy(spec)


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("step", [-1000, 2**60, 3.5, True, "7"])
def test_a_checkpoint_step_out_of_range_is_refused(tmp_path: Path, step) -> None:
    import torch

    from cheapconv.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint

    path = tmp_path / "run.ckpt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1, "step": step, "config_json": "{}",
                "info_json": "{}"}, path)
    with pytest.raises(FileFormatError, match="its step is"):
        load_checkpoint(path)


def test_a_checkpoint_step_past_the_run_is_refused_on_resume(tmp_path: Path) -> None:
    import torch

    from cheapconv import DistillConfig, distill
    from cheapconv.data import synthetic_dataset
    from cheapconv.models import WideResNet

    cfg = DistillConfig(epochs=1, batch_size=16, loss="ce", progress=False)
    data = synthetic_dataset("train", channels=3, image_size=8, num_samples=32, seed=1)
    ckpt = tmp_path / "run.ckpt"
    distill(None, WideResNet(10, 1), data, config=cfg, checkpoint=ckpt)
    payload = torch.load(ckpt, weights_only=True)
    payload["step"] = 10_000
    torch.save(payload, ckpt)
    with pytest.raises(UsageError, match="at step 10,000, past the 2 steps"):
        distill(None, WideResNet(10, 1), data, config=cfg, checkpoint=ckpt, resume=True)


# ------------------------------------------------------------------------------------------ workers, loss settings


def test_workers_are_capped_by_the_cores_with_a_warning() -> None:
    from cheapconv.data import cap_workers
    from cheapconv.data.batching import usable_cpus

    with pytest.warns(UserWarning, match=f"using {usable_cpus()}"):
        assert cap_workers(1000) == usable_cpus()
    assert cap_workers(0) == 0 and cap_workers(None) is None
    with pytest.raises(UsageError):
        cap_workers(-1)


@pytest.mark.parametrize("settings", [{"name": "at", "beta": float("inf")}, {"name": "at", "beta": float("nan")},
                                      {"name": "kd", "temperature": float("inf")}])
def test_infinite_loss_settings_are_refused_up_front(settings) -> None:
    from cheapconv.train.objectives import make_objective

    with pytest.raises(UsageError, match="finite"):
        make_objective(settings)


# ------------------------------------------------------------------------------------------ search -k / -o


def test_search_never_overwrites_a_file_it_did_not_write(tmp_path: Path, capsys) -> None:
    from cheapconv_cli.main import main

    out = tmp_path / "policy.txt"
    other = tmp_path / "policy.2.txt"
    other.write_text("somebody else's file\n")
    code = main(["search", "wrn_10_1", "--budget", "50%", "-k", "3", "-o", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert other.read_text() == "somebody else's file\n" and not out.exists()
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    assert main(["search", "wrn_10_1", "--budget", "50%", "-o", str(model)]) == 2
    assert model.read_bytes() == b"weights"


# ------------------------------------------------------------------------------------------ library entry points


@pytest.mark.parametrize("shape", [(1, 3, -1, 32), (1, 3.0, 32, 32), (1, True, 32, 32), (1, 3, 100_000, 100_000)])
def test_count_macs_refuses_a_bad_or_huge_shape_before_any_work(shape) -> None:
    import cheapconv
    from cheapconv.models import WideResNet

    with pytest.raises(UsageError, match="input shape"):
        cheapconv.count_macs(WideResNet(10, 1), shape)
