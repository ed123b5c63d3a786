"""Stage ``students`` of the pruning study: Torch-Pruning students of the teacher, fine-tuned with cheapconv's recipe.

Each student is the teacher pruned by ``torch_pruning.pruner.MetaPruner`` as a user of that library would call it:
one step to a global ratio (``global_pruning=True``), every ``nn.Linear`` (the classifier) ignored, channel
importance by L2 magnitude (``MagnitudeImportance(p=2)``) or first-order Taylor (``GroupTaylorImportance``, the
gradients of the cross-entropy on :data:`TAYLOR_SAMPLES` unaugmented training images, taken in eval mode so that
BatchNorm's statistics stay the teacher's). The pruned model is the teacher's own class with fewer channels, so
``cheapconv.distill`` takes it as it is: its attention-transfer taps are found by name, as for the teacher
(``cheapconv.find_stages``), and attention maps sum over channels, so the widths need not match.

The pruned start is fine-tuned once per seed with ``DistillConfig.fine_tuning`` (AT from the teacher, gradient
norm clipped at 1, cosine decay) at the teacher's recorded lr, as ``cheapconv compress`` fine-tunes its students,
with the start evaluated before the first step. ``cheapconv.save`` stores the result as a data-only traced graph
(``storage: graph``; no recipe rebuilds a pruned model), which ``cheapconv.load`` builds again without running
code; the file's recipe keeps the pruning settings.
"""

from __future__ import annotations

import copy
import importlib.metadata
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import cheapconv
from cheapconv import DistillConfig, UsageError

#: the importance criteria of the study, by the name the records use
IMPORTANCES = ("l2", "taylor")
#: images whose cross-entropy gradients rank the channels under Taylor importance (batches of 64)
TAYLOR_SAMPLES = 256


def torch_pruning():
    """The torch_pruning module; a UsageError naming the extra where it is not installed."""
    try:
        # deferred: a benchmark-only dependency (the ``baselines`` extra), absent from a library install
        import torch_pruning as tp
    except ImportError:
        raise UsageError("The pruning study needs Torch-Pruning: pip install 'cheapconv[baselines]' (or pip install "
                         "-c requirements.txt torch-pruning).") from None
    return tp


def student_name(importance: str, ratio: float) -> str:
    """The name of a pruned student in records and tables, e.g. ``tp-l2-0.45``."""
    return f"tp-{importance}-{ratio:g}"


def student_path(out: Path, importance: str, ratio: float, seed: int) -> Path:
    return out / f"{student_name(importance, ratio)}-s{seed}.pt"


def _importance(tp, name: str):
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise UsageError(f"Unknown importance {name!r}; the study knows {', '.join(IMPORTANCES)}.")


def _taylor_gradients(model: nn.Module, images, batch: int = 64) -> None:
    """Accumulate the mean cross-entropy gradient over ``images`` (a dataset) in ``model``'s parameters, in eval
    mode: BatchNorm uses, and keeps, its running statistics."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in DataLoader(images, batch_size=batch, shuffle=False):
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum") / len(images)
        loss.backward()


def prune(teacher: nn.Module, importance: str, ratio: float, input_shape: tuple[int, ...], *,
          calibration=None) -> tuple[nn.Module, dict]:
    """A pruned copy of ``teacher`` (left unchanged) and its pruning recipe (JSON-able settings).

    ``calibration``: the unaugmented training images Taylor importance takes its gradients from (unused by L2;
    the study passes the first :data:`TAYLOR_SAMPLES`)."""
    tp = torch_pruning()
    student = copy.deepcopy(teacher).eval()
    ignored = [(name, m) for name, m in student.named_modules() if isinstance(m, nn.Linear)]
    example = torch.randn(1, *input_shape)
    pruner = tp.pruner.MetaPruner(student, example, importance=_importance(tp, importance), pruning_ratio=ratio,
                                  global_pruning=True, ignored_layers=[m for _, m in ignored])
    if importance == "taylor":
        if calibration is None:
            raise UsageError("Taylor importance needs calibration images (calibration=...).")
        _taylor_gradients(student, calibration)
    pruner.step()
    student.zero_grad(set_to_none=True)
    recipe = {"library": "torch-pruning", "version": importlib.metadata.version("torch-pruning"),
              "pruner": "MetaPruner", "importance": importance, "importance_class": type(pruner.importance).__name__,
              "pruning_ratio": ratio, "global_pruning": True, "iterative_steps": 1,
              "ignored_layers": [name for name, _ in ignored], "example_input": [1, *input_shape]}
    if importance == "taylor":
        recipe.update(taylor_samples=len(calibration), taylor_loss="mean cross-entropy, eval mode")
    # the copy carried the teacher's recipe (built by name): this model is no longer what that recipe builds
    student.cheapconv_recipe = {"model": type(student).__name__, "pruning": recipe}
    return student, recipe


def fine_tune(teacher: nn.Module, start: nn.Module, train, test, *, lr: float, epochs: int, seed: int,
              max_steps: int | None = None, batch_size: int = 128, precision: str = "fp32",
              channels_last: bool = False, progress: bool = True):
    """A copy of ``start`` distilled from ``teacher`` with the fine-tuning recipe; the DistillResult (the start
    evaluated on ``test`` before the first step, and the end)."""
    student = copy.deepcopy(start)
    config = DistillConfig.fine_tuning(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                                       precision=precision, channels_last=channels_last, progress=progress,
                                       seed=seed, eval_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.distill(teacher, student, train, val_data=test, config=config)


def save_student(student: nn.Module, path: Path, recipe: dict, input_shape: tuple[int, ...], extra: dict) -> str:
    """Save a pruned student (see the module docstring); returns the storage kind (``graph``)."""
    return cheapconv.save(student, path, recipe={"model": type(student).__name__, "input_size": list(input_shape),
                                                 "pruning": recipe}, extra=extra)
