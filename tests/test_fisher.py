"""Fisher potential (BlockSwap's score) and the seeded initialisation of candidate students."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cheapconv.blockswap.fisher import channel_fisher, fisher_potential, module_seed, seeded_init_
from cheapconv.errors import UsageError


class TinyResidual(nn.Module):
    """x -> x + branch(x) -> global mean -> linear. ``inplace`` uses ``h += x`` after the branch."""

    def __init__(self, channels: int = 3, classes: int = 4, inplace: bool = False):
        super().__init__()
        self.branch = nn.Conv2d(channels, channels, 1, bias=False)
        self.fc = nn.Linear(channels, classes)
        self.inplace = inplace

    def forward(self, x):
        h = self.branch(x)
        if self.inplace:
            h += x
        else:
            h = h + x
        return self.fc(h.mean((2, 3)))


def test_channel_fisher_matches_the_definition_written_out():
    a, g = torch.randn(5, 3, 4, 2), torch.randn(5, 3, 4, 2)
    expected = torch.zeros(3, dtype=torch.float64)
    for c in range(3):
        total = 0.0
        for b in range(5):
            s = sum(float(a[b, c, h, w]) * float(g[b, c, h, w]) for h in range(4) for w in range(2))
            total += s * s
        expected[c] = 0.5 * total / 5
    assert torch.allclose(channel_fisher(a, g), expected, rtol=1e-6)


def test_fisher_potential_of_a_block_against_a_hand_computation():
    torch.manual_seed(1)
    model = TinyResidual().double()
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    # by hand: a = W x (1×1 conv), z = Wfc·mean_hw(x + a) + b, L = mean_b CE(z, y)
    with torch.no_grad():
        a = torch.einsum("oc,bchw->bohw", model.branch.weight[:, :, 0, 0], x)
        z = model.fc((x + a).mean((2, 3)))
        dz = (torch.softmax(z, 1) - F.one_hot(y, 4).double()) / x.shape[0]   # dL/dz
        g_per_pixel = (dz @ model.fc.weight) / (5 * 5)                          # dL/da, same for every h, w
        per_sample = g_per_pixel * a.sum((2, 3))                                 # Σ_hw a·g
        delta = 0.5 * per_sample.pow(2).mean(0)
    scores = fisher_potential(model, x, y, ["branch"])
    assert torch.allclose(scores.per_channel["branch"], delta, rtol=1e-10)
    assert scores.total == pytest.approx(float(delta.sum()), rel=1e-10)
    assert scores.per_site == {"branch": pytest.approx(float(delta.sum()), rel=1e-10)}
    assert scores.loss == pytest.approx(float(F.cross_entropy(z, y)))


def test_in_place_residual_add_does_not_change_the_captured_branch_output():
    torch.manual_seed(2)
    plain, inplace = TinyResidual(), TinyResidual(inplace=True)
    inplace.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 3, 5, 5), torch.randint(0, 4, (4,))
    assert fisher_potential(inplace, x, y, ["branch"]).total == pytest.approx(
        fisher_potential(plain, x, y, ["branch"]).total, rel=1e-6)


def test_fisher_potential_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3))
    model.eval()
    model[4].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(5, 3, 6, 6), torch.randint(0, 3, (5,))
    scores = fisher_potential(model, x, y, ["1", "0"])
    assert set(scores.per_site) == {"1", "0"} and scores.total > 0
    assert not model.training and not any(m.training for m in model.modules())
    assert model[0].weight.requires_grad and not model[4].weight.requires_grad
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN statistics restored
    assert all(not m._forward_hooks for m in model.modules())
    assert model[0].weight.grad is None   # activation gradients only


def test_fisher_potential_errors_are_usage_errors():
    model = TinyResidual()
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 4, (2,))
    with pytest.raises(UsageError, match="no module named 'nope'"):
        fisher_potential(model, x, y, ["nope"])
    with pytest.raises(UsageError, match="at least one site"):
        fisher_potential(model, x, y, [])


def test_seeded_init_is_reproducible_per_layer_and_leaves_the_global_generator_alone():
    def net(width):
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, width, 1), nn.Flatten(),
                             nn.Linear(width * 4, 2))

    a, b, c = net(8), net(8), net(16)
    state = torch.random.get_rng_state()
    seeded_init_(a, 7)
    assert torch.equal(torch.random.get_rng_state(), state)
    seeded_init_(b, 7)
    seeded_init_(c, 7)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(a[0].weight, c[0].weight)          # a layer both students share: same weights
    assert not torch.equal(seeded_init_(net(8), 8)[0].weight, a[0].weight)
    assert torch.equal(a[1].weight, torch.ones(8)) and torch.equal(a[4].bias, torch.zeros(2))
    # kaiming-normal, fan-out: std = sqrt(2 / (out_channels * k * k))
    w = seeded_init_(nn.Conv2d(64, 256, 3), 0).weight
    assert w.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert module_seed(0, "x") != module_seed(1, "x") != module_seed(0, "y")
