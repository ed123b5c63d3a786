"""Closed-form factorisations of convolution kernels: the tensor maths behind teacher-initialised blocks.

Pure functions on tensors (no modules): each takes a teacher's kernel and returns the factors a cheap block
holds, computed in float64 and returned in the kernel's dtype. Each is exact when its ranks are full, in the
sense stated in its docstring, and otherwise the truncation that the SVD makes optimal (Eckart-Young) for the
unfolding it works on; HOSVD and TT-SVD are quasi-optimal (within √d of the best). Kernels are
``(C_out, C_in, kh, kw)`` as in ``nn.Conv2d``.

>>> import torch
>>> w = torch.randn(8, 4)
>>> left, right = truncated_svd(w, 4)
>>> torch.allclose(left @ right, w, atol=1e-5)
True
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "compose_factorised", "depthwise_pointwise", "near_equal_factors", "relative_error", "spatial_svd",
    "truncated_svd", "tt_reconstruct", "tt_svd", "tucker2_hosvd", "tucker_hosvd", "tucker_reconstruct",
]


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """‖approx − exact‖ / ‖exact‖ (Frobenius; 0 when both are zero)."""
    exact = exact.double()
    denom = exact.norm().item()
    diff = (approx.double() - exact).norm().item()
    return diff / denom if denom > 0 else diff


def _leading(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``rank`` leading singular triplets of a float64 matrix, zero-padded when ``rank`` exceeds its size
    (the extra directions carry nothing, so a block wider than needed is still exact).

    Computed from the eigenvectors of the smaller Gram matrix (A·Aᵀ or Aᵀ·A) and one projection, several times
    faster than a full SVD of a wide conv unfolding (512 × 4608 in a ResNet) and as exact at full rank: the
    product u·diag(s)·vh is then the projection of A on the eigenvectors, whatever their accuracy."""
    m, n = matrix.shape
    r = min(rank, m, n)
    if m <= n:
        u = torch.linalg.eigh(matrix @ matrix.T)[1].flip(1)[:, :r]
        projected = u.T @ matrix                                  # rows: s_i · v_iᵀ
        s = projected.norm(dim=1)
        vh = projected / torch.where(s > 0, s, 1.0)[:, None]
    else:
        vh = torch.linalg.eigh(matrix.T @ matrix)[1].flip(1)[:, :r].T
        projected = matrix @ vh.T                                 # columns: s_i · u_i
        s = projected.norm(dim=0)
        u = projected / torch.where(s > 0, s, 1.0)[None, :]
    if rank > r:
        u = torch.cat([u, u.new_zeros(u.shape[0], rank - r)], 1)
        s = torch.cat([s, s.new_zeros(rank - r)])
        vh = torch.cat([vh, vh.new_zeros(rank - r, vh.shape[1])], 0)
    return u, s, vh


def truncated_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``matrix`` (m×n) ≈ ``left`` (m×rank) @ ``right`` (rank×n), the best rank-``rank`` approximation.

    The singular values are split evenly (√s on each side) so both factors have the same scale, which keeps
    later training of the two 1×1 convs balanced. Exact when ``rank`` ≥ rank(matrix) (e.g. rank ≥ min(m, n))."""
    u, s, vh = _leading(matrix.double(), rank)
    root = s.sqrt()
    return (u * root).to(matrix.dtype), (root[:, None] * vh).to(matrix.dtype)


def depthwise_pointwise(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A k×k kernel as depthwise k×k then pointwise: ``W[o, c] ≈ P[o, c] · D[c]``.

    For each input channel c the slice ``W[:, c]`` (C_out × k²) is replaced by its best rank-1 approximation
    ``P[:, c] ⊗ D[c]``: the depthwise filter D[c] is the leading right singular vector (unit norm, sign chosen so
    that it sums to ≥ 0) and P[:, c] carries the singular value. Returns ``depthwise`` (C_in, 1, kh, kw) and
    ``pointwise`` (C_out, C_in). Exact iff every input channel's slice has rank ≤ 1, i.e. all outputs see input
    channel c through one spatial filter (true of any 1×1 kernel, not of a general k×k conv)."""
    cout, cin, kh, kw = kernel.shape
    slices = kernel.double().permute(1, 0, 2, 3).reshape(cin, cout, kh * kw)
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)
    d = vh[:, 0, :]                                   # (C_in, k²)
    p = u[:, :, 0] * s[:, :1]                         # (C_in, C_out)
    sign = torch.where(d.sum(1, keepdim=True) < 0, -1.0, 1.0).to(d)
    d, p = d * sign, p * sign
    return d.reshape(cin, 1, kh, kw).to(kernel.dtype), p.t().contiguous().to(kernel.dtype)


def tucker2_hosvd(kernel: torch.Tensor, rank_in: int, rank_out: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 of a k×k kernel by HOSVD: ``W ≈ U_out · core · U_inᵀ`` over the channel modes.

    ``U_in`` (C_in × rank_in) holds the leading left singular vectors of the mode-1 unfolding (C_in × C_out·k²),
    ``U_out`` (C_out × rank_out) those of the mode-0 unfolding (C_out × C_in·k²), and the core
    (rank_out, rank_in, kh, kw) is W projected on both. As a conv: 1×1 C_in→rank_in with weight ``U_inᵀ``, the
    core as a k×k conv rank_in→rank_out, 1×1 rank_out→C_out with weight ``U_out``. Exact when rank_in and
    rank_out reach the ranks of those unfoldings (at most C_in and C_out)."""
    w = kernel.double()
    cout, cin, kh, kw = w.shape
    u_out, _, _ = _leading(w.reshape(cout, -1), rank_out)
    u_in, _, _ = _leading(w.transpose(0, 1).reshape(cin, -1), rank_in)
    core = torch.einsum("oi,ocyx,cj->ijyx", u_out, w, u_in)
    return u_out.to(kernel.dtype), core.to(kernel.dtype), u_in.to(kernel.dtype)


def spatial_svd(kernel: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A kh×kw kernel as a kh×1 conv C_in→rank then a 1×kw conv rank→C_out (spatial SVD, Jaderberg et al.).

    ``W[o, c, i, j] = Σ_r V[r, c, i] · H[o, r, j]`` is a rank-``rank`` factorisation of W reshaped to the
    (C_in·kh) × (C_out·kw) matrix ``M[(c, i), (o, j)]``; the truncated SVD of M gives the best such pair.
    Returns ``vertical`` (rank, C_in, kh, 1) and ``horizontal`` (C_out, rank, 1, kw). Exact when ``rank`` ≥
    rank(M), at most min(C_in·kh, C_out·kw)."""
    cout, cin, kh, kw = kernel.shape
    m = kernel.permute(1, 2, 0, 3).reshape(cin * kh, cout * kw)
    left, right = truncated_svd(m, rank)                            # (C_in·kh, r), (r, C_out·kw)
    vertical = left.t().reshape(rank, cin, kh, 1)
    horizontal = right.reshape(rank, cout, 1, kw).permute(1, 0, 2, 3)
    return vertical.contiguous(), horizontal.contiguous()


def near_equal_factors(n: int, ways: int = 3) -> tuple[int, ...]:
    """``n`` as a product of ``ways`` integers as close to each other as its divisors allow, ascending.

    Greedy: each factor is the divisor of what is left nearest to the remaining geometric mean (a prime n
    gives (1, 1, n): it cannot be reshaped usefully, and the blocks that use this then hold a dense matrix)."""
    factors = []
    left = n
    for i in range(ways - 1, 0, -1):
        target = left ** (1.0 / (i + 1))
        divisors = [d for d in range(1, math.isqrt(left) + 1) if left % d == 0]
        divisors += [left // d for d in divisors]
        best = min(divisors, key=lambda d: (abs(math.log(d) - math.log(target)), d))
        factors.append(best)
        left //= best
    factors.append(left)
    return tuple(sorted(factors))


def tt_svd(tensor: torch.Tensor, ranks: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tensor-train of a 3-way tensor (n1, n2, n3) by TT-SVD (Oseledets 2011), TT-ranks (r1, r2).

    Returns cores G1 (n1, r1), G2 (r1, n2, r2), G3 (r2, n3) with ``T[a, b, c] ≈ Σ G1[a, i] G2[i, b, j] G3[j, c]``.
    Exact when r1 ≥ rank of the (n1 × n2·n3) unfolding and r2 ≥ rank of the (n1·n2 × n3) unfolding."""
    t = tensor.double()
    n1, n2, n3 = t.shape
    r1, r2 = ranks
    g1, rest = truncated_svd(t.reshape(n1, n2 * n3), r1)              # rest: (r1, n2·n3)
    left, g3 = truncated_svd(rest.reshape(r1 * n2, n3), r2)           # left: (r1·n2, r2)
    return g1.to(tensor.dtype), left.reshape(r1, n2, r2).to(tensor.dtype), g3.to(tensor.dtype)


def tt_reconstruct(g1: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor) -> torch.Tensor:
    """The full (n1, n2, n3) tensor from TT cores (what :func:`tt_svd` returns)."""
    return torch.einsum("ai,ibj,jc->abc", g1, g2, g3)


def tucker_hosvd(tensor: torch.Tensor, ranks: tuple[int, int, int]
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Tucker decomposition of a 3-way tensor by HOSVD: ``T ≈ core ×₁ U1 ×₂ U2 ×₃ U3``.

    Each factor U_m (n_m × r_m) holds the leading left singular vectors of the mode-m unfolding; the core
    (r1, r2, r3) is T projected on them. Exact when each r_m reaches the rank of its unfolding (≤ n_m)."""
    t = tensor.double()
    factors = []
    for mode, r in enumerate(ranks):
        unfolding = t.movedim(mode, 0).reshape(t.shape[mode], -1)
        factors.append(_leading(unfolding, r)[0])
    core = torch.einsum("abc,ai,bj,ck->ijk", t, *factors)
    return core.to(tensor.dtype), tuple(f.to(tensor.dtype) for f in factors)


def tucker_reconstruct(core: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, u3: torch.Tensor) -> torch.Tensor:
    """The full tensor from a Tucker core and its three factors."""
    return torch.einsum("ijk,ai,bj,ck->abc", core, u1, u2, u3)


def compose_factorised(w_a: torch.Tensor, w_b: torch.Tensor, b_a: torch.Tensor | None = None,
                       b_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The k×k kernel (and bias) of a factorised pair: conv ``w_a`` (k×1 or 1×k) then conv ``w_b`` (the other).

    The kernel is exact for the pair's linear part: ``W[o, c, y, x] = Σ_m w_b[o, m, ·] w_a[m, c, ·]`` over the
    two axes, a kernel of rank at most the pair's middle width in every output-input slice. The bias
    ``b_b + Σ w_b · b_a`` is exact away from the border (the second conv's zero padding does not carry ``b_a``),
    and an activation between the two is ignored: this is a start, not an identity.

    >>> a, b = torch.randn(5, 4, 3, 1), torch.randn(6, 5, 1, 3)
    >>> compose_factorised(a, b)[0].shape
    torch.Size([6, 4, 3, 3])
    """
    a64, b64 = w_a.double(), w_b.double()
    if w_a.shape[3] == 1:    # k×1 first: its taps run over y, the second conv's over x
        kernel = torch.einsum("omx,mcy->ocyx", b64[:, :, 0, :], a64[:, :, :, 0])
    else:
        kernel = torch.einsum("omy,mcx->ocyx", b64[:, :, :, 0], a64[:, :, 0, :])
    bias = None
    if b_a is not None or b_b is not None:
        bias = torch.zeros(w_b.shape[0], dtype=torch.float64, device=w_b.device)
        if b_b is not None:
            bias += b_b.double()
        if b_a is not None:
            bias += b64.sum(dim=(2, 3)) @ b_a.double()
        bias = bias.to(w_b.dtype)
    return kernel.to(w_a.dtype), bias
