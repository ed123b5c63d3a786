"""Distillation losses: attention maps, attention transfer (AT), knowledge distillation (KD), and the objectives
by name.

Pure functions of tensors: no modules, no hooks, no state. The formulas are those of the specification
(``spec/moonshine.md`` section 5), restated in each docstring. Where the Moonshine paper and its reference
code (BayesWatch/pytorch-moonshine, ``funcs.py`` and ``main.py``) differ, the docstring says which one runs.

Teacher tensors are always detached: the teacher is fixed, so no gradient may flow into it even when a caller
forgets ``torch.no_grad()``.

Dense prediction (segmentation): logits B×K×H×W with label masks B×H×W. Cross-entropy is per pixel, pixels
labelled ``ignore_index`` left out; KD puts the temperature over the class axis and averages the per-pixel KL
over the valid pixels; AT is unchanged (any B×C×H×W taps, encoder or decoder). A model may return a dict
(``out``, ``aux``: torchvision's segmentation models) or a tuple (prediction first): :func:`split_output`
says which entry is the prediction, and the auxiliary head's CE is added with weight ``aux_weight``.

The objectives (``at``, ``kd``, ...) are registered one file each in :mod:`cheapconv.train.objectives`; they
combine the terms that :class:`LossInputs` computes here. :func:`distillation_loss` and
:class:`DistillationLoss` run one by name.

Example::

    total, terms = distillation_loss(
        "at", student_logits, labels, student_acts=s_taps, teacher_acts=t_taps
    )
    total.backward()
    print({k: float(v) for k, v in terms.items()})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from .dense import cross_entropy, dense_kd_parts, split_output
from .objectives import LOSSES, Objective, canonical_name, make_objective
from .objectives.kd import KD_REDUCTIONS, check_kd_settings

__all__ = [
    "KD_REDUCTIONS",
    "LOSSES",
    "DistillationLoss",
    "LossInputs",
    "at_loss",
    "at_term",
    "attention_map",
    "cross_entropy",
    "distillation_loss",
    "kd_loss",
    "split_output",
]

KDReduction = Literal["batchmean", "reference"]


def attention_map(x: Tensor) -> Tensor:
    """Spatial attention map of an activation, as in attention transfer.

    For ``x`` of shape B×C×H×W::

        a[b, i] = mean_c x[b, c, i]²                     (i runs over the H·W positions, row-major)
        map[b]  = a[b] / max(‖a[b]‖₂, 1e-12)

    i.e. ``F.normalize(x.pow(2).mean(1).flatten(1), p=2, dim=1)``; the result is B×HW. The computation runs in
    float32 whatever the input dtype, because under bf16/fp16 autocast the squared activations and the norm
    lose most of their precision and the AT loss is a difference of two such maps. The channel sum of squares
    is a float32 ``vector_norm`` that reads the bf16 activation directly: equal to squaring an fp32 copy (to
    3e-7, gradients too) without making that copy, which took 40 % of the AT term's time in a bf16 +
    channels_last step (61 → 35 ms for WRN-16-2's three taps at batch 128, forward + backward).
    """
    if x.dim() != 4:
        raise UsageError(
            f"attention_map expects an activation of shape B×C×H×W, got a tensor of shape {tuple(x.shape)}."
        )
    sum_sq = torch.linalg.vector_norm(x, 2, dim=1, dtype=torch.float32).pow(2)
    return F.normalize(sum_sq.div(x.shape[1]).flatten(1), p=2.0, dim=1, eps=1e-12)


def at_term(student_act: Tensor, teacher_act: Tensor, *, tap: str | int | None = None) -> Tensor:
    """Attention-transfer term for one tap: ``mean over all elements of (map_s − map_t)²``.

    ``map_*`` are :func:`attention_map` of the student and teacher activations (B×HW each), so the mean runs
    over B·H·W elements. Channel counts may differ (the maps average them away); batch and spatial sizes must
    agree, otherwise :class:`~cheapconv.errors.UsageError`. ``tap`` only names the tap in error messages.
    The teacher side is detached.
    """
    s_shape, t_shape = student_act.shape, teacher_act.shape
    if len(s_shape) != 4 or len(t_shape) != 4 or s_shape[-2:] != t_shape[-2:] or s_shape[0] != t_shape[0]:
        _at_shape_error(student_act, teacher_act, tap)   # messages built only when needed (this runs every step)
    diff = attention_map(student_act) - attention_map(teacher_act.detach())
    return diff.pow(2).mean()


def _at_shape_error(student_act: Tensor, teacher_act: Tensor, tap: str | int | None) -> None:
    where = f" at tap {tap!r}" if tap is not None else ""
    for role, act in (("student", student_act), ("teacher", teacher_act)):
        if act.dim() != 4:
            raise UsageError(
                f"Attention transfer{where}: the {role} activation must be B×C×H×W, "
                f"got shape {tuple(act.shape)}."
            )
    if student_act.shape[-2:] != teacher_act.shape[-2:]:
        raise UsageError(
            f"Attention transfer{where}: spatial sizes differ, student {tuple(student_act.shape[-2:])} vs "
            f"teacher {tuple(teacher_act.shape[-2:])} (H×W). AT compares attention maps position by "
            "position, so teacher and student taps must have the same resolution: tap the matching stage "
            "outputs, or feed both networks the same input size. (Channel counts may differ.)"
        )
    raise UsageError(
        f"Attention transfer{where}: batch sizes differ, student {student_act.shape[0]} vs teacher "
        f"{teacher_act.shape[0]}; both networks must see the same batch."
    )


def _at_terms(student_acts: Sequence[Tensor], teacher_acts: Sequence[Tensor]) -> list[Tensor]:
    """Per-tap AT terms after checking that the two sequences pair up."""
    if len(student_acts) != len(teacher_acts):
        raise UsageError(
            f"Attention transfer needs as many student taps as teacher taps, matched by position; got "
            f"{len(student_acts)} student and {len(teacher_acts)} teacher activations."
        )
    if len(student_acts) == 0:
        raise UsageError(
            "Attention transfer needs at least one tap (a stage output) in both networks; got none. "
            "Mark the stage outputs as taps, or use the 'kd' or 'ce' loss."
        )
    return [at_term(s, t, tap=i) for i, (s, t) in enumerate(zip(student_acts, teacher_acts, strict=True))]


def at_loss(student_acts: Sequence[Tensor], teacher_acts: Sequence[Tensor], beta: float = 1000.0) -> Tensor:
    """Total attention-transfer loss over matched taps.

    The spec writes the scaling as "β/len(taps)·3 × Σ_taps term (the reference code's scaling)". The reference
    code computes ``adjusted_beta = (beta * 3) / len(taps)`` and adds ``adjusted_beta * at_term`` per tap, so
    this reads as ``(3·β / n_taps) · Σ_taps at_term`` with n_taps = ``len(student_acts)``. With the three WRN
    stage outputs it is exactly ``β · Σ terms``; with ResNet's four stages it is ``0.75·β · Σ terms`` (the
    reference's "assume three taps and adjust β" rule, which keeps the loss's magnitude comparable).

    Taps are matched by position; both sequences must have the same non-zero length, else
    :class:`~cheapconv.errors.UsageError`. β defaults to 1000 (the paper's value).
    """
    terms = _at_terms(student_acts, teacher_acts)
    return (3.0 * beta / len(terms)) * torch.stack(terms).sum()


def _kd_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float,
    temperature: float,
    reduction: str,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """Return ``(CE, weighted soft term)`` so that ``kd_loss = (1 − α)·CE + soft``."""
    check_kd_settings(alpha, temperature, reduction)
    if student_logits.dim() not in (2, 4) or student_logits.shape != teacher_logits.shape:
        raise UsageError(
            f"KD compares class distributions, so student and teacher logits must both be B×num_classes "
            f"(or B×num_classes×H×W for segmentation) with the same shape; got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}. Check that both networks "
            "have the same classifier head and see the same image size."
        )
    if student_logits.dim() == 4:
        return dense_kd_parts(student_logits, teacher_logits, labels, alpha, float(temperature), reduction,
                               ignore_index)
    t = float(temperature)
    # log_softmax/softmax in float32: under autocast the logits may be bf16 and the KL of two nearly equal
    # distributions is a small difference of large numbers.
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    p_teacher = F.softmax(teacher_logits.detach().float() / t, dim=1)
    ce = F.cross_entropy(student_logits.float(), labels)
    if reduction == "batchmean":
        # True KL(p_t ‖ p_s) per sample, averaged over the batch.
        soft = alpha * t * t * F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    else:
        # The reference code: F.kl_div's old default reduction averaged over batch × classes, and the
        # result was multiplied by 2αT². Reproduced as written, factor 2 included. Spelled as sum/numel
        # because PyTorch announces that reduction="mean" will come to mean "batchmean".
        kl_mean = F.kl_div(log_p_student, p_teacher, reduction="sum") / log_p_student.numel()
        soft = 2.0 * alpha * t * t * kl_mean
    return ce, soft


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 0.9,
    temperature: float = 4.0,
    reduction: KDReduction = "batchmean",
    ignore_index: int = 255,
) -> Tensor:
    """Knowledge-distillation objective (Hinton et al.), the CE term included.

    With p_s = softmax(s/T), p_t = softmax(t/T), B the batch size and K the number of classes:

    - ``reduction="batchmean"`` (default, the standard form)::

          (1 − α)·CE(s, labels) + α·T² · (1/B) Σ_b Σ_k p_t[b,k]·(log p_t[b,k] − log p_s[b,k])

    - ``reduction="reference"`` (reproduces the Moonshine reference code,
      ``F.kl_div(...) * (T*T * 2. * alpha) + F.cross_entropy(...) * (1. - alpha)`` with the old element-wise
      mean reduction)::

          (1 − α)·CE(s, labels) + 2·α·T² · (1/(B·K)) Σ_b Σ_k p_t[b,k]·(log p_t[b,k] − log p_s[b,k])

      so its soft term equals the batchmean soft term times ``2/K``: for CIFAR-10 (K = 10) it is 5× weaker,
      for CIFAR-100 50× weaker.

    Paper values: α = 0.9, T = 4. The teacher logits are detached. ``labels`` are class indices (B,).

    Segmentation: logits B×K×H×W and masks B×H×W; the sums over b become sums over every pixel whose label is
    not ``ignore_index``, and 1/B becomes 1 over the number of those pixels (the KL per pixel, averaged).
    """
    ce, soft = _kd_parts(student_logits, teacher_logits, labels, alpha, temperature, reduction, ignore_index)
    return (1.0 - alpha) * ce + soft


@dataclass
class LossInputs:
    """What the networks produced for one batch, handed to an objective
    (:class:`~cheapconv.train.objectives.Objective`), with the terms objectives combine: :meth:`ce`,
    :meth:`kd`, :meth:`at`. An objective may also compute its own from the tensors."""

    student_logits: Tensor
    labels: Tensor
    teacher_logits: Tensor | None = None
    student_acts: Sequence[Tensor] = ()
    teacher_acts: Sequence[Tensor] = ()
    ignore_index: int = 255
    kind: str = "?"   # the objective's name, for messages

    def ce(self) -> Tensor:
        """The student's cross-entropy (per pixel for dense logits, see :func:`cross_entropy`)."""
        return cross_entropy(self.student_logits, self.labels, self.ignore_index)

    def kd(self, alpha: float, temperature: float, reduction: str) -> tuple[Tensor, Tensor]:
        """``(CE, weighted soft term)`` of :func:`kd_loss`, whose value is ``(1 − α)·CE + soft``."""
        if self.teacher_logits is None:
            raise UsageError(f"The {self.kind!r} loss needs the teacher's logits (teacher_logits=...); none were "
                             "given.")
        return _kd_parts(self.student_logits, self.teacher_logits, self.labels, alpha, temperature, reduction,
                         self.ignore_index)

    def at(self, beta: float) -> Tensor:
        """:func:`at_loss` over the matched stage outputs."""
        return at_loss(self.student_acts, self.teacher_acts, beta)


def distillation_loss(
    kind: str | Objective,
    student_logits: Tensor,
    labels: Tensor,
    *,
    teacher_logits: Tensor | None = None,
    student_acts: Sequence[Tensor] = (),
    teacher_acts: Sequence[Tensor] = (),
    student_aux: Tensor | None = None,
    aux_weight: float = 0.5,
    ignore_index: int = 255,
    **settings: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One training objective by name (or an :class:`~cheapconv.train.objectives.Objective`); returns
    ``(total, terms)``. ``settings`` are the objective's (``beta`` for ``"at"``; ``alpha``, ``temperature``,
    ``kd_reduction`` for ``"kd"``; see :class:`DistillationLoss` for those it does not take).

    The built-in kinds (spec section 5; one file each in :mod:`cheapconv.train.objectives`):

    - ``"ce"`` (alias ``"scratch"``): ``CE(student, labels)``; no teacher.
    - ``"at"``: ``CE + at_loss(student_acts, teacher_acts, beta)``.
    - ``"kd"``: ``kd_loss(...)`` = ``(1 − α)·CE + α·T²·KL`` (see :func:`kd_loss` for ``kd_reduction``).
    - ``"at+kd"`` (alias ``"kd+at"``): the KD objective plus the AT loss,
      ``(1 − α)·CE + α·T²·KL + at_loss``. This is what the reference code does when both are switched on
      (its loss starts from the KD objective and adds the AT terms), so the CE weight is (1 − α), not 1.

    ``terms`` holds detached 0-d tensors (no host sync is forced; call ``float()`` when logging):
    ``"ce"`` the *unweighted* cross-entropy (comparable across kinds), ``"kd"`` the weighted soft term
    (α·T²·KL, or its reference variant), ``"at"`` the scaled AT loss, and ``"total"``. Only the terms the kind
    uses are present, and ``total = w·ce + kd + at`` with w = 1 for "ce"/"at" and w = 1 − α for "kd"/"at+kd".

    ``student_aux``: an auxiliary head's logits (the ``aux`` of a segmentation model); its CE, ``"aux"`` in
    ``terms``, is added with weight ``aux_weight`` (0.5, as torchvision's segmentation recipe). Dense logits
    use ``ignore_index`` (see :func:`cross_entropy`).
    """
    loss_fn = DistillationLoss(kind, aux_weight=aux_weight, ignore_index=ignore_index, **settings)
    return loss_fn(student_logits, labels, teacher_logits=teacher_logits, student_acts=student_acts,
                   teacher_acts=teacher_acts, student_aux=student_aux)


class DistillationLoss:
    """A configured objective: validate the settings once, call it every step.

    ``kind``: an objective's name (``"at"``, ``"kd"``, ...: ``LOSSES.names()``) or an
    :class:`~cheapconv.train.objectives.Objective`. ``settings``, for a name, are the objective's own; those it
    does not take are ignored, so that one call can carry the settings of several (``beta=`` for ``"kd"`` is
    unused, as ``alpha=`` is for ``"at"``). ``aux_weight`` and ``ignore_index`` apply to every objective
    (segmentation, see :func:`distillation_loss`).

    ``needs_teacher`` and ``needs_taps`` tell a training loop whether to run the teacher and record stage
    outputs at all (a "ce" run needs neither); ``taps`` are the objective's chosen stage outputs (empty: found
    automatically).

    Example::

        loss_fn = DistillationLoss("at", beta=1000.0)
        total, terms = loss_fn(logits, labels, student_acts=s_taps, teacher_acts=t_taps)
    """

    def __init__(self, kind: str | Objective = "at", *, aux_weight: float = 0.5, ignore_index: int = 255,
                 **settings: Any) -> None:
        if isinstance(kind, Objective):
            objective = make_objective(kind, **settings)
        else:
            cls = LOSSES.get(canonical_name(kind))
            own = {f.name for f in dataclasses.fields(cls)}   # type: ignore[arg-type]
            objective = make_objective(cls.name, **{k: v for k, v in settings.items() if k in own})
        self.objective, self.aux_weight, self.ignore_index = objective, aux_weight, ignore_index

    @property
    def kind(self) -> str:
        """The objective's registered name (never an alias)."""
        return self.objective.name

    @property
    def needs_teacher(self) -> bool:
        """Whether the objective uses the teacher at all."""
        return self.objective.needs_teacher

    @property
    def needs_taps(self) -> bool:
        """Whether the objective uses stage-output activations (AT)."""
        return self.objective.needs_taps

    @property
    def taps(self) -> tuple[str, ...]:
        """The stage outputs the objective names (empty: found automatically)."""
        return tuple(getattr(self.objective, "taps", ()))

    def __repr__(self) -> str:
        return f"DistillationLoss({self.objective}, aux_weight={self.aux_weight}, ignore_index={self.ignore_index})"

    def __call__(
        self,
        student_logits: Tensor,
        labels: Tensor,
        *,
        teacher_logits: Tensor | None = None,
        student_acts: Sequence[Tensor] = (),
        teacher_acts: Sequence[Tensor] = (),
        student_aux: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Evaluate the objective; see :func:`distillation_loss` for the returned terms."""
        inputs = LossInputs(student_logits, labels, teacher_logits, student_acts, teacher_acts, self.ignore_index,
                            self.objective.name)
        total, parts = self.objective(inputs)
        terms = {k: v.detach() for k, v in parts.items()}
        if student_aux is not None:
            aux = cross_entropy(student_aux, labels, self.ignore_index)
            total = total + self.aux_weight * aux
            terms["aux"] = aux.detach()
        terms["total"] = total.detach()
        return total, terms
