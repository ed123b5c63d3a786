"""Block-wise reconstruction (issue 11, part 2), the structured weight decay, and the CLI's calibration flags.

Real data: the first images of real Fashion-MNIST (skipped where the Debian package is not installed). The
teacher is a small WRN with random weights whose BatchNorm statistics come from those images: what
reconstruction must do (lower each site's error against that teacher) does not depend on the teacher being
trained, and the tests stay fast.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv import DistillConfig, distill
from cheapconv.blocks import Bottleneck, GroupedPointwise, LowRankPointwise, ShufflePointwise
from cheapconv.data import DEBIAN_FASHION_MNIST_DIR, TensorImageDataset, get_dataset, synthetic_dataset
from cheapconv.errors import UsageError
from cheapconv.models import WideResNet
from cheapconv.reconstruction import fitting_sites
from cheapconv.reconstruction.balance import balance_block
from cheapconv.reconstruction.batchnorm import batchnorms, recalibrate
from cheapconv.reconstruction.linear import Moments, dense_solution, reduced_rank_solution
from cheapconv.train.param_groups import parameter_groups
from cheapconv_cli.main import main

HAVE_FMNIST = (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST is not installed "
                                                         "(apt-get install dataset-fashion-mnist)")


def _student(teacher, spec, init="random"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(teacher, spec, init=init)


@pytest.fixture(scope="module")
def images():
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST is not installed")
    data = get_dataset("fashion-mnist", "train", augment=False, in_chans=3, image_size=32)
    return TensorImageDataset(data.images[:512], data.labels[:512], data.info, augment=False, repeat=data.repeat)


@pytest.fixture(scope="module")
def teacher(images):
    """WRN-10-1 with random weights and BatchNorm statistics from real images (in eval mode)."""
    torch.manual_seed(0)
    net = WideResNet(10, 1)
    x = torch.stack([images[i][0] for i in range(256)])
    recalibrate(batchnorms(net), net, x.split(64))
    return net.eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------- the contract on real data

@needs_fmnist
@pytest.mark.parametrize("spec", [pytest.param("G(4)", marks=pytest.mark.slow), "B(2)", "LR(0.25)"])
def test_reconstruction_lowers_every_site_error(teacher, images, spec):
    student = _student(teacher, spec, init="teacher")
    report = cheapconv.reconstruct(student, teacher, images, samples=64, steps=8, batch_size=32, progress=False)
    assert len(report.sites) == len(student.cheapconv_plan.replaced) > 0
    for site in report.sites:
        assert math.isfinite(site.after) and site.after < site.before, site
        assert site.fitted <= site.start + 1e-6, site
    assert report.improved
    text = str(report)
    assert all(s.name in text for s in report.sites) and "error before" in text
    d = report.as_dict()
    assert d["samples"] == 64 and len(d["sites"]) == len(report.sites)


def test_post_activation_resnet_sites_improve_end_to_end():
    """torchvision's ResNet-18 (post-activation pairs conv1 -> bn1 -> relu -> conv2, bn2 kept): every site ends
    lower than it started in whole forward passes, also where batches and maps are small (a final train-mode
    BatchNorm pass over the blocks once undid layer4's fits here)."""
    teacher = cheapconv.create_model("resnet18").eval()
    student = _student(teacher, "B(2)", init="teacher")
    torch.manual_seed(0)
    report = cheapconv.reconstruct(student, teacher, torch.randn(16, 3, 64, 64), samples=16, batch_size=8, steps=1,
                                   progress=False)
    assert len(report.sites) == 8 and report.improved, [(s.name, s.before, s.after) for s in report.sites]


def test_the_report_says_a_discarded_adam_refinement_leaves_the_fit_standing():
    from cheapconv.reconstruction.report import ADAM_NOT_KEPT, ReconstructionReport, SiteResult

    kept = SiteResult("a.conv", "LRp(0.5)", "activation-aware low rank + Adam", 0.3, 0.2, 0.1, 0.1, 8, 8)
    dropped = SiteResult("b.conv", "LRp(0.5)", f"activation-aware low rank; {ADAM_NOT_KEPT}", 0.3, 0.2, 0.1, 0.1, 8, 8)
    assert "not kept" not in str(ReconstructionReport([kept]))
    text = " ".join(str(ReconstructionReport([kept, dropped])).split())
    assert "undone" not in text and "did not lower its error" in text and "the fit itself" in text


@needs_fmnist
def test_teacher_is_never_modified(teacher, images):
    before = _state(teacher)
    flags = [m.training for m in teacher.modules()]
    grads = [p.requires_grad for p in teacher.parameters()]
    student = _student(teacher, "G(4)")
    student.train()
    cheapconv.reconstruct(student, teacher, images, samples=64, steps=3, batch_size=32, progress=False)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in teacher.modules()] == flags
    assert [p.requires_grad for p in teacher.parameters()] == grads
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in teacher.modules())
    # the student is modified in place (its job) but keeps its own flags and carries no hooks either
    assert all(m.training for m in student.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())


@needs_fmnist
def test_memory_does_not_grow_with_the_calibration_set(teacher, images):
    """What a site holds at once (its cached sample and the moments) is the same for 32 and 160 images: the
    calibration set itself is streamed, batch by batch."""
    peaks, cached = [], []
    for samples in (32, 160):
        student = _student(teacher, "LR(0.25)")
        report = cheapconv.reconstruct(student, teacher, images, samples=samples, steps=1, batch_size=32,
                                       cache_mb=0.125, progress=False)
        assert all(s.streamed_images == samples for s in report.sites)
        peaks.append(report.peak_site_bytes)
        cached.append([s.cached_images for s in report.sites])
    assert peaks[0] == peaks[1] > 0
    assert peaks[0] <= 0.125 * 2**20 + 64 * 64 * 8 * 2   # the cache bound plus two C×C float64 moments
    assert cached[0] == cached[1]


# --------------------------------------------------------------------------------------------- closed forms

def test_least_squares_and_reduced_rank_recover_a_linear_map():
    torch.manual_seed(0)
    w = torch.randn(12, 8, dtype=torch.float64)
    x = torch.randn(16, 8, 5, 5, dtype=torch.float64) * torch.linspace(0.1, 3, 8).view(1, 8, 1, 1)
    y = torch.einsum("oc,nchw->nohw", w, x)
    m = Moments()
    for chunk_x, chunk_y in zip(x.split(4), y.split(4), strict=True):
        m.add(chunk_x, chunk_y)
    assert torch.allclose(dense_solution(m, ridge=0), w, atol=1e-8)
    down, up = reduced_rank_solution(m, 8, ridge=0)
    assert torch.allclose(up @ down, w, atol=1e-8)
    # a block wider than full rank (LR(1) on a widening conv) gets the exact map, its extra rank kept trainable
    down, up = reduced_rank_solution(m, 11, ridge=0)
    assert down.shape == (11, 8) and up.shape == (12, 11) and torch.allclose(up @ down, w, atol=1e-8)
    assert down[8:].abs().sum() > 0 and not up[:, 8:].any()


def test_reconstruction_of_a_block_wider_than_full_rank():
    """LR(1) on WRN-10-1's 16→32 conv has rank 32 > 16: reconstruct fits it instead of failing to reshape."""
    torch.manual_seed(0)
    teacher = WideResNet(10, 1).eval()
    student = _student(teacher, "LR(1)", init="teacher")
    wide = [m for m in student.modules() if isinstance(m, LowRankPointwise)
            and m.down.out_channels > min(m.down.in_channels, m.up.out_channels)]
    assert wide
    data = synthetic_dataset("train", num_samples=32)
    report = cheapconv.reconstruct(student, teacher, data, samples=16, steps=2, batch_size=16, progress=False)
    assert len(report.sites) == len(student.cheapconv_plan.replaced)
    assert all(math.isfinite(s.after) for s in report.sites)


def test_activation_aware_rank_beats_plain_truncated_svd():
    """On inputs with a few dominant directions, the whitened low rank has a lower output error than the
    truncated SVD of the weight alone (the EfficientNet-Lite0 lesson of the issue)."""
    torch.manual_seed(0)
    w = torch.randn(16, 16, dtype=torch.float64)
    scales = torch.tensor([10.0, 8, 6, 5] + [0.1] * 12, dtype=torch.float64)
    x = torch.randn(64, 16, 4, 4, dtype=torch.float64) * scales.view(1, 16, 1, 1)
    y = torch.einsum("oc,nchw->nohw", w, x)
    m = Moments()
    m.add(x, y)
    down, up = reduced_rank_solution(m, 4)
    u, s, vh = torch.linalg.svd(w)
    plain = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]

    def err(a):
        return float((torch.einsum("oc,nchw->nohw", a, x) - y).norm() / y.norm())

    assert err(up @ down) < 0.1 * err(plain)


def test_function_preserving_batchnorm_recalibration():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x = torch.randn(32, 3, 8, 8) * 3 + 1
    before = block(x).detach()
    recalibrate(batchnorms(block), block, x.split(8), preserve=True)
    assert torch.allclose(block(x), before, atol=1e-5)
    assert not torch.allclose(block[1].running_mean, torch.zeros(8))
    assert not block.training and block[1].momentum == 0.1


def _badly_scaled(block: nn.Module) -> nn.Module:
    """``block`` with weights and BatchNorm statistics spread over orders of magnitude, in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.exp(2 * torch.randn(m.weight.shape[0], 1, 1, 1)))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.copy_(torch.exp(3 * torch.randn_like(m.running_var)))
                m.weight.uniform_(-2, 2)
                m.bias.normal_()
    return block.eval()


@pytest.mark.parametrize("make", [
    lambda: Bottleneck(16, 24, 8, 3, padding=1),
    lambda: Bottleneck(16, 16, 8, 3, stride=2, padding=1, groups=8),
    lambda: GroupedPointwise(16, 24, 3, padding=1, groups=4),
])
def test_rescaling_for_training_keeps_the_function_and_fixes_the_scales(make):
    block = _badly_scaled(make())
    x = torch.randn(4, 16, 9, 9)
    before = block(x).detach()
    assert balance_block(block, 0.8) == (4 if isinstance(block, Bottleneck) else 2)
    assert torch.allclose(block(x), before, rtol=1e-4, atol=1e-5 * float(before.abs().max()))
    for name, m in block.named_modules():
        if isinstance(m, nn.Conv2d) and name in ("reduce", "conv", "grouped"):    # each followed by a BatchNorm
            rows = m.weight.reshape(m.out_channels, -1).norm(dim=1)
            assert torch.allclose(rows, torch.full_like(rows, 0.8), rtol=1e-4), name
    bn, nxt = (block.bn2, block.expand) if isinstance(block, Bottleneck) else (block.bn, block.pointwise)
    reads = nxt.weight.transpose(0, 1).reshape(nxt.in_channels, -1).norm(dim=1)
    assert torch.allclose(reads, torch.sqrt(bn.weight ** 2 + bn.bias ** 2), rtol=1e-4)


def test_rescaling_leaves_what_it_cannot_rescale():
    """A channel shuffle between norm and conv, and a block that does not trace: nothing changes."""
    shuffle = _badly_scaled(ShufflePointwise(16, 16, 3, groups=4, padding=1))
    x = torch.randn(2, 16, 6, 6)
    before = shuffle(x).detach()
    balance_block(shuffle, 1.0)
    assert torch.allclose(shuffle(x), before, rtol=1e-4, atol=1e-5 * float(before.abs().max()))

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x     # data-dependent: fx cannot trace it

    branchy = Branchy().eval()
    weight = branchy.conv.weight.clone()
    assert balance_block(branchy, 1.0) == 0 and torch.equal(branchy.conv.weight, weight)
    with pytest.raises(ValueError, match="positive"):
        balance_block(branchy, 0.0)


@needs_fmnist
def test_reconstructed_blocks_are_rescaled_unless_asked_not_to(teacher, images):
    plain, balanced = (_student(teacher, "B(2)", init="teacher") for _ in range(2))
    kw = dict(samples=32, steps=2, batch_size=16, progress=False)
    off = cheapconv.reconstruct(plain, teacher, images, balance=False, **kw)
    on = cheapconv.reconstruct(balanced, teacher, images, **kw)
    assert all("rescaled" in s.method for s in on.sites) and not any("rescaled" in s.method for s in off.sites)
    assert [round(s.after, 4) for s in on.sites] == [round(s.after, 4) for s in off.sites]
    x = torch.stack([images[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.allclose(balanced(x), plain(x), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------- bad input

def test_bad_input_is_a_usage_error():
    teacher = WideResNet(10, 1).eval()
    x = torch.randn(8, 3, 32, 32)
    with pytest.raises(UsageError, match="no cheapconv plan"):
        cheapconv.reconstruct(WideResNet(10, 1), teacher, x, progress=False)
    student = _student(teacher, "G(4)")
    with pytest.raises(UsageError, match="samples must be at least 1.*batchnorm must be one of"):
        cheapconv.reconstruct(student, teacher, x, samples=0, batchnorm="some", progress=False)
    with pytest.raises(UsageError, match="empty"):
        cheapconv.reconstruct(student, teacher, x[:0], progress=False)
    other = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(UsageError, match="teacher"):
        cheapconv.reconstruct(student, other, x, progress=False)
    assert [s.name for s in fitting_sites(student, teacher)] == [e.layer for e in student.cheapconv_plan.replaced]


# --------------------------------------------------------------------------- distillation continues from there

def test_distillation_starts_from_the_initialised_weights(tmp_path):
    """distill() trains the student it is given: with a vanishing learning rate and no decay, one step leaves
    a reconstructed student's weights where they were (no re-initialisation anywhere), also through a file."""
    teacher = WideResNet(10, 1).eval()
    student = _student(teacher, "LR(0.5)", init="teacher")
    cheapconv.reconstruct(student, teacher, torch.randn(32, 3, 32, 32), samples=32, steps=2, progress=False)
    cheapconv.save(student, tmp_path / "s.pt")
    loaded = cheapconv.load(tmp_path / "s.pt")
    start = {k: v.clone() for k, v in loaded.state_dict().items() if "running" not in k and "batches" not in k}
    cfg = DistillConfig(max_steps=1, batch_size=8, lr=1e-12, weight_decay=0.0, momentum=0.0, progress=False,
                        device="cpu", loss="at", grad_clip=1.0)
    distill(teacher, loaded, synthetic_dataset("train", num_samples=16), config=cfg)
    after = loaded.state_dict()
    assert all(torch.allclose(after[k], v, atol=1e-9) for k, v in start.items())


# ------------------------------------------------------------------------------- structured weight decay

def test_structured_blocks_get_compression_scaled_weight_decay():
    teacher = WideResNet(10, 2)
    student = _student(teacher, "LR(0.25)")
    groups = parameter_groups(student, 5e-4)
    entries = student.cheapconv_plan.replaced
    scaled = [g for g in groups if g["name"] != "default"]
    assert len(scaled) == len(entries)
    for g, e in zip(scaled, entries, strict=True):
        assert g["weight_decay"] == pytest.approx(5e-4 * e.params_after / e.params_before)
        assert g["weight_decay"] < 5e-4
        assert sum(p.numel() for p in g["params"]) == e.params_after
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in student.parameters() if p.requires_grad])
    plain = parameter_groups(student, 5e-4, structured=False)
    assert len(plain) == 1 and plain[0]["weight_decay"] == 5e-4
    # Moonshine's blocks keep the plain decay
    assert len(parameter_groups(_student(teacher, "G(4)"), 5e-4)) == 1


@pytest.mark.parametrize("structured", [True, False])
def test_the_training_run_uses_the_groups(monkeypatch, structured):
    seen = []
    real = torch.optim.SGD

    class Recording(real):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            seen.append([g["weight_decay"] for g in self.param_groups])

    monkeypatch.setattr(torch.optim, "SGD", Recording)
    teacher = WideResNet(10, 1).eval()
    student = _student(teacher, "Sep")
    cfg = DistillConfig(max_steps=1, batch_size=8, progress=False, device="cpu", structured_wd=structured)
    distill(teacher, student, synthetic_dataset("train", num_samples=16), config=cfg)
    assert len(seen) == 1
    assert (len(seen[0]) > 1) == structured
    assert max(seen[0]) == 5e-4 and (min(seen[0]) < 5e-4) == structured
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg


# -------------------------------------------------------------------------------------------------- CLI

def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_fmnist
def test_cli_cheapen_with_calibration(tmp_path, capsys):
    out = tmp_path / "s.pt"
    code, stdout, stderr = _cli(capsys, "cheapen", "wrn_10_1", "--block", "G(4)", "--init", "teacher",
                                "--calib-data", "fashion-mnist", "--calib-samples", "64", "--calib-steps", "3",
                                "-o", out)
    assert code == 0, stderr
    assert "Reconstruction on 64 calibration images" in stdout and "error after" in stdout
    assert "zero-padding" in stderr    # the adapters applied to the data are said, as everywhere else
    assert "clipped at 1" in stderr and "cosine" in stderr     # how distill will train what it wrote
    assert "rescaled for training" in stdout
    student = cheapconv.load(out)
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cli_calibration_needs_teacher_init(tmp_path, capsys):
    code, stdout, stderr = _cli(capsys, "cheapen", "wrn_10_1", "--block", "G(4)", "--calib-data", "fashion-mnist",
                                "-o", tmp_path / "s.pt")
    assert code == 2
    assert "--init teacher" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "s.pt").exists()


def test_cli_no_structured_wd_flag(tmp_path, capsys):
    code, stdout, stderr = _cli(capsys, "train", "wrn_10_1", "--data", "synthetic:3x32x32:10:16", "--max-steps", "1",
                                "--batch-size", "8", "--no-structured-wd", "--no-progress", "-o", tmp_path / "m.pt")
    assert code == 0, stderr


def test_cli_distill_keeps_the_initialised_weights(tmp_path, capsys):
    teacher = cheapconv.create_model("wrn_10_1").eval()
    cheapconv.save(teacher, tmp_path / "t.pt")
    student = _student(teacher, "B(2)", init="teacher")
    cheapconv.reconstruct(student, teacher, torch.randn(16, 3, 32, 32), samples=16, steps=1, progress=False)
    cheapconv.save(student, tmp_path / "s.pt")
    code, _, stderr = _cli(capsys, "distill", "--teacher", tmp_path / "t.pt", "--student", tmp_path / "s.pt",
                           "--data", "synthetic:3x32x32:10:16", "--max-steps", "1", "--batch-size", "8",
                           "--lr", "1e-12", "--weight-decay", "0", "--momentum", "0", "--no-progress",
                           "-o", tmp_path / "out.pt")
    assert code == 0, stderr
    start, after = student.state_dict(), cheapconv.load(tmp_path / "out.pt").state_dict()
    weights = [k for k in start if k.endswith("weight")]
    assert weights and all(torch.allclose(after[k], start[k], atol=1e-9) for k in weights)
