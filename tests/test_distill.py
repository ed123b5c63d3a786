"""The distillation loop: it learns (scratch, AT, KD on real Fashion-MNIST), leaves the teacher alone, and
fails early and clearly on mismatched taps, channels, non-finite losses and bad settings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import cheapconv
from cheapconv import DistillConfig, distill
from cheapconv.data import DEBIAN_FASHION_MNIST_DIR, TensorImageDataset, get_dataset, synthetic_dataset
from cheapconv.errors import UsageError
from cheapconv.models import WideResNet
from cheapconv.train.loop import NonFiniteLossError

HAVE_FMNIST = (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


def _subset(ds: TensorImageDataset, n: int, augment: bool) -> TensorImageDataset:
    return TensorImageDataset(ds.images[:n], ds.labels[:n], ds.info, augment=augment)


@pytest.fixture(scope="module")
def fmnist():
    """1,024 training and 512 test images of real Fashion-MNIST, 1 channel, 28×28."""
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    train = get_dataset("fashion-mnist", "train")
    test = get_dataset("fashion-mnist", "test")
    return _subset(train, 1024, augment=False), _subset(test, 512, augment=False)


FAST = DistillConfig(epochs=3, batch_size=64, lr=0.1, schedule="cosine", progress=False, log_every=4)


@pytest.fixture(scope="module")
def teacher(fmnist):
    torch.manual_seed(0)
    net = WideResNet(10, 1, in_chans=1)
    result = distill(None, net, fmnist[0], val_data=fmnist[1], config=FAST)
    return net, result


def _student(teacher_net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cheapconv.cheapen(teacher_net, "G(4)", input_size=(1, 28, 28))


def test_scratch_training_reduces_the_loss(teacher):
    _, result = teacher
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < 0.8 * first["loss"]
    assert last["val_top1"] > 0.4          # 10 classes: chance is 0.1
    assert result.last["loss_kind"] == "ce"


@pytest.mark.parametrize("loss", ["at", "kd"])
def test_distillation_reduces_the_loss(teacher, fmnist, loss):
    net, _ = teacher
    torch.manual_seed(0)
    result = distill(net, _student(net), fmnist[0], val_data=fmnist[1], config=FAST.replace(loss=loss, epochs=2))
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < first["loss"]
    assert last["ce"] < first["ce"]
    assert last[loss] < first[loss]        # the distillation term itself goes down


def test_teacher_is_never_updated(teacher, fmnist):
    net, _ = teacher
    net.train()  # its own flag must come back; during distillation it runs in eval mode regardless
    net.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}  # BN running stats and counters included
    distill(net, _student(net), fmnist[0], config=FAST.replace(epochs=1, loss="at+kd"))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())
    assert net.training and all(m.training for m in net.modules())


class TwoStage(nn.Module):
    """A student with two stages (layer1, layer2), where the WRN teacher has three."""

    def __init__(self, in_chans: int = 1):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


def test_tap_mismatch_is_a_clear_error_before_the_first_step(teacher, fmnist):
    net, _ = teacher
    student = TwoStage()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(UsageError) as info:
        distill(net, student, fmnist[0], config=FAST.replace(loss="at"))
    msg = str(info.value)
    assert "student 2 tap(s): layer1 (28×28), layer2 (14×14)" in msg
    assert "teacher 3 tap(s): block1 (28×28), block2 (14×14), block3 (7×7)" in msg
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_channel_mismatch_names_the_adapter():
    data = synthetic_dataset("train", channels=1, image_size=16, num_samples=64)
    with pytest.raises(UsageError, match=r"in_chans=3 \(--in-chans 3\)"):
        distill(None, WideResNet(10, 1), data, config=FAST.replace(batch_size=32))


class NaNAfter(nn.Module):
    """Wraps a model; its output turns NaN from the k-th call on."""

    def __init__(self, inner: nn.Module, k: int):
        super().__init__()
        self.inner, self.k, self.calls = inner, k, 0

    def forward(self, x):
        self.calls += 1
        y = self.inner(x)
        return y * float("nan") if self.calls >= self.k else y


def test_non_finite_loss_stops_naming_step_and_term(tmp_path):
    data = synthetic_dataset("train", channels=3, image_size=16, num_samples=64)
    model = NaNAfter(TwoStage(in_chans=3), k=3)
    ckpt = tmp_path / "run.ckpt"
    cfg = FAST.replace(batch_size=16, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"'ce' became non-finite \(nan\) at step 3 \(epoch 1\)") as info:
        distill(None, model, data, config=cfg, checkpoint=ckpt)
    # the last checkpoint (step 2) was written closest to the blow-up: the run goes back to the one before
    assert "set back to step 1" in str(info.value)
    from cheapconv.train.checkpoint import load_checkpoint

    payload = load_checkpoint(ckpt)
    assert payload["step"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_ce_loss_without_teacher_and_at_without_teacher():
    data = synthetic_dataset("train", channels=3, image_size=16, num_samples=64)
    with pytest.raises(UsageError, match="none was given"):
        distill(None, TwoStage(3), data, config=FAST.replace(loss="at"))
    with pytest.raises(UsageError, match="fewer than one batch"):
        distill(None, TwoStage(3), data, config=FAST.replace(batch_size=128))


def test_config_schedule_and_round_trip():
    cfg = DistillConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (200, 128, 0.1, 0.9, 5e-4)
    spe = 391
    lrs = {e: cfg.lr * cfg.lr_factor(e * spe, spe) for e in (0, 59, 60, 119, 120, 160, 199)}
    assert lrs[0] == lrs[59] == pytest.approx(0.1)
    assert lrs[60] == lrs[119] == pytest.approx(0.02)
    assert lrs[120] == pytest.approx(0.004) and lrs[160] == lrs[199] == pytest.approx(0.0008)
    cos = cfg.replace(schedule="cosine", warmup_epochs=1)
    assert cos.lr_factor(0, 10) == pytest.approx(0.1) and cos.lr_factor(2000 - 1, 10) < 1e-4
    assert DistillConfig.from_dict(cos.to_dict()) == cos
    assert cfg.resolved_loss(teacher=True) == "at" and cfg.resolved_loss(teacher=False) == "ce"
    with pytest.raises(UsageError, match="Unknown training setting"):
        DistillConfig.from_dict({"lr": 0.1, "lrr": 1})
    with pytest.raises(UsageError, match="unknown precision"):
        DistillConfig(precision="fp8")
    with pytest.raises(UsageError, match="Unknown loss kind"):
        DistillConfig(loss="mse")


def test_bf16_channels_last_and_evaluate(teacher, fmnist):
    net, result = teacher
    fp32 = cheapconv.evaluate(net, fmnist[1])
    assert fp32["top1"] == pytest.approx(result.last["val_top1"])
    bf16 = cheapconv.evaluate(net, fmnist[1], precision="bf16", channels_last=True)
    assert abs(bf16["top1"] - fp32["top1"]) < 0.03 and bf16["n"] == 512
    net.train()
    cheapconv.evaluate(net, fmnist[1])
    assert net.training
