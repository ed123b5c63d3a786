"""What one library option changes, measured on held-out images: at its site, and at the model's output.

The model scored is the teacher with only that option swapped in, so the site reads exactly the teacher's input
there. Per option:

* ``local_error``: ‖block(x) − teacher site(x)‖ / ‖teacher site(x)‖ over all held-out images at once (the same
  relative error reconstruction reports, ``cheapconv.ReconstructionReport``), where the block's output is taken
  where reconstruction fits it (:func:`cheapconv.reconstruction.fitting_sites`);
* ``kl``: the mean KL divergence KL(teacher ‖ model) of the class distributions (softmax over dimension 1, so a
  dense model's per-pixel scores are averaged over pixels too);
* ``agreement``: the fraction of predictions (top-1) equal to the teacher's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UsageError
from ..reconstruction import Site
from ..reconstruction.capture import eval_flags, prefix_output

__all__ = ["Scores", "kl_and_agreement", "score_option", "teacher_outputs"]


@dataclass(frozen=True)
class Scores:
    local_error: float
    kl: float
    agreement: float


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _chunks(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start:start + batch_size]


def _scores_of(output, what: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        raise UsageError(f"The {what}'s forward returns {type(output).__name__}"
                         f"{'' if not isinstance(output, torch.Tensor) else ' of shape ' + str(tuple(output.shape))}; "
                         "a candidate library scores options by the model's class scores, so it needs a model whose "
                         "output is one tensor of scores, N×classes (or N×classes×H×W).")
    return output.float()


def teacher_outputs(teacher: nn.Module, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The teacher's class scores on ``images`` (eval mode, no gradient; its flags restored), on the CPU."""
    dev = _device(teacher)
    with torch.no_grad(), eval_flags(teacher):
        return torch.cat([_scores_of(teacher(x.to(dev)), "teacher").cpu() for x in _chunks(images, batch_size)])


def _run(model: nn.Module, path: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``model``'s output on ``x``, the output of its module ``path``) in one forward."""
    got: list[torch.Tensor] = []
    handle = model.get_submodule(path).register_forward_hook(lambda m, a, out: got.append(out))
    try:
        out = model(x)
    finally:
        handle.remove()
    return out, got[0]


def score_option(student: nn.Module, teacher: nn.Module, site: Site, images: torch.Tensor,
                 teacher_scores: torch.Tensor, *, batch_size: int = 64) -> Scores:
    """:class:`Scores` of ``student`` (the teacher with one site swapped: ``site``) against ``teacher`` on
    ``images``, whose teacher class scores are ``teacher_scores`` (:func:`teacher_outputs`)."""
    dev = _device(student)
    t_dev = _device(teacher)
    num = den = kl = agree = 0.0
    count = 0
    start = 0
    with torch.no_grad(), eval_flags(student, teacher):
        for x in _chunks(images, batch_size):
            out, block = _run(student, site.student_path, x.to(dev))
            target = prefix_output(teacher, site.teacher_out, x.to(t_dev)).to(dev)
            num += float((block.float() - target.float()).pow(2).sum())
            den += float(target.float().pow(2).sum())
            t = teacher_scores[start:start + x.shape[0]]
            start += x.shape[0]
            sums = _compared(t, _scores_of(out, "model").cpu())
            kl, agree, count = kl + sums[0], agree + sums[1], count + sums[2]
    return Scores(math.sqrt(num / max(den, 1e-30)), kl / max(count, 1), agree / max(count, 1))


def _compared(t: torch.Tensor, s: torch.Tensor) -> tuple[float, float, int]:
    """(summed KL(teacher ‖ model), matching top-1 predictions, predictions) of one batch of class scores."""
    log_t, log_s = F.log_softmax(t, dim=1), F.log_softmax(s, dim=1)
    return (float((log_t.exp() * (log_t - log_s)).sum(dim=1).sum()), float((t.argmax(dim=1) == s.argmax(dim=1)).sum()),
            t.numel() // t.shape[1])


def kl_and_agreement(model: nn.Module, images: torch.Tensor, teacher_scores: torch.Tensor, *,
                     batch_size: int = 64) -> tuple[float, float]:
    """The mean KL(teacher ‖ model) and top-1 agreement of ``model`` on ``images``, whose teacher class scores are
    ``teacher_scores``: :func:`score_option`'s end-to-end figures for a model with no one site to score locally (a
    teacher with a thinner channel group)."""
    dev = _device(model)
    kl = agree = 0.0
    count = start = 0
    with torch.no_grad(), eval_flags(model):
        for x in _chunks(images, batch_size):
            t = teacher_scores[start:start + x.shape[0]]
            start += x.shape[0]
            sums = _compared(t, _scores_of(model(x.to(dev)), "model").cpu())
            kl, agree, count = kl + sums[0], agree + sums[1], count + sums[2]
    return kl / max(count, 1), agree / max(count, 1)
