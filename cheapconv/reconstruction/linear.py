"""Closed forms fitted on data: least squares and activation-aware low rank for pointwise (1×1) maps.

A 1×1 conv sees every output pixel as one sample, so the second moments of its input features ``f``
(C_in per pixel) and of the target ``y`` (C_out per pixel) over a few hundred images pin it down:

- dense: W = Σ_yf Σ_ff⁻¹ (least squares; a tiny ridge keeps rank-deficient inputs solvable);
- rank r: reduced-rank regression. With W* the dense solution, the rank-r matrix minimising
  ‖Y − W F‖² is P_r W*, where P_r projects onto the top r left singular vectors of W* Σ_ff^{1/2}. This is
  the activation-aware SVD ("whiten by the input covariance"): plain truncated SVD of W* is the special
  case Σ_ff = I, and it is what loses accuracy on compact networks, where a few input directions carry
  most of the signal.

The moments are accumulated batch by batch in float64 (:class:`Moments`), so memory does not grow with
the number of calibration images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Moments", "conv_features", "dense_solution", "pointwise_features", "reduced_rank_solution"]


class Moments:
    """Running Σ f fᵀ and Σ y fᵀ over pixels (float64) of features ``f`` and targets ``y`` (N×C×H×W)."""

    def __init__(self) -> None:
        self.ff: torch.Tensor | None = None
        self.yf: torch.Tensor | None = None
        self.count = 0

    def add(self, f: torch.Tensor, y: torch.Tensor) -> None:
        f2 = f.detach().double().transpose(0, 1).reshape(f.shape[1], -1)
        y2 = y.detach().double().transpose(0, 1).reshape(y.shape[1], -1)
        if f2.shape[1] != y2.shape[1]:
            raise ValueError(f"features and targets disagree in pixels: {tuple(f.shape)} vs {tuple(y.shape)}")
        ff, yf = f2 @ f2.T, y2 @ f2.T
        self.ff = ff if self.ff is None else self.ff + ff
        self.yf = yf if self.yf is None else self.yf + yf
        self.count += f2.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ff, self.yf) if t is not None)


def _regularised(ff: torch.Tensor, ridge: float) -> torch.Tensor:
    scale = ff.diagonal().mean().clamp_min(1e-12)
    return ff + ridge * scale * torch.eye(ff.shape[0], dtype=ff.dtype, device=ff.device)


def dense_solution(m: Moments, ridge: float = 1e-6) -> torch.Tensor:
    """W (C_out×C_in) minimising Σ‖y − W f‖² over the accumulated pixels."""
    ff = _regularised(m.ff, ridge)
    return torch.linalg.solve(ff, m.yf.T).T   # ff is symmetric: (yf ff⁻¹)ᵀ = ff⁻¹ yfᵀ


def reduced_rank_solution(m: Moments, rank: int, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(down r×C_in, up C_out×r) with ``up @ down`` the rank-r least-squares map (see the module docstring).

    A rank above min(C_in, C_out) (a block built wider than full rank, e.g. ``LR(1)`` on a widening conv) gets
    the full-rank solution: the extra rows of ``down`` repeat its leading rows and the extra columns of ``up``
    are zero, so the product is unchanged and training can still move them (both zero would stay zero)."""
    ff = _regularised(m.ff, ridge)
    w = torch.linalg.solve(ff, m.yf.T).T
    evals, evecs = torch.linalg.eigh(ff)
    root = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    u, _, _ = torch.linalg.svd(w @ root, full_matrices=False)
    u_r = u[:, :rank]
    down = u_r.T @ w
    extra = rank - u_r.shape[1]
    if extra > 0:
        index = torch.arange(extra, device=down.device) % down.shape[0]
        down = torch.cat([down, down[index]], 0)
        u_r = torch.cat([u_r, u_r.new_zeros(u_r.shape[0], extra)], 1)
    return down, u_r


def pointwise_features(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """What a 1×1 conv with ``stride`` (and no padding) reads of ``x``."""
    if tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    return x



def conv_features(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """What a dense, bias-free, zero-padded ``conv`` reads of ``x`` at each output pixel: its C_in·kh·kw input patch
    (im2col), as N×(C_in·kh·kw)×H_out×W_out. Applying ``conv.weight.reshape(C_out, -1)`` per pixel is the conv, so
    :class:`Moments` and :func:`dense_solution` fit a k×k conv by least squares as they fit a 1×1 one."""
    if tuple(conv.kernel_size) == (1, 1) and tuple(conv.padding) == (0, 0):
        return pointwise_features(x, conv.stride)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    return cols.reshape(x.shape[0], -1, h, w)
