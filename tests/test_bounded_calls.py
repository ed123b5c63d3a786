"""Library calls refuse bad data and bad arguments with a cheapconv error, before the expensive work (issue 25, item 9).

NaN/inf in calibration and training batches, a teacher the student was not cheapened from, data with the wrong
channels, a user size too large for memory, a full disk while logging metrics, non-finite training settings,
an unbounded library.json, and the size of a policy error.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import cheapconv
from cheapconv.data import synthetic_dataset
from cheapconv.errors import PolicyMatchError, UsageError
from cheapconv.models import WideResNet
from cheapconv.store.files import DiskFullError

ROOT = Path(__file__).resolve().parent.parent


class OneNaNPixel(Dataset):
    """Float images of a synthetic dataset, one pixel of item ``bad`` set to ``value`` (NaN by default)."""

    def __init__(self, n: int = 32, bad: int = 21, value: float = float("nan"), size: int = 8) -> None:
        self.base = synthetic_dataset("train", channels=3, image_size=size, num_samples=n)
        self.info, self.bad, self.value = self.base.info, bad, value

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        x = x.clone().float()
        if i == self.bad:
            x[1, 2, 3] = self.value
        return x, y


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ NaN / inf in batches


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_reconstruct_refuses_a_nan_pixel_before_fitting_anything(value) -> None:
    teacher = WideResNet(10, 1).eval()
    student = cheapconv.cheapen(teacher, "G(2)")
    before = _state(student)
    with pytest.raises(UsageError, match=r"(?i)calibration batch 2 holds 1 NaN or infinite value\(s\).*item 21 of the"):
        cheapconv.reconstruct(student, teacher, OneNaNPixel(value=value), samples=32, batch_size=16, steps=1,
                              progress=False)
    assert _same(before, _state(student))   # no block was fitted to the NaN


def test_compress_calibration_refuses_a_nan_pixel() -> None:
    from cheapconv.compression.calibration import calibration_split

    with pytest.raises(UsageError, match=r"(?i)batch 1 of the (calibration|held-out) images .*item 21 of the data"):
        calibration_split(OneNaNPixel(), WideResNet(10, 1), samples=16, held_out=16)
    images = torch.rand(40, 3, 8, 8)
    images[30, 0, 0, 0] = float("nan")
    with pytest.raises(UsageError, match="NaN or infinite"):
        calibration_split(images, WideResNet(10, 1), samples=20, held_out=20)


def test_int8_calibration_refuses_a_nan_pixel() -> None:
    from cheapconv.measure.quantization import calibration_images

    with pytest.raises(UsageError, match=r"(?i)batch 1 of the (calibration|check) images holds 1 NaN"):
        calibration_images(OneNaNPixel(), WideResNet(10, 1), (3, 8, 8), samples=16, check=16)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_training_refuses_a_nan_pixel_naming_the_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = Tiny()
    config = cheapconv.DistillConfig(epochs=1, batch_size=8, progress=False, log_every=1)
    data = OneNaNPixel(n=32, bad=5)   # shuffled: whichever step reads item 5 is refused
    with pytest.raises(UsageError, match=r"training batch of step \d \(batch \d of epoch 1\) holds 1 NaN"):
        cheapconv.distill(None, student, data, config=config, metrics_file=tmp_path / "m.jsonl")
    assert all(torch.isfinite(v).all() for v in student.state_dict().values())
    if (tmp_path / "m.jsonl").exists():   # steps before the bad one may be logged; nothing NaN was trained
        assert "NaN" not in (tmp_path / "m.jsonl").read_text()


# ------------------------------------------------------------------------------------------ wrong teacher or data


def test_reconstruct_refuses_a_deeper_teacher_that_holds_every_tensor_of_the_student() -> None:
    student = cheapconv.cheapen(WideResNet(10, 1), "G(2)")
    with pytest.raises(UsageError, match="not the model the student was cheapened from: it holds"):
        cheapconv.reconstruct(student, WideResNet(16, 1), torch.rand(8, 3, 8, 8), samples=8, steps=1,
                              progress=False)


def test_reconstruct_refuses_data_with_the_wrong_channels() -> None:
    teacher = WideResNet(10, 1).eval()
    student = cheapconv.cheapen(teacher, "G(2)")
    before = _state(student)
    with pytest.raises(UsageError, match=r"calibration images do not fit the teacher: the input has 1 channel"):
        cheapconv.reconstruct(student, teacher, torch.rand(8, 1, 8, 8), samples=8, steps=1, progress=False)
    with pytest.raises(UsageError, match=r"has 3 dimensions, but the model's first conv takes \(batch, 3, H, W\)"):
        cheapconv.reconstruct(student, teacher, torch.rand(8, 8, 8), samples=8, steps=1, progress=False)
    assert _same(before, _state(student))


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (3, 16, 16), (1, 4, 16, 16)])
def test_count_macs_refuses_the_wrong_channels_as_a_usage_error(shape) -> None:
    with pytest.raises(UsageError, match="first conv takes"):
        cheapconv.count_macs(WideResNet(10, 1), shape)


def test_a_huge_input_size_is_refused_before_allocating_it_even_in_a_dry_run() -> None:
    """Under an address-space limit of what the process holds after start-up plus 512 MiB, each command must end
    in exit 2: a real 3×9000×9000 example (972 MB) or a 3×20000×20000 one (4.8 GB) would fail to allocate."""
    script = textwrap.dedent("""
        import resource, sys
        import torch
        from cheapconv_cli.main import main
        import cheapconv_cli.cheapen, cheapconv.surgery.planner, cheapconv.fx.analysis, cheapconv.models.wrn
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
        codes = [main(["cheapen", "wrn_10_1", "--block", "G(2)", "--input-size", size, "--dry-run"])
                 for size in ("3,20000,20000", "3,9000,9000")]
        print("CODES", codes)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env)
    assert "CODES [2, 2]" in done.stdout, done.stdout + done.stderr
    assert "looks like a bug" not in done.stderr and "Traceback" not in done.stderr
    assert "--input-size 3,20000,20000" in done.stderr


# ------------------------------------------------------------------------------------------ a full disk


class _FullDiskOS:
    """``os`` for the metrics logger, whose ``write`` writes half of the first record it is given, then fails."""

    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.calls += 1
        if self.calls <= self.after:
            return os.write(fd, data)
        if self.calls == self.after + 1:
            return os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_no_new_metrics_file(tmp_path: Path, monkeypatch) -> None:
    from cheapconv.train import callbacks

    monkeypatch.setattr(callbacks, "os", _FullDiskOS(after=2))
    log = callbacks.JsonlLogger(tmp_path / "m.jsonl", fresh=True)
    log.on_record({"kind": "step", "step": 1})
    log.on_record({"kind": "step", "step": 2})
    with pytest.raises(DiskFullError, match="No space left") as info:
        log.on_record({"kind": "step", "step": 3, "pad": "x" * 100})
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []   # the file this run created is gone, no temporary either
    log.on_record({"kind": "end"})         # later records are dropped, never a new file
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_cuts_an_appended_metrics_file_back_to_whole_records(tmp_path: Path, monkeypatch) -> None:
    from cheapconv.train import callbacks

    path = tmp_path / "m.jsonl"
    path.write_text('{"kind": "step", "step": 1}\n')
    monkeypatch.setattr(callbacks, "os", _FullDiskOS(after=1))
    log = callbacks.JsonlLogger(path)
    log.on_record({"kind": "step", "step": 2})
    with pytest.raises(DiskFullError):
        log.on_record({"kind": "step", "step": 3})
    assert path.read_text() == '{"kind": "step", "step": 1}\n{"kind": "step", "step": 2}\n'


# ------------------------------------------------------------------------------------------ settings and files


@pytest.mark.parametrize("field", ["weight_decay", "warmup_epochs", "grad_clip", "aux_weight", "lr", "epochs"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_training_settings_must_be_finite(field, value) -> None:
    with pytest.raises(UsageError, match=f"{field} must be"):
        cheapconv.DistillConfig(**{field: value})


def test_training_settings_refuse_a_nan_milestone() -> None:
    with pytest.raises(UsageError, match="milestones must be finite"):
        cheapconv.DistillConfig(milestones=(0.3, float("nan")))


def test_reconstruct_refuses_an_infinite_cache() -> None:
    teacher = WideResNet(10, 1)
    with pytest.raises(UsageError, match="cache_mb must be a finite number"):
        cheapconv.reconstruct(cheapconv.cheapen(teacher, "G(2)"), teacher, torch.rand(4, 3, 8, 8),
                              cache_mb=float("inf"), progress=False)


def test_a_library_json_that_is_a_fifo_or_oversized_is_refused(tmp_path: Path, monkeypatch) -> None:
    from cheapconv.compression import library_model

    fifo = tmp_path / "library.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO"):
        library_model.Library.load_json(fifo)
    big = tmp_path / "big" / "library.json"
    big.parent.mkdir()
    big.write_text("{}" + " " * 200)
    monkeypatch.setattr(library_model, "LIBRARY_JSON_LIMIT", 100)
    with pytest.raises(UsageError, match="more than the 100 bytes"):
        library_model.Library.load_json(big)


def test_a_policy_that_selects_nothing_is_quoted_in_a_few_rules() -> None:
    rules = "; ".join(f"nothing{i}=G(2)" for i in range(10_000))
    with pytest.raises(PolicyMatchError, match=r"and 9,995 more rules\) selects nothing") as info:
        cheapconv.cheapen(WideResNet(10, 1), rules)
    assert len(str(info.value)) < 2_000 and "nothing5=" not in str(info.value)
