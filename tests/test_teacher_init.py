"""Teacher-initialised students (issue 11): closed forms exact at full rank, truncations that improve with rank,
honest records, a teacher that is never touched, and the data-only round trip of the new blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv.blocks import factorize as fz
from cheapconv.blocks import parse_block
from cheapconv.errors import UsageError
from cheapconv.surgery import init_from_teacher, replaced_sites

#: every conv-level block with a closed form (a linear block), spelled for a few ranks
LINEAR = ["Sep", "LR(1)", "LR(0.25)", "LRp(0.5)", "Tucker2(0.3)", "SVDk(0.5)", "TT(0.4)", "Tucker(0.4)", "S-2x2",
          "Shuffle(2)"]


def dense_kernel(block: nn.Module, conv: nn.Conv2d) -> torch.Tensor:
    """The k×k kernel that the linear ``block`` computes in place of ``conv``, composed from its own weights
    (not from the initialiser's factors): einsums for the factorised convs, and for depthwise-then-pointwise
    blocks the pointwise matrix read off the block itself on 1×1 unit images with its depthwise part removed."""
    name = type(block).__name__
    with torch.no_grad():
        if name == "Tucker2Conv":
            return torch.einsum("or,rsyx,sc->ocyx", block.expand.weight[:, :, 0, 0], block.core.weight,
                                block.reduce.weight[:, :, 0, 0])
        if name == "SpatialSVDConv":
            return torch.einsum("rciz,orzj->ocij", block.vertical.weight, block.horizontal.weight)
        if isinstance(block, nn.Conv2d):                    # S-2x2: the corners of the k×k window
            k = conv.kernel_size[0]
            kernel = torch.zeros_like(conv.weight)
            kernel[:, :, ::k - 1, ::k - 1] = block.weight
            return kernel
        depthwise, block.depthwise = block.depthwise, None
        try:
            cin = conv.in_channels
            units = torch.eye(cin, dtype=conv.weight.dtype).reshape(cin, cin, 1, 1)
            matrix = block.eval()(units)[:, :, 0, 0].t()    # (C_out, C_in)
        finally:
            block.depthwise = depthwise
        filters = depthwise.weight[:, 0] if depthwise is not None else torch.ones(cin, 1, 1, dtype=matrix.dtype)
        return matrix[:, :, None, None] * filters[None]


def representable(teacher: nn.Module, policy: str, input_size) -> nn.Module:
    """A copy of ``teacher`` whose replaced convs compute exactly what a random student's blocks compute, so a
    block of that spelling can represent each of them: the 'full rank' of every closed form."""
    teacher = copy.deepcopy(teacher)
    torch.manual_seed(1)
    random_student = cheapconv.cheapen(teacher, policy, input_size=input_size)
    for site in replaced_sites(random_student, teacher):
        block = site.student_block
        if type(block).__name__ == "ShufflePointwise":   # representable when the inner depthwise is the identity
            with torch.no_grad():
                block.mix.weight.zero_()
                block.mix.weight[:, :, 1, 1] = 1.0
        with torch.no_grad():
            site.teacher_conv.weight.copy_(dense_kernel(block, site.teacher_conv))
    return teacher


def _teachers():
    yield "wrn_10_2", cheapconv.WideResNet(10, 2), (3, 32, 32)
    tv = pytest.importorskip("torchvision")
    yield "resnet18", tv.models.resnet18(num_classes=10), (3, 32, 32)


@pytest.mark.parametrize("policy", LINEAR)
def test_closed_forms_are_exact_at_full_rank(policy):
    """On a WRN and a torchvision ResNet (float64), teacher-initialised students compute the teacher's output."""
    for name, teacher, size in _teachers():
        teacher = teacher.double().eval()
        exact_teacher = representable(teacher, policy, size)
        student = cheapconv.cheapen(exact_teacher, policy, input_size=size, init="teacher").eval()
        assert all(r.kind == "exact" for r in student.cheapconv_init), (name, student.cheapconv_init[:3])
        x = torch.randn(2, *size, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(student(x), exact_teacher(x), rtol=1e-7, atol=1e-9, msg=name)


def test_float32_student_matches_to_float_tolerance():
    teacher = representable(cheapconv.WideResNet(10, 2).eval(), "Tucker2(0.3)", (3, 32, 32))
    student = cheapconv.cheapen(teacher, "Tucker2(0.3)", init="teacher").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y, t = student(x), teacher(x)
    assert ((y - t).norm() / t.norm()).item() < 1e-4


@pytest.mark.parametrize("family", ["LRp", "Tucker2", "SVDk", "TT", "Tucker"])
def test_truncated_forms_improve_with_rank(family):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 3, padding=1, bias=False)
    nn.init.normal_(conv.weight)
    errors = []
    for f in (0.1, 0.25, 0.5, 0.8, 1.0):
        holder = nn.Sequential(conv)
        student = cheapconv.cheapen(holder, f"0={family}({f})", input_size=(24, 8, 8), init="teacher")
        (record,) = student.cheapconv_init
        assert record.kind in ("exact", "approximate") and record.weight_error is not None
        errors.append(record.weight_error)
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1], errors


def test_records_are_honest_about_the_error():
    """The recorded weight error is the kernel error the block really computes (measured independently)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    for policy in ("LRp(0.3)", "Tucker2(0.3)", "SVDk(0.3)", "TT(0.3)", "Tucker(0.3)", "Shuffle(2)", "G(4)"):
        student = cheapconv.cheapen(nn.Sequential(conv), f"0={policy}", input_size=(16, 8, 8), init="teacher")
        (record,) = student.cheapconv_init
        block = student.get_submodule("0")
        if policy == "G(4)":
            assert record.kind == "linear start"
            continue
        measured = fz.relative_error(dense_kernel(block, conv), conv.weight.detach())
        assert abs(measured - record.weight_error) < 1e-4, (policy, measured, record.weight_error)


def test_grouped_linear_path_is_exact_on_grouped_representable_kernels():
    """G(g)'s linear start reproduces a kernel Σ_j A_j B_j exactly in its linear path (BN identity, ReLU aside)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1, bias=False)
    random_block = parse_block("G(4)").build_conv(conv)
    grouped, pointwise = random_block.grouped.weight, random_block.pointwise.weight[:, :, 0, 0]
    with torch.no_grad():   # W[:, group j] = P[:, inner channels of j] · G_j
        conv.weight.copy_(torch.cat([torch.einsum("om,mcyx->ocyx", pointwise[:, j * 4:(j + 1) * 4],
                                                  grouped[j * 4:(j + 1) * 4]) for j in range(4)], 1))
    student = cheapconv.cheapen(nn.Sequential(conv), "0=G(4)", input_size=(16, 8, 8), init="teacher")
    (record,) = student.cheapconv_init
    assert record.kind == "linear start" and record.weight_error < 1e-5
    block = student.get_submodule("0").eval()
    x = torch.rand(2, 16, 8, 8)
    with torch.no_grad():  # the BN is the identity in eval mode, so without the ReLU it is the teacher
        torch.testing.assert_close(block.pointwise(block.bn(block.grouped(x))), conv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["LRp(0.5)", "G(4)", "B(2)", "BG(2,M)", "TT(0.5)", "ACDC(2)"])
def test_the_teacher_is_never_modified(policy):
    teacher = cheapconv.WideResNet(10, 2).train()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = {n: m.training for n, m in teacher.named_modules()}
    student = cheapconv.cheapen(teacher, policy, init="teacher")
    init_from_teacher(student, teacher, example_input=torch.randn(2, 3, 32, 32))
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())
    assert flags == {n: m.training for n, m in teacher.named_modules()}
    assert not any(m._forward_hooks for m in teacher.modules())
    # and the student holds no tensor of the teacher's (a later step on the student cannot write into it)
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert not any(p.data_ptr() in teacher_ptrs for p in student.parameters())


def test_output_errors_and_kinds_of_nonlinear_blocks():
    teacher = cheapconv.WideResNet(10, 2).eval()
    x = torch.randn(2, 3, 32, 32)
    for policy, kind in (("G(4)", "linear start"), ("B(2)", "linear start"), ("ACDC(2)", "random")):
        student = cheapconv.cheapen(teacher, policy, init="teacher")
        records = init_from_teacher(student, teacher, example_input=x)
        assert {r.kind for r in records} == {kind}
        assert all(r.output_error == r.output_error and r.output_error >= 0 for r in records)  # measured, not NaN


def test_replaced_sites_pair_teacher_convs_with_student_blocks():
    teacher = cheapconv.WideResNet(10, 2)
    student = cheapconv.cheapen(teacher, "block1.*=B(2); G(4)")
    sites = replaced_sites(student, teacher)
    assert [s.name for s in sites] == [e.layer for e in student.cheapconv_plan.replaced]
    pair = next(s for s in sites if len(s.teacher_convs) == 2)
    assert pair.teacher_conv is teacher.get_submodule(pair.entry.convs[0])
    assert pair.teacher_last is teacher.get_submodule(pair.entry.convs[1])
    assert type(pair.student_block).__name__ == "Bottleneck"
    assert pair.student_block is student.get_submodule(pair.entry.convs[0])
    with pytest.raises(UsageError, match="no cheapconv plan"):
        replaced_sites(teacher, teacher)
    with pytest.raises(UsageError, match="'random' .* or 'teacher'"):
        cheapconv.cheapen(teacher, "G(4)", init="pretrained")


def test_random_init_is_still_the_default():
    teacher = representable(cheapconv.WideResNet(10, 2).eval(), "LR(1)", (3, 32, 32))
    student = cheapconv.cheapen(teacher, "LR(1)").eval()
    assert not hasattr(student, "cheapconv_init") and "init" not in student.cheapconv_recipe
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(student(x), teacher(x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("policy", ["Tucker2(0.3)", "SVDk(0.5)", "TT(0.4)", "Tucker(0.4)"])
def test_new_blocks_round_trip_data_only(policy, tmp_path):
    teacher = cheapconv.WideResNet(10, 2).eval()
    student = cheapconv.cheapen(teacher, policy, init="teacher").eval()
    path = tmp_path / "s.pt"
    assert cheapconv.save(student, path) == "graph"          # data-only: no pickle
    torch.load(path, weights_only=True)                      # readable without unpickling code
    loaded = cheapconv.load(path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x))
    assert cheapconv.read_recipe(path)["init"] == "teacher"


def test_cli_init_teacher(tmp_path, capsys):
    from cheapconv_cli.main import main

    out_file = tmp_path / "student.pt"
    code = main(["cheapen", "wrn_10_1", "--block", "SVDk(0.5)", "--init", "teacher", "-o", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Initialised from the teacher" in out and "approximate" in out and "block1.0.conv1" in out
    assert cheapconv.read_recipe(out_file)["init"] == "teacher"
    code = main(["cheapen", "wrn_10_1", "--block", "G(4)", "--init", "copy", "-o", str(tmp_path / "x.pt")])
    out, err = capsys.readouterr()
    assert code == 2 and "--init" in err and not (tmp_path / "x.pt").exists()
