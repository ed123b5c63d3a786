"""Stage ``students``: the reproduction study's single-type students of the WRN-16-2 teacher, teacher-initialised,
reconstructed and distilled for one epoch with the fine-tuning recipe (the same path ``compress`` takes after its
choice), saved in the study's folder. A student already saved there is not trained again."""

from __future__ import annotations

import warnings
from pathlib import Path

import cheapconv
from cheapconv import DistillConfig
from cheapconv.data import get_dataset

from ..common.report import say

#: the students of the issue: G(4), B(2) and BG(2,M), the reproduction study's row-2 blocks
SPECS = ("G(4)", "B(2)", "BG(2,M)")


def student_path(out: Path, spec: str) -> Path:
    return out / f"student-{spec.replace('(', '-').replace(')', '').replace(',', '-')}.pt"


def build_students(teacher_file: Path, out: Path, *, specs=SPECS, samples: int = 2048, epochs: int = 1,
                   seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Each of ``specs`` as a trained student file in ``out`` (made where missing); returns spec -> file."""
    teacher = cheapconv.load(teacher_file)
    calibration = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32, augment=False)
    train = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    test = get_dataset("fashion-mnist", "test", in_chans=3, image_size=32)
    files = {}
    for spec in specs:
        path = student_path(out, spec)
        files[spec] = path
        if path.exists():
            continue
        say(f"== student {spec}: teacher-initialised, reconstructed on {samples} images, {epochs} epoch(s)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student = cheapconv.cheapen(teacher, spec, init="teacher")
            cheapconv.reconstruct(student, teacher, calibration, samples=samples, progress=progress, seed=seed)
            config = DistillConfig.fine_tuning(epochs=epochs, lr=0.1, progress=progress, seed=seed)
            result = cheapconv.distill(teacher, student, train, val_data=test, config=config)
        say(f"   {spec}: {result.start_end}")
        cheapconv.save(student, path)
    return files
