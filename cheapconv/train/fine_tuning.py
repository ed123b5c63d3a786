"""The training recipe for a student that starts from its teacher, and the check that a run uses it.

A student built with ``cheapen(..., init="teacher")`` (and usually :func:`cheapconv.reconstruct`) starts
close to its teacher; the paper's recipe (lr 0.1, no gradient clipping, step decay over 200 epochs) was
written for random starts and throws such a student out in its first steps. Measured on real
Fashion-MNIST with a WRN-16-2 teacher (``benchmarks/teacher_init/README.md``, "Students that start from their
teacher"):
unclipped lr-0.1 steps took reconstructed students to chance; clipped at 1 they keep their start, and given
one epoch with a cosine decay a reconstructed ``B(2)`` went from 87.95 % to 90.03 %, 0.73 points below its
teacher (lower peak lrs, 0.005 to 0.05, ended lower: 88.68 to 89.69 %).

:data:`FINE_TUNING` holds the settings that differ from the paper's recipe; ``DistillConfig.fine_tuning()``
is that recipe; :func:`check_start` warns when a run starts a teacher-initialised student without clipping.
"""

from __future__ import annotations

import warnings

from torch import nn

from .config import FINE_TUNING, DistillConfig

__all__ = ["FINE_TUNING", "check_start", "starts_from_teacher", "teacher_lr"]


def starts_from_teacher(student: nn.Module) -> bool:
    """Whether ``student`` was initialised from its teacher: ``cheapen(..., init="teacher")`` or
    :func:`cheapconv.reconstruct` recorded it in ``student.cheapconv_recipe`` (kept by save and load)."""
    recipe = getattr(student, "cheapconv_recipe", None) or {}
    return isinstance(recipe, dict) and recipe.get("init") == "teacher"


def check_start(student: nn.Module, config: DistillConfig) -> None:
    """Warn when a teacher-initialised ``student`` is to be trained without gradient clipping (the paper's
    recipe, meant for random starts), naming the recipe that keeps the start."""
    if config.grad_clip is None and starts_from_teacher(student):
        warnings.warn(
            f"This student starts from its teacher (init='teacher'), and this run's lr {config.lr:g} is not "
            "clipped: unclipped first steps undo such a start (measured: reconstructed students fell to chance at "
            "lr 0.1). Use DistillConfig.fine_tuning(...) (gradient norm clipped at "
            f"{FINE_TUNING['grad_clip']:g}, {FINE_TUNING['schedule']} schedule) or set grad_clip.",
            stacklevel=3)


def teacher_lr(teacher: nn.Module) -> float | None:
    """The peak lr ``teacher`` was trained with by ``cheapconv train``/``distill`` (its file's training record),
    None where it records none (a zoo model, plain weights).

    ``cheapconv distill`` trains a student that starts from its teacher at this lr unless ``--lr`` is given.
    Measured (benchmarks/pretrained_journey/README.md): a WRN-16-2 trained from scratch at 0.1 gives its
    reconstructed ``B(2)`` student the best one-epoch result at 0.1 (0.005-0.05 end lower); an ImageNet
    EfficientNet-Lite0 fine-tuned at 0.01 gives its reconstructed ``LRp(0.5)`` student the best at 0.01 (0.1 and 0.03
    end 2-3 points lower, 0.003 slightly lower). A student fine-tunes best near its teacher's own step size.
    """
    recipe = getattr(teacher, "cheapconv_recipe", None) or {}
    config = (recipe.get("training") or {}).get("config") if isinstance(recipe, dict) else None
    lr = config.get("lr") if isinstance(config, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < 10 else None
