"""Every registered block family is tested alike: notation round trip, shapes, parameter formula, tracing
as a leaf, backward, inherited device/dtype/training flag."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from cheapconv.blocks import BLOCK_REGISTRY, parse_block
from cheapconv.errors import PolicySyntaxError
from cheapconv.fx.tracer import CheapTracer

# At least one concrete spelling per family, plus the aliases and relative group counts.
SPELLINGS = ["S", "keep", "S-2x2", "G(2)", "G(4)", "G(N/4)", "G(N)", "DW", "B(2)", "B(4)", "BG(2,4)",
             "BG(2,M/4)", "BG(2,M)", "Sep", "LR(0.25)", "LR(1)", "LRp(0.25)", "Shuffle(4)", "ACDC(2)",
             "Tucker2(0.25)", "SVDk(0.5)", "TT(0.25)", "Tucker(0.25)", "W(0.5)", "W(1)"]


def test_every_family_has_a_spelling_here():
    families = {type(parse_block(s)).family for s in SPELLINGS}
    assert families == set(BLOCK_REGISTRY)


@pytest.mark.parametrize("text", SPELLINGS)
def test_str_parses_back(text):
    spec = parse_block(text)
    assert parse_block(str(spec)) == spec


@pytest.mark.parametrize("text,fragment,col", [
    ("G(0)", "at least 1", 3), ("G(4", "missing ')'", 4), ("Q(2)", "unknown block 'Q'", 1),
    ("BG(2)", "BG takes 2 arguments", 5), ("G(N/0)", "at least 1", 5), ("B(x)", "positive integer", 3),
    ("G(M)", "integer, N or N/d", 3), ("S(2)", "S takes 0 arguments", 4), ("LR(0)", "in (0, 1]", 4),
    ("LR(x)", "must be a number", 4), ("ACDC(0)", "at least 1", 6),
])
def test_bad_specs_point_at_the_column(text, fragment, col):
    with pytest.raises(PolicySyntaxError) as info:
        parse_block(text)
    msg = str(info.value)
    assert fragment in msg
    assert f"(column {col})" in msg
    assert "Valid blocks:" in msg and "BG(b,g)" in msg


def conv(cin, cout, stride=1, k=3):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


CONV_LEVEL = ["S-2x2", "G(2)", "G(4)", "G(N/4)", "G(N)", "Sep", "LR(0.25)", "Shuffle(4)", "ACDC(2)", "Tucker2(0.25)",
              "SVDk(0.5)", "TT(0.25)", "Tucker(0.25)"]
BLOCK_LEVEL = ["B(2)", "B(4)", "BG(2,4)", "BG(2,M/4)", "BG(2,M)", "W(0.5)"]


@pytest.mark.parametrize("text", CONV_LEVEL)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cin,cout", [(16, 16), (16, 32)])
def test_conv_level_shapes_and_backward(text, stride, cin, cout):
    spec = parse_block(text)
    original = conv(cin, cout, stride)
    assert spec.conv_reason(original) is None
    block = spec.build_conv(original)
    x = torch.randn(2, cin, 9, 9, requires_grad=True)
    y = block(x)
    assert y.shape == original(x).shape
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())
    assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("text", BLOCK_LEVEL)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cin,cout", [(16, 16), (16, 32)])
def test_block_level_shapes_and_backward(text, stride, cin, cout):
    spec = parse_block(text)
    a, b = conv(cin, cout, stride), conv(cout, cout)
    assert spec.pair_reason(a, b) is None
    block = spec.build_pair(a, b)
    x = torch.randn(2, cin, 9, 9, requires_grad=True)
    y = block(x)
    assert y.shape == b(a(x)).shape
    y.sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    # stride sits on the k×k conv, never on a 1×1
    strided = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert all(m.kernel_size == (3, 3) for m in strided) and len(strided) == (1 if stride == 2 else 0)


def trainable(m):
    return sum(p.numel() for p in m.parameters())


def conv_params(m):
    return sum(c.weight.numel() for c in m.modules() if isinstance(c, nn.Conv2d))


@pytest.mark.parametrize("text,groups", [("G(2)", 2), ("G(4)", 4), ("G(N/4)", 16), ("G(N)", 64)])
def test_grouped_param_formula(text, groups):
    n, k = 64, 3
    block = parse_block(text).build_conv(conv(n, n))
    assert conv_params(block) == n * n * (k * k) // groups + n * n      # N²(k²/g + 1)
    assert trainable(block) == conv_params(block) + 2 * n                # plus BN(C_in) weight and bias


@pytest.mark.parametrize("text,b,groups", [("B(2)", 2, 1), ("B(4)", 4, 1), ("BG(2,4)", 2, 4),
                                           ("BG(2,M/4)", 2, 8), ("BG(2,M)", 2, 32)])
def test_bottleneck_param_formula(text, b, groups):
    n, k = 64, 3
    block = parse_block(text).build_pair(conv(n, n), conv(n, n))
    m = n // b
    assert conv_params(block) == n * m + m * m * k * k // groups + m * n   # N²(k²/(g b²) + 2/b)
    assert trainable(block) == conv_params(block) + 4 * m


def test_dilated_2x2_is_the_corner_taps():
    original = conv(8, 8)
    block = parse_block("S-2x2").build_conv(original)
    assert conv_params(block) == 4 * 8 * 8
    # with the corner weights copied over, it computes exactly the 3×3 conv restricted to its corners
    with torch.no_grad():
        masked = original.weight.clone()
        masked[:, :, 1, :] = 0
        masked[:, :, :, 1] = 0
        original.weight.copy_(masked)
        block.weight.copy_(masked[:, :, ::2, ::2])
    x = torch.randn(1, 8, 7, 7)
    torch.testing.assert_close(block(x), original(x))


@pytest.mark.parametrize("text,cin,reason", [
    ("G(3)", 16, "3 groups do not divide C_in=16"),
    ("G(4)", 16, None),
])
def test_divisibility_is_reported_not_fixed(text, cin, reason):
    assert parse_block(text).conv_reason(conv(cin, cin)) == reason


def test_ineligible_convs_have_reasons():
    g4 = parse_block("G(4)")
    assert "1×1" in g4.conv_reason(conv(16, 16, k=1))
    grouped = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    assert "already grouped" in g4.conv_reason(grouped)
    assert "block-level" in parse_block("B(2)").conv_reason(conv(16, 16))
    assert "conv-level" in g4.pair_reason(conv(16, 16), conv(16, 16))
    assert "divide M" in parse_block("BG(2,3)").pair_reason(conv(16, 16), conv(16, 16))


@pytest.mark.parametrize("text", CONV_LEVEL)
def test_replacement_inherits_dtype_and_training_flag(text):
    original = conv(16, 16).to(torch.float64).eval()
    block = parse_block(text).build_conv(original)
    assert all(p.dtype == torch.float64 for p in block.parameters())
    assert not block.training and not any(m.training for m in block.modules())


@pytest.mark.parametrize("text", CONV_LEVEL + BLOCK_LEVEL)
def test_blocks_trace_as_leaves(text):
    spec = parse_block(text)
    block = spec.build_conv(conv(16, 16)) if spec.level == "conv" else spec.build_pair(conv(16, 16), conv(16, 16))
    holder = nn.Sequential(block, nn.ReLU())
    graph = CheapTracer().trace(holder)
    calls = [n for n in graph.nodes if n.op == "call_module"]
    assert [n.target for n in calls] == ["0", "1"]
    gm = fx.GraphModule(holder, graph)
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(gm(x), holder(x))


# --- structured pointwise substitutes (blockswap-and-structured.md §2) ---------------------------------------
STRUCTURED = ["LR(0.25)", "Shuffle(4)", "ACDC(3)", "TT(0.25)", "Tucker(0.25)"]


@pytest.mark.parametrize("text", STRUCTURED)
@pytest.mark.parametrize("stride", [1, 2])
def test_structured_blocks_also_replace_1x1_convs(text, stride):
    original = conv(32, 64, stride, k=1)
    block = parse_block(text).build_conv(original)
    x = torch.randn(2, 32, 9, 9)
    assert block(x).shape == original(x).shape
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1 for m in block.modules())


def test_structured_param_formulas():
    cin, cout, k = 32, 64, 3
    n = max(cin, cout)
    dw = cin * k * k
    assert trainable(parse_block("Sep").build_conv(conv(cin, cout))) == dw + cin * cout
    r = int(0.25 * n)
    assert trainable(parse_block("LR(0.25)").build_conv(conv(cin, cout))) == dw + r * (cin + cout)
    assert parse_block("LR(0.001)").rank(conv(cin, cout)) == 1  # never rank 0
    assert trainable(parse_block("ACDC(3)").build_conv(conv(cin, cout))) == dw + 3 * 2 * n
    mid, g = cout // 4, 4
    assert trainable(parse_block("Shuffle(4)").build_conv(conv(cin, cout))) == \
        dw + cin * mid // g + 9 * mid + mid * cout // g


@pytest.mark.parametrize("cin,cout,k,expected", [(64, 64, 3, 64), (128, 128, 3, 128), (32, 64, 3, 32),
                                                   (64, 64, 1, 8), (96, 24, 3, 24)])
def test_lrp_rank_never_exceeds_full_rank(cin, cout, k, expected):
    """LRp(0.25)'s formula asks for 67 on a 3×3 64→64 conv (139 on 128→128); a rank above min(C_in, C_out) adds
    parameters and nothing else, so it stops at full rank (and then keeps less than f of the conv)."""
    spec, original = parse_block("LRp(0.25)"), conv(cin, cout, k=k)
    assert spec.rank(original) == expected <= min(cin, cout)
    assert trainable(spec.build_conv(original)) <= 0.25 * original.weight.numel()


def test_acdc_builds_exactly_n_factors_and_starts_as_a_structured_identity():
    block = parse_block("ACDC(5)").build_conv(conv(16, 16, k=1))
    assert block.a.shape == (5, 16) and block.d.shape == (5, 16)
    with torch.no_grad():
        block.a.fill_(1.0)
        block.d.fill_(1.0)
    x = torch.randn(2, 16, 4, 4)
    # DCT then inverse DCT is the identity, so only the riffle permutations between factors remain
    from cheapconv.blocks.structured import _riffle

    expected = x
    for _ in range(4):
        expected = expected[:, _riffle(16)]
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert "dct" not in block.state_dict()  # fixed transforms are not state


def test_structured_refusals():
    assert "already grouped" in parse_block("LR(0.5)").conv_reason(nn.Conv2d(8, 8, 3, groups=8))
    assert "do not divide" in parse_block("Shuffle(3)").conv_reason(conv(16, 16, k=1))
    assert "1×1" in parse_block("Sep").conv_reason(conv(16, 16, k=1))


# --- decomposed and tensorised blocks (issue 11): ranks from the kept fraction f of the conv's parameters ------
@pytest.mark.parametrize("text", ["Tucker2(0.25)", "SVDk(0.5)", "TT(0.25)", "Tucker(0.25)", "TT(0.6)", "Tucker(0.6)"])
@pytest.mark.parametrize("cin,cout,k", [(32, 32, 3), (16, 64, 3), (96, 24, 3), (64, 128, 1), (160, 40, 1)])
def test_fraction_blocks_keep_at_most_f_of_the_conv(text, cin, cout, k):
    spec = parse_block(text)
    original = conv(cin, cout, k=k)
    if spec.conv_reason(original) is not None:
        assert k == 1 and spec.family in ("Tucker2", "SVDk")  # decomposed k×k blocks leave 1×1 convs alone
        return
    block = spec.build_conv(original)
    kept = trainable(block) / original.weight.numel()
    assert 0 < kept <= spec.scale + 1e-9
    # and not far below it, unless the block already holds its full (exact) ranks
    full = {"TT": lambda b: tuple(b.init_args["ranks"]) == (min(b.init_args["shape"][0], b.init_args["shape"][1] *
                                                                 b.init_args["shape"][2]),
                                                             min(b.init_args["shape"][0] * b.init_args["shape"][1],
                                                                 b.init_args["shape"][2])),
            "Tucker": lambda b: tuple(b.init_args["ranks"]) == tuple(b.init_args["shape"])}
    if spec.family not in full or not full[spec.family](block):
        assert kept > spec.scale / 3


def test_decomposed_param_formulas():
    cin, cout, k = 16, 32, 3
    t2 = parse_block("Tucker2(0.5)").build_conv(conv(cin, cout))
    r1, r2 = t2.init_args["rank_in"], t2.init_args["rank_out"]
    assert trainable(t2) == cin * r1 + r1 * r2 * k * k + r2 * cout
    assert abs(r1 / cin - r2 / cout) <= 1 / cin  # ranks grow together, in proportion to the channels
    svd = parse_block("SVDk(0.5)").build_conv(conv(cin, cout))
    r = svd.init_args["rank"]
    assert trainable(svd) == r * k * (cin + cout) and r == int(0.5 * cin * cout * k / (cin + cout))
    assert parse_block("SVDk(0.001)").rank(conv(cin, cout)) == 1  # never rank 0
    assert parse_block("Tucker2(0.001)").ranks(conv(cin, cout)) == (1, 1)
    tt = parse_block("TT(0.25)").build_conv(conv(cin, cout))
    (n1, n2, n3), (a, b) = tt.init_args["shape"], tt.init_args["ranks"]
    assert (n1, n2, n3) == (8, 8, 8) and trainable(tt) == cin * k * k + n1 * a + a * n2 * b + b * n3
    tk = parse_block("Tucker(0.25)").build_conv(conv(cin, cout))
    (a, b, c) = tk.init_args["ranks"]
    assert trainable(tk) == cin * k * k + a * b * c + 8 * (a + b + c)


@pytest.mark.parametrize("text,fragment,col", [("Tucker2(0)", "in (0, 1]", 9), ("SVDk(1.5)", "in (0, 1]", 6),
                                               ("TT()", "empty argument", 4), ("Tucker(a)", "must be a number", 8)])
def test_fraction_blocks_bad_specs(text, fragment, col):
    with pytest.raises(PolicySyntaxError) as info:
        parse_block(text)
    assert fragment in str(info.value) and f"(column {col})" in str(info.value)


def test_tensorized_blocks_refuse_a_shape_that_does_not_hold_the_matrix():
    from cheapconv.blocks import TensorTrainPointwise, TuckerPointwise

    with pytest.raises(ValueError, match="does not hold"):
        TensorTrainPointwise(16, 16, shape=(4, 4, 4), ranks=(2, 2))
    with pytest.raises(ValueError, match="positive ranks"):
        TuckerPointwise(16, 16, shape=(4, 8, 8), ranks=(2, 0, 2))
