"""The per-block-class initialisers behind ``init="teacher"``: each sets a cheap block's weights from the
teacher conv(s) it replaced, in closed form where one exists (:mod:`cheapconv.blocks.factorize`).

An initialiser is ``fn(block, teacher_convs) -> (kind, relative weight error or None, note)``, registered for
its block module class with :func:`register_initialiser`; :mod:`cheapconv.surgery.teacher_init` finds the sites
and calls them. Kinds are explained there. A new block module gets an initialiser here (or stays random, with
a note saying so). Everything runs under ``torch.no_grad`` (the caller's) and only reads the teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..blocks import (
    ACDCPointwise,
    Bottleneck,
    GroupedPointwise,
    LowRankPointwise,
    SeparablePointwise,
    ShufflePointwise,
    SpatialSVDConv,
    TensorTrainPointwise,
    Thin,
    Tucker2Conv,
    TuckerPointwise,
)
from ..blocks import factorize as fz

__all__ = ["EXACT_TOLERANCE", "INITIALISERS", "READS_BETWEEN", "Initialiser", "channel_importance", "dilated_corners",
           "register_initialiser"]

#: a relative weight error at or below this counts as exact (float32 round-off of the factorisations)
EXACT_TOLERANCE = 1e-5

# --- the registry --------------------------------------------------------------------------------------------
#: an initialiser sets ``block``'s weights from the teacher conv(s); returns (kind, weight error, note)
Initialiser = Callable[[nn.Module, tuple[nn.Conv2d, ...]], tuple[str, "float | None", str]]
INITIALISERS: dict[type[nn.Module], Initialiser] = {}
#: block classes whose initialiser also takes the teacher's modules between a pair's convs (a third argument)
READS_BETWEEN: set[type[nn.Module]] = set()


def register_initialiser(cls: type[nn.Module], *, reads_between: bool = False):
    """Decorator: make ``fn(block, teacher_convs) -> (kind, weight_error, note)`` the initialiser of ``cls``
    (``fn(block, teacher_convs, teacher_between)`` with ``reads_between``: blocks that rebuild those modules)."""
    def decorate(fn: Initialiser) -> Initialiser:
        INITIALISERS[cls] = fn
        if reads_between:
            READS_BETWEEN.add(cls)
        return fn
    return decorate


def _set(conv: nn.Conv2d, weight: torch.Tensor) -> None:
    conv.weight.copy_(weight.reshape(conv.weight.shape).to(conv.weight))


def _result(error: float, note: str = "") -> tuple[str, float, str]:
    """A closed form's outcome: exact or approximate by its relative weight error."""
    return ("exact" if error <= EXACT_TOLERANCE else "approximate"), error, note


def _depthwise_and_matrix(depthwise: nn.Conv2d | None, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the optional depthwise part from the per-input-channel rank-1 factorisation; return the pointwise
    C_out×C_in matrix still to be represented and the depthwise filters (ones for a 1×1 kernel)."""
    if depthwise is None:
        return kernel[:, :, 0, 0], torch.ones(kernel.shape[1], 1, 1, 1, dtype=kernel.dtype)
    filters, matrix = fz.depthwise_pointwise(kernel)
    _set(depthwise, filters)
    return matrix, filters


def _kernel_of(matrix: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The k×k kernel of depthwise ``filters`` (C_in,1,kh,kw) followed by a pointwise ``matrix`` (C_out×C_in)."""
    return matrix.double()[:, :, None, None] * filters.double()[None, :, 0]


@register_initialiser(SeparablePointwise)
def _init_separable(block, convs):
    """Per-input-channel rank-1 factorisation: exact iff each input channel's kernel slice has rank ≤ 1."""
    w = convs[0].weight.detach()
    matrix, filters = _depthwise_and_matrix(block.depthwise, w)
    _set(block.pointwise, matrix)
    return _result(fz.relative_error(_kernel_of(matrix, filters), w), "")


@register_initialiser(LowRankPointwise)
def _init_low_rank(block, convs):
    """Depthwise part as for ``Sep``, then the truncated SVD of the pointwise matrix (balanced √σ factors)."""
    w = convs[0].weight.detach()
    matrix, filters = _depthwise_and_matrix(block.depthwise, w)
    left, right = fz.truncated_svd(matrix, block.down.out_channels)
    _set(block.down, right)
    _set(block.up, left)
    return _result(fz.relative_error(_kernel_of(left @ right, filters), w), "")


@register_initialiser(Tucker2Conv)
def _init_tucker2(block, convs):
    """HOSVD of the kernel over its two channel modes."""
    w = convs[0].weight.detach()
    u_out, core, u_in = fz.tucker2_hosvd(w, block.reduce.out_channels, block.expand.in_channels)
    _set(block.reduce, u_in.t())
    _set(block.core, core)
    _set(block.expand, u_out)
    approx = torch.einsum("oi,ijyx,cj->ocyx", u_out.double(), core.double(), u_in.double())
    return _result(fz.relative_error(approx, w), "")


@register_initialiser(SpatialSVDConv)
def _init_spatial_svd(block, convs):
    """Truncated SVD of the kernel reshaped to (C_in·kh) × (C_out·kw)."""
    w = convs[0].weight.detach()
    vertical, horizontal = fz.spatial_svd(w, block.vertical.out_channels)
    _set(block.vertical, vertical)
    _set(block.horizontal, horizontal)
    approx = torch.einsum("rciy,orjx->ocix", vertical.double(), horizontal.double())
    return _result(fz.relative_error(approx, w), "")


@register_initialiser(TensorTrainPointwise)
def _init_tensor_train(block, convs):
    """Depthwise part as for ``Sep``; TT-SVD of the pointwise matrix reshaped to the block's 3-way tensor."""
    w = convs[0].weight.detach()
    matrix, filters = _depthwise_and_matrix(block.depthwise, w)
    cores = fz.tt_svd(matrix.reshape(*block.init_args["shape"]), tuple(block.init_args["ranks"]))
    for param, value in zip((block.core1, block.core2, block.core3), cores, strict=True):
        param.copy_(value.to(param))
    approx = fz.tt_reconstruct(*[c.double() for c in cores]).reshape(matrix.shape)
    return _result(fz.relative_error(_kernel_of(approx, filters), w), "")


@register_initialiser(TuckerPointwise)
def _init_tucker(block, convs):
    """Depthwise part as for ``Sep``; HOSVD of the pointwise matrix reshaped to the block's 3-way tensor."""
    w = convs[0].weight.detach()
    matrix, filters = _depthwise_and_matrix(block.depthwise, w)
    core, factors = fz.tucker_hosvd(matrix.reshape(*block.init_args["shape"]), tuple(block.init_args["ranks"]))
    for param, value in zip((block.core, block.factor1, block.factor2, block.factor3), (core, *factors),
                            strict=True):
        param.copy_(value.to(param))
    approx = fz.tucker_reconstruct(core.double(), *[f.double() for f in factors]).reshape(matrix.shape)
    return _result(fz.relative_error(_kernel_of(approx, filters), w), "")


@register_initialiser(ShufflePointwise)
def _init_shuffle(block, convs):
    """Depthwise part as for ``Sep``; the inner depthwise 3×3 set to the identity (centre tap 1), so the block
    is expand · shuffle · reduce, two grouped 1×1s. Each (output group i, input group j) block of the pointwise
    matrix is then carried by exactly the inner channels that the shuffle routes from reduce-group j to
    expand-group i, so the best start is an independent truncated SVD of every such block, of that rank."""
    w = convs[0].weight.detach()
    matrix, filters = _depthwise_and_matrix(block.depthwise, w)
    g = block.reduce.groups
    mid = block.reduce.out_channels
    per_in, per_out, per_mid = matrix.shape[1] // g, matrix.shape[0] // g, mid // g
    reduce_w = torch.zeros(mid, per_in, dtype=torch.float64)
    expand_w = torch.zeros(matrix.shape[0], per_mid, dtype=torch.float64)
    approx = torch.zeros_like(matrix, dtype=torch.float64)
    # ChannelShuffle(g) puts reduce channel j·per_mid + a at position a·g + j
    position = torch.arange(mid).reshape(g, per_mid).t().reshape(-1)
    for i in range(g):
        for j in range(g):
            links = [q for q in range(i * per_mid, (i + 1) * per_mid) if int(position[q]) // per_mid == j]
            if not links:
                continue
            rows, cols = slice(i * per_out, (i + 1) * per_out), slice(j * per_in, (j + 1) * per_in)
            left, right = fz.truncated_svd(matrix[rows, cols].double(), len(links))
            for r, q in enumerate(links):
                reduce_w[int(position[q])] = right[r]
                expand_w[rows, q - i * per_mid] = left[:, r]
            approx[rows, cols] = left @ right
    _set(block.reduce, reduce_w)
    _set(block.expand, expand_w)
    identity = torch.zeros_like(block.mix.weight)
    identity[:, :, 1, 1] = 1.0
    block.mix.weight.copy_(identity)
    return _result(fz.relative_error(_kernel_of(approx, filters), w), "inner depthwise 3×3 = identity")


@register_initialiser(ACDCPointwise)
def _init_acdc(block, convs):
    """No closed form for the ACDC factors (a product of diagonals and DCTs is not an SVD away from a dense
    matrix): they stay random; only the depthwise part comes from the teacher."""
    if block.depthwise is not None:
        _depthwise_and_matrix(block.depthwise, convs[0].weight.detach())
    return "random", None, "no closed form for ACDC's factors"


def _identity_norm(bn: nn.BatchNorm2d) -> None:
    """Make an eval-mode BatchNorm the identity: mean 0, variance 1 − eps, weight 1, bias 0."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.fill_(1.0)
    bn.bias.zero_()


def _positive_first(rows: torch.Tensor) -> torch.Tensor:
    """±1 per row so that each row (a filter) sums to ≥ 0: its response to a positive constant input is then
    positive, so a ReLU after it passes the signal on the (post-ReLU, non-negative) inputs most convs read."""
    return torch.where(rows.reshape(rows.shape[0], -1).sum(1) < 0, -1.0, 1.0).to(rows)


@register_initialiser(GroupedPointwise)
def _init_grouped(block, convs):
    """``G(g)`` linear start. For each group j of C_in/g input channels, the teacher's kernel restricted to those
    inputs, W[:, I_j] (C_out × (C_in/g)·k²), is replaced by its best rank-(C_in/g) approximation A_j·B_j: B_j is
    group j's grouped k×k filters, A_j the pointwise columns of those channels (for ``G(N)``, the per-channel
    rank-1 factorisation of ``Sep``). Without the BN and ReLU this is exact iff every W[:, I_j] has rank ≤ C_in/g.
    The BN is set to the identity (eval mode) and each inner channel's sign so its filter sums to ≥ 0, so the
    ReLU passes most of the signal; the block is then P·ReLU(D·x), not P·D·x, hence a linear start only."""
    w = convs[0].weight.detach().double()
    cout, cin, kh, kw = w.shape
    g = block.grouped.groups
    per = cin // g
    grouped_w = torch.zeros(cin, per, kh, kw, dtype=torch.float64)
    pointwise = torch.zeros(cout, cin, dtype=torch.float64)
    for j in range(g):
        cols = slice(j * per, (j + 1) * per)
        left, right = fz.truncated_svd(w[:, cols].reshape(cout, -1), per)   # (C_out, per), (per, per·k²)
        sign = _positive_first(right)
        grouped_w[cols] = (right * sign[:, None]).reshape(per, per, kh, kw)
        pointwise[:, cols] = left * sign[None, :]
    _set(block.grouped, grouped_w)
    _set(block.pointwise, pointwise)
    _identity_norm(block.bn)
    # the linear path's kernel: Σ_j A_j B_j, the kernel of the dense conv this block would be without BN/ReLU
    blocks = grouped_w.reshape(g, per, per, kh, kw)
    approx = torch.cat([torch.einsum("om,mcyx->ocyx", pointwise[:, j * per:(j + 1) * per], blocks[j])
                        for j in range(g)], 1)
    return "linear start", fz.relative_error(approx, w), "weight error of the linear path (ReLU ignored)"


@register_initialiser(Bottleneck)
def _init_bottleneck(block, convs):
    """``B(b)``/``BG(b,g)`` linear start, from the pair conv_a → norm → act → conv_b. The reduce 1×1, the k×k
    and the first half of the expand come from the Tucker-2 HOSVD of conv_a at ranks (M, M): reduce = U_inᵀ,
    k×k = the core (its block diagonal when grouped), so the k×k's output approximates conv_a's output in the
    basis U_out. conv_b, which the 1×1 expand must stand for, is replaced by the 1×1 conv closest to it in
    weight space (its centre tap) composed with U_out. Both BNs are set to the identity and inner signs chosen
    so filters sum to ≥ 0. The teacher's norm between the two convs, conv_b's other taps and the negative part
    the inner ReLUs cut are lost: measured on a trained WRN-16-2 this start is hardly closer to the teacher than
    random weights (relative site output error ≈ 0.98), so it is a start for reconstruction, nothing more."""
    a, b = (c.weight.detach().double() for c in convs)
    mid, groups = block.conv.out_channels, block.conv.groups
    u_out, core, u_in = fz.tucker2_hosvd(a, mid, mid)
    sign_in = _positive_first(u_in.t())
    u_in, core = u_in * sign_in[None, :], core * sign_in[None, :, None, None]
    sign_out = _positive_first(core)
    core, u_out = core * sign_out[:, None, None, None], u_out * sign_out[None, :]
    per = mid // groups
    grouped = torch.stack([core[i, (i // per) * per:(i // per + 1) * per] for i in range(mid)])
    _set(block.reduce, u_in.t())
    _set(block.conv, grouped)
    _set(block.expand, b[:, :, b.shape[2] // 2, b.shape[3] // 2] @ u_out)
    _identity_norm(block.bn1)
    _identity_norm(block.bn2)
    return "linear start", None, "Tucker-2 of conv_a; conv_b's centre tap"


def channel_importance(conv_a: nn.Conv2d, norm: nn.BatchNorm2d | None, conv_b: nn.Conv2d) -> torch.Tensor:
    """How much each inner channel c of a pair ``conv_a → norm → act → conv_b`` carries, the score ``W(f)`` keeps
    the top of: ‖conv_b[:, c]‖ · √(γ_c² + β_c²) with a BatchNorm in between, else ‖conv_a[c]‖ · ‖conv_b[:, c]‖.

    Why not ‖conv_a[c]‖ · |γ_c| (magnitude pruning's usual score): a BatchNorm after conv_a divides out the scale of
    conv_a's filter, so its norm says nothing about the channel. What the channel hands on has mean β_c and spread
    |γ_c| over the teacher's data (its running statistics), so √(γ_c² + β_c²) is its RMS before the activation,
    and conv_b's column norm how strongly the consumer reads it."""
    a, b = conv_a.weight.detach().double(), conv_b.weight.detach().double()
    reads = b.transpose(0, 1).reshape(b.shape[1], -1).norm(dim=1)
    if norm is None:
        return a.reshape(a.shape[0], -1).norm(dim=1) * reads
    gamma, beta = norm.weight.detach().double(), norm.bias.detach().double()
    return (gamma.square() + beta.square()).sqrt() * reads


@register_initialiser(Thin, reads_between=True)
def _init_thin(block, convs, between):
    """``W(f)``: keep the m channels of highest :func:`channel_importance` (ties: the lower index), in their
    order, with their weights: conv_a's rows (and bias), the BatchNorm's entries (weight, bias, running
    statistics), conv_b's input columns; conv_b's bias as it is. At f = 1 that is the teacher's pair, exactly.
    The weight error is the share of the pair's conv weights dropped (conv_a's rows and conv_b's columns).
    Reconstruction then refits conv_b by least squares on the kept channels (:mod:`cheapconv.reconstruction`)."""
    a, b = convs
    norm = next((m for m in between if isinstance(m, nn.BatchNorm2d)), None)
    mid = block.conv1.out_channels
    order = torch.sort(-channel_importance(a, norm, b), stable=True).indices
    keep = order[:mid].sort().values
    _set(block.conv1, a.weight.detach()[keep])
    if block.conv1.bias is not None and a.bias is not None:
        block.conv1.bias.copy_(a.bias.detach()[keep].to(block.conv1.bias))
    note = ""
    if isinstance(block.bn, nn.BatchNorm2d):
        if norm is None:
            _identity_norm(block.bn)
            note = "the teacher's BatchNorm between the convs was not found: the block's is the identity"
        else:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(block.bn, name).copy_(getattr(norm, name).detach()[keep].to(getattr(block.bn, name)))
            block.bn.num_batches_tracked.copy_(norm.num_batches_tracked)
    _set(block.conv2, b.weight.detach()[:, keep])
    if block.conv2.bias is not None and b.bias is not None:
        block.conv2.bias.copy_(b.bias.detach().to(block.conv2.bias))
    dropped = torch.ones(a.out_channels, dtype=torch.bool)
    dropped[keep] = False
    wa, wb = a.weight.detach().double(), b.weight.detach().double()
    lost = wa[dropped].square().sum() + wb[:, dropped].square().sum()
    error = float((lost / (wa.square().sum() + wb.square().sum()).clamp_min(1e-30)).sqrt())
    kind = "exact" if mid == a.out_channels else "approximate"
    return kind, error, note or f"kept {mid} of {a.out_channels} channels by importance"


def dilated_corners(block: nn.Conv2d, convs) -> tuple[str, float | None, str]:
    """``S-2x2``: the corner taps of the teacher's k×k kernel (the closest 2×2-dilated kernel in weight space)."""
    w = convs[0].weight.detach()
    k = w.shape[-1]
    corners = w[:, :, ::k - 1, ::k - 1]
    _set(block, corners)
    approx = torch.zeros_like(w, dtype=torch.float64)
    approx[:, :, ::k - 1, ::k - 1] = corners.double()
    return _result(fz.relative_error(approx, w), "")


