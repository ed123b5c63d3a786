"""Distillation losses against hand computations (spec section 5).

The expected values are computed here with explicit Python loops and ``math``, never by calling the function
under test, so a formula slip in ``cheapconv.train.losses`` cannot cancel out.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cheapconv.errors import UsageError
from cheapconv.train.losses import DistillationLoss, at_loss, at_term, attention_map, distillation_loss, kd_loss

# ------------------------------------------------------------------------------------------- helpers


def map_by_hand(x: torch.Tensor) -> list[list[float]]:
    """Attention map with loops: per sample, mean over channels of x² at each position, then L2-normalise."""
    out = []
    for sample in x.tolist():  # C × H × W nested lists
        channels = len(sample)
        h, w = len(sample[0]), len(sample[0][0])
        row = []
        for i in range(h):
            for j in range(w):
                row.append(sum(sample[c][i][j] ** 2 for c in range(channels)) / channels)
        norm = max(math.sqrt(sum(v * v for v in row)), 1e-12)
        out.append([v / norm for v in row])
    return out


def at_term_by_hand(s: torch.Tensor, t: torch.Tensor) -> float:
    ms, mt = map_by_hand(s), map_by_hand(t)
    diffs = [(a - b) ** 2 for rs, rt in zip(ms, mt, strict=True) for a, b in zip(rs, rt, strict=True)]
    return sum(diffs) / len(diffs)


def softmax_by_hand(row: list[float], temp: float) -> list[float]:
    exps = [math.exp(v / temp) for v in row]
    return [e / sum(exps) for e in exps]


def kd_parts_by_hand(s: torch.Tensor, t: torch.Tensor, labels: list[int], temp: float) -> tuple[float, float]:
    """Return (mean CE, Σ_b Σ_k p_t (log p_t − log p_s)) computed with loops."""
    ce, kl_sum = 0.0, 0.0
    for srow, trow, y in zip(s.tolist(), t.tolist(), labels, strict=True):
        ce += -math.log(softmax_by_hand(srow, 1.0)[y])
        ps, pt = softmax_by_hand(srow, temp), softmax_by_hand(trow, temp)
        kl_sum += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True))
    return ce / len(labels), kl_sum


# ------------------------------------------------------------------------------------ attention map


def test_attention_map_numbers() -> None:
    # One sample, two channels, 1×2 positions: channel 0 = [1, 2], channel 1 = [3, 0].
    # Mean of squares per position: [(1 + 9)/2, (4 + 0)/2] = [5, 2]; L2 norm √29.
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    expected = torch.tensor([[5 / math.sqrt(29), 2 / math.sqrt(29)]])
    torch.testing.assert_close(attention_map(x), expected)


def test_attention_map_matches_loops_and_normalises_rows() -> None:
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    got = attention_map(x)
    assert got.shape == (3, 30)
    torch.testing.assert_close(got, torch.tensor(map_by_hand(x)))
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3))


def test_attention_map_of_zero_activation_is_zero_not_nan() -> None:
    got = attention_map(torch.zeros(2, 3, 4, 4))
    assert torch.equal(got, torch.zeros(2, 16))


def test_attention_map_runs_in_float32_for_bf16_input() -> None:
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    assert attention_map(x).dtype == torch.float32


def test_attention_map_rejects_non_4d() -> None:
    with pytest.raises(UsageError, match="B×C×H×W"):
        attention_map(torch.randn(2, 3, 4))


# ------------------------------------------------------------------------------------------- AT


def test_at_term_numbers() -> None:
    # Student map [1, 0]; teacher (one channel [1, 1]) map [1/√2, 1/√2].
    # Term = ((1 − 1/√2)² + (0 − 1/√2)²) / 2 = (1 − 1/√2)  (since (1 − r)² + r² = 1 − 2r + 2r², r² = 1/2).
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[1.0, 1.0]]]])
    expected = 1 - 1 / math.sqrt(2)
    assert at_term(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_at_term_matches_loops_with_different_channel_counts() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 7, 4, 4, generator=g)
    assert at_term(s, t).item() == pytest.approx(at_term_by_hand(s, t), rel=1e-5)


def test_at_zero_when_identical_and_when_maps_agree() -> None:
    x = torch.randn(2, 4, 8, 8)
    assert at_term(x, x.clone()).item() == 0.0
    assert at_loss([x, x], [x.clone(), x.clone()]).item() == 0.0
    # A teacher with the student's channel duplicated has the same attention map: AT ignores channel count.
    assert at_term(x, torch.cat([x, x], dim=1)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n_taps", [1, 2, 3, 4])
def test_at_loss_scaling_is_three_beta_over_taps(n_taps: int) -> None:
    g = torch.Generator().manual_seed(n_taps)
    s = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(n_taps)]
    t = [torch.randn(2, 5, 4, 4, generator=g) for _ in range(n_taps)]
    beta = 1000.0
    expected = beta / n_taps * 3 * sum(at_term_by_hand(a, b) for a, b in zip(s, t, strict=True))
    assert at_loss(s, t, beta=beta).item() == pytest.approx(expected, rel=1e-5)
    if n_taps == 3:  # the WRN case: exactly β·Σ terms
        assert at_loss(s, t, beta=beta).item() == pytest.approx(
            beta * sum(at_term_by_hand(a, b) for a, b in zip(s, t, strict=True)), rel=1e-5
        )


def test_at_spatial_mismatch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"spatial sizes differ.*\(8, 8\).*\(4, 4\)"):
        at_term(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4))
    with pytest.raises(UsageError, match="tap 1"):
        at_loss([torch.randn(2, 3, 4, 4)] * 2, [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)])


def test_at_tap_count_mismatch_and_empty_are_usage_errors() -> None:
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(UsageError, match="2 student and 1 teacher"):
        at_loss([x, x], [x])
    with pytest.raises(UsageError, match="at least one tap"):
        at_loss([], [])


def test_at_gradient_reaches_student_not_teacher() -> None:
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    at_loss([s], [t]).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


# ------------------------------------------------------------------------------------------- KD


def test_kd_loss_numbers_both_reductions() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    labels = [1, 2]
    alpha, temp, batch, classes = 0.9, 4.0, 2, 3
    ce, kl_sum = kd_parts_by_hand(s, t, labels, temp)
    y = torch.tensor(labels)

    batchmean = (1 - alpha) * ce + alpha * temp**2 * kl_sum / batch
    assert kd_loss(s, t, y, alpha, temp).item() == pytest.approx(batchmean, rel=1e-6)

    reference = (1 - alpha) * ce + 2 * alpha * temp**2 * kl_sum / (batch * classes)
    got = kd_loss(s, t, y, alpha, temp, reduction="reference").item()
    assert got == pytest.approx(reference, rel=1e-6)


def test_kd_reference_soft_term_is_two_over_classes_times_batchmean() -> None:
    # Derivation: batchmean soft = α T² KLsum / B; reference soft = 2 α T² KLsum / (B K),
    # so reference soft = (2/K) · batchmean soft.
    g = torch.Generator().manual_seed(3)
    k = 10
    s, t = torch.randn(8, k, generator=g), torch.randn(8, k, generator=g)
    y = torch.randint(0, k, (8,), generator=g)
    ce_part = 0.1 * F.cross_entropy(s, y)
    soft_bm = kd_loss(s, t, y, 0.9, 4.0, "batchmean") - ce_part
    soft_ref = kd_loss(s, t, y, 0.9, 4.0, "reference") - ce_part
    torch.testing.assert_close(soft_ref, soft_bm * 2 / k)


def test_kd_edge_cases() -> None:
    s = torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    # α = 0: plain cross-entropy, whatever the teacher says.
    torch.testing.assert_close(kd_loss(s, torch.randn(4, 5), y, alpha=0.0), F.cross_entropy(s, y))
    # α = 1 and a teacher equal to the student: KL = 0.
    assert kd_loss(s, s.clone(), y, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_bad_arguments() -> None:
    s, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(UsageError, match="alpha"):
        kd_loss(s, s, y, alpha=1.5)
    with pytest.raises(UsageError, match="temperature"):
        kd_loss(s, s, y, temperature=0.0)
    with pytest.raises(UsageError, match="batchmean, reference"):
        kd_loss(s, s, y, reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"same shape.*\(2, 3\).*\(2, 1000\)"):
        kd_loss(s, torch.randn(2, 1000), y)


def test_kd_gradient_does_not_reach_teacher() -> None:
    s = torch.randn(2, 3, requires_grad=True)
    t = torch.randn(2, 3, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 2])).backward()
    assert s.grad is not None and t.grad is None


# --------------------------------------------------------------------------------------- combined


def _batch() -> dict[str, object]:
    g = torch.Generator().manual_seed(7)
    return {
        "student_logits": torch.randn(4, 10, generator=g),
        "teacher_logits": torch.randn(4, 10, generator=g),
        "labels": torch.randint(0, 10, (4,), generator=g),
        "student_acts": [torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 6, 4, 4, generator=g)],
        "teacher_acts": [torch.randn(4, 5, 8, 8, generator=g), torch.randn(4, 9, 4, 4, generator=g)],
    }


def test_distillation_loss_kinds_and_terms() -> None:
    b = _batch()
    s, t, y = b["student_logits"], b["teacher_logits"], b["labels"]
    sa, ta = b["student_acts"], b["teacher_acts"]
    ce = F.cross_entropy(s, y)
    at = at_loss(sa, ta, beta=1000.0)
    kd = kd_loss(s, t, y, 0.9, 4.0)

    total, terms = distillation_loss("ce", s, y)
    torch.testing.assert_close(total, ce)
    assert set(terms) == {"ce", "total"}

    total, terms = distillation_loss("at", s, y, student_acts=sa, teacher_acts=ta)
    torch.testing.assert_close(total, ce + at)
    assert set(terms) == {"ce", "at", "total"}
    torch.testing.assert_close(terms["at"], at)

    total, terms = distillation_loss("kd", s, y, teacher_logits=t)
    torch.testing.assert_close(total, kd)
    torch.testing.assert_close(0.1 * terms["ce"] + terms["kd"], terms["total"])

    total, terms = distillation_loss("at+kd", s, y, teacher_logits=t, student_acts=sa, teacher_acts=ta)
    torch.testing.assert_close(total, kd + at)
    assert set(terms) == {"ce", "kd", "at", "total"}
    assert all(not v.requires_grad for v in terms.values())


def test_distillation_loss_errors_and_aliases() -> None:
    b = _batch()
    s, y = b["student_logits"], b["labels"]
    with pytest.raises(UsageError, match="teacher's logits"):
        distillation_loss("kd", s, y)
    with pytest.raises(UsageError, match="at least one tap"):
        distillation_loss("at", s, y)
    with pytest.raises(UsageError, match=r"Unknown loss kind 'fitnets'\. Valid: at, at\+kd, ce, kd\."):
        distillation_loss("fitnets", s, y)
    total, _ = distillation_loss("scratch", s, y)
    torch.testing.assert_close(total, F.cross_entropy(s, y))


def test_distillation_loss_object() -> None:
    b = _batch()
    loss_fn = DistillationLoss("KD+AT", kd_reduction="reference")
    assert loss_fn.kind == "at+kd" and loss_fn.needs_teacher and loss_fn.needs_taps
    assert not DistillationLoss("ce").needs_teacher
    assert DistillationLoss("kd").needs_teacher and not DistillationLoss("kd").needs_taps
    total, _ = loss_fn(
        b["student_logits"],
        b["labels"],
        teacher_logits=b["teacher_logits"],
        student_acts=b["student_acts"],
        teacher_acts=b["teacher_acts"],
    )
    kd = kd_loss(b["student_logits"], b["teacher_logits"], b["labels"], reduction="reference")
    expected = kd + at_loss(b["student_acts"], b["teacher_acts"])
    torch.testing.assert_close(total, expected)
    with pytest.raises(UsageError, match="alpha"):
        DistillationLoss("kd", alpha=-0.1)
