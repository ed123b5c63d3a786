"""Dense prediction (issue 12): dict/tuple outputs through distill and evaluate, taps on dilated and non-dilated
backbones, per-pixel losses against hand computations, mIoU against a hand-computed confusion matrix, the
fashion-mnist-seg dataset (deterministic, masks agree with pixels), VOC / Cityscapes on tiny fake trees, and the
CLI's segmentation figures."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cheapconv
from cheapconv import DistillConfig, distill, evaluate
from cheapconv.data import DEBIAN_FASHION_MNIST_DIR, get_dataset
from cheapconv.data.info import DatasetInfo
from cheapconv.data.segmentation import FOREGROUND, SegmentationTensorDataset, fashion_mnist_scenes
from cheapconv.errors import UsageError
from cheapconv.surgery.taps import find_stages, match_taps, record
from cheapconv.train.losses import cross_entropy, distillation_loss, kd_loss, split_output
from cheapconv.train.metrics import Meters, batch_stats, confusion_counts

HAS_FMNIST = (DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason="real Fashion-MNIST not installed (make data)")
INFO = DatasetInfo("toy-seg", 3, 1, 16, (0.5,), (0.25,), task="segmentation")


def _toy_seg(n: int = 32, size: int = 16, seed: int = 0) -> SegmentationTensorDataset:
    """Learnable toy scenes: a bright square (class 1) or a mid-grey square (class 2) on black (class 0)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        cls = 1 + i % 2
        images[i, 0, top:top + size // 2, left:left + size // 2] = 250 if cls == 1 else 120
        masks[i, top:top + size // 2, left:left + size // 2] = cls
    return SegmentationTensorDataset(images, masks, INFO, augment=False)


class _TupleOut(nn.Module):
    """A segmentation net that returns (logits, features): the prediction comes first."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out, out.mean()


_FAST = dict(batch_size=8, lr=0.05, progress=False, num_workers=0, device="cpu")


# ------------------------------------------------------------------------------------------ outputs


def test_split_output_picks_the_prediction():
    t, a = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert split_output(t) == (t, None)
    p, aux = split_output({"out": t, "aux": a})
    assert p is t and aux is a
    assert split_output((t, a))[0] is t and split_output((t, a))[1] is None
    with pytest.raises(UsageError, match="'out'"):
        split_output({"logits": t})
    with pytest.raises(UsageError, match="tensor"):
        split_output("nope")


def test_distill_and_evaluate_with_dict_output_and_aux_loss():
    torch.manual_seed(0)
    teacher = cheapconv.create_model("segwrn_10_1", num_classes=3, in_chans=1, aux_loss=True)
    out = teacher(torch.zeros(2, 1, 16, 16))
    assert set(out) == {"out", "aux"} and out["aux"].shape == out["out"].shape == (2, 3, 16, 16)
    data = _toy_seg()
    r = distill(None, teacher, data, val_data=data, config=DistillConfig(max_steps=4, log_every=2, **_FAST))
    assert 0.0 <= r.last["val_miou"] <= 1.0 and 0.0 <= r.last["val_pixel_acc"] <= 1.0
    assert "train_miou" in r.last and "val_top1" not in r.last
    student = cheapconv.cheapen(teacher, "G(4)")
    r = distill(teacher, student, data, val_data=data,
                config=DistillConfig(max_steps=3, loss="at+kd", log_every=1, **_FAST))
    res = evaluate(student, data, batch_size=16)
    assert set(res) >= {"miou", "pixel_acc", "iou", "loss", "n"} and res["n"] == len(data)
    assert res["miou"] == pytest.approx(r.last["val_miou"])


def test_aux_head_loss_is_added_with_its_weight():
    logits, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    total, terms = distillation_loss("ce", logits, y, student_aux=aux, aux_weight=0.5)
    assert float(total) == pytest.approx(float(F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(aux, y)), rel=1e-6)
    assert float(terms["aux"]) == pytest.approx(float(F.cross_entropy(aux, y)), rel=1e-6)


def test_distill_and_evaluate_with_tuple_output():
    torch.manual_seed(0)
    model = _TupleOut(cheapconv.create_model("segwrn_10_1", num_classes=3, in_chans=1))
    data = _toy_seg(16)
    r = distill(None, model, data, val_data=data, config=DistillConfig(max_steps=2, **_FAST))
    assert 0.0 <= r.last["val_miou"] <= 1.0
    assert 0.0 <= evaluate(model, data)["pixel_acc"] <= 1.0


def test_wrong_class_count_is_a_usage_error():
    model = cheapconv.create_model("segwrn_10_1", num_classes=5, in_chans=1)
    with pytest.raises(UsageError, match="num-classes 3"):
        distill(None, model, _toy_seg(16), config=DistillConfig(max_steps=1, **_FAST))


# ------------------------------------------------------------------------------------------- losses


def test_per_pixel_ce_ignores_the_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3)
    y = torch.randint(0, 4, (2, 3, 3))
    y[0, 0, 0] = y[1, 2, 1] = 255
    hand, count = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(3):
                if y[b, i, j] == 255:
                    continue
                hand -= float(torch.log_softmax(logits[b, :, i, j], 0)[y[b, i, j]])
                count += 1
    assert float(cross_entropy(logits, y, 255)) == pytest.approx(hand / count, rel=1e-5)


@pytest.mark.parametrize("reduction", ["batchmean", "reference"])
def test_per_pixel_kd_against_a_hand_computation(reduction):
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3, 2), torch.randn(2, 5, 3, 2)
    y = torch.randint(0, 5, (2, 3, 2))
    y[1, 0, 1] = 255
    alpha, temp = 0.7, 3.0
    kl_sum, n_valid = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(2):
                if y[b, i, j] == 255:
                    continue
                p_t = torch.softmax(t[b, :, i, j] / temp, 0)
                log_p_s = torch.log_softmax(s[b, :, i, j] / temp, 0)
                kl_sum += float((p_t * (p_t.log() - log_p_s)).sum())
                n_valid += 1
    soft = alpha * temp * temp * kl_sum / n_valid
    if reduction == "reference":
        soft = 2.0 * soft / 5
    ce = float(cross_entropy(s, y, 255))
    got = float(kd_loss(s, t, y, alpha=alpha, temperature=temp, reduction=reduction))
    assert got == pytest.approx((1 - alpha) * ce + soft, rel=1e-5)


def test_kd_rejects_mismatched_dense_logits():
    with pytest.raises(UsageError, match="same shape"):
        kd_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------ metrics


def _logits_for(pred: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(pred, k).permute(0, 3, 1, 2).float()


def test_miou_against_a_hand_computed_confusion_matrix():
    labels = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    conf = confusion_counts(_logits_for(pred, 3), labels)
    # rows: label, columns: prediction; the 255 pixel is not counted
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    # IoU: class 0: 1/(2+1-1) = 1/2; class 1: 2/(2+4-2) = 1/2; class 2: 0/(1+0-0) = 0
    meters = Meters("cpu")
    meters.add(batch_stats({}, _logits_for(pred, 3), labels))
    s = meters.summary()
    assert s["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert s["pixel_acc"] == pytest.approx(3 / 5)


def test_miou_sums_counts_over_batches_of_different_sizes():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (5, 6, 6))
    pred = torch.randint(0, 4, (5, 6, 6))
    meters = Meters("cpu")
    meters.add(batch_stats({"ce": torch.tensor(1.0)}, _logits_for(pred[:1], 4), labels[:1]))
    meters.add(batch_stats({"ce": torch.tensor(2.0)}, _logits_for(pred[1:], 4), labels[1:]))
    s = meters.summary()
    conf = confusion_counts(_logits_for(pred, 4), labels)
    inter, union = conf.diagonal(), conf.sum(0) + conf.sum(1) - conf.diagonal()
    assert s["miou"] == pytest.approx(float((inter / union).mean()))
    assert s["pixel_acc"] == pytest.approx(float(inter.sum() / conf.sum()))
    assert s["ce"] == pytest.approx((1.0 + 2.0 * 4) / 5) and s["n"] == 5


def test_evaluate_reports_miou_for_a_known_prediction():
    data = _toy_seg(8)

    class Oracle(nn.Module):   # predicts class 1 wherever the pixel is bright, else background
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            bright = (x[:, 0] > 0).long()
            return {"out": _logits_for(bright, 3) + self.w}

    res = evaluate(Oracle(), data)
    conf = torch.zeros(3, 3)
    for i in range(len(data)):
        x, m = data[i]
        p = (x[0] > 0).long()
        for a, b in zip(m.flatten().tolist(), p.flatten().tolist(), strict=True):
            conf[a, b] += 1
    inter, union = conf.diagonal(), conf.sum(0) + conf.sum(1) - conf.diagonal()
    assert res["miou"] == pytest.approx(float((inter / union).mean()))
    assert res["pixel_acc"] == pytest.approx(float(inter.sum() / conf.sum()))


# --------------------------------------------------------------------------------------------- taps


def test_taps_on_dilated_backbones_find_every_stage_and_the_decoder():
    pytest.importorskip("torchvision")
    fcn = cheapconv.create_model("fcn_resnet50", num_classes=4)
    assert find_stages(fcn) == ["backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4",
                                "classifier.2"]
    deeplab = cheapconv.create_model("deeplabv3_mobilenet_v3_large", num_classes=4, aux_loss=True)
    stages = find_stages(deeplab, torch.zeros(1, 3, 64, 64))
    # the dilated last stage (same resolution as the one before it) is a stage of its own; ASPP and the
    # decoder conv are the head's stages; the auxiliary head is no stage
    assert stages == ["backbone.1", "backbone.3", "backbone.6", "backbone.12", "backbone.16", "classifier.0",
                      "classifier.3"]
    lraspp = cheapconv.create_model("lraspp_mobilenet_v3_large", num_classes=4)
    assert find_stages(lraspp, torch.zeros(1, 3, 64, 64))[-1] == "classifier.cbr"   # not the 1×1 gate


def test_taps_on_non_dilated_backbones():
    pytest.importorskip("torchvision")
    assert find_stages(cheapconv.create_model("resnet18")) == ["layer1", "layer2", "layer3", "layer4"]
    seg = cheapconv.create_model("segwrn_10_1", in_chans=1)
    assert find_stages(seg) == ["block1", "block2", "block3", "up2", "up1"]
    with record(seg) as acts:
        seg(torch.zeros(2, 1, 16, 16))
    assert [tuple(a.shape[-2:]) for a in acts] == [(16, 16), (8, 8), (4, 4), (8, 8), (16, 16)]


def test_named_taps_in_a_traced_student_and_matching_by_name():
    teacher = cheapconv.create_model("segwrn_10_1", in_chans=1)
    student = cheapconv.cheapen(teacher, "G(4)")
    assert match_taps(teacher, student) == (["block1", "block2", "block3", "up2", "up1"],) * 2
    assert match_taps(teacher, student, ["up1", "block2"]) == (["up1", "block2"], ["up1", "block2"])
    x = torch.randn(2, 1, 16, 16)
    # user-named stages: in the order named, whatever order the forward reaches them in
    with record(student, ["up1", "block2"]) as s_acts, record(teacher, ["up1", "block2"]) as t_acts:
        student(x)
        teacher(x)
        student(x)
    assert [a.shape for a in s_acts] == [a.shape for a in t_acts] == [(2, 16, 16, 16), (2, 32, 8, 8)]
    # a stage of the traced student without a Tap, recorded at its last module call
    with record(student, ["stem"]) as acts:
        student(x)
    assert acts[0].shape == (2, 16, 16, 16)
    with pytest.raises(UsageError, match="No stage"):
        with record(student, ["nope"]):
            pass


def test_distill_with_named_taps():
    torch.manual_seed(0)
    teacher = cheapconv.create_model("segwrn_10_1", num_classes=3, in_chans=1)
    student = cheapconv.cheapen(teacher, "B(2)")
    loss = {"name": "at", "taps": ("block3", "up1")}
    r = distill(teacher, student, _toy_seg(16), config=DistillConfig(max_steps=2, loss=loss, log_every=1, **_FAST))
    assert r.steps == 2 and math.isfinite(r.history[-1]["at"])
    assert DistillConfig.from_dict(DistillConfig(loss={"name": "at", "taps": ["a", "b"]}).to_dict()).loss.taps \
        == ("a", "b")


# ------------------------------------------------------------------------------------------ datasets


def _fake_items(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    items = (torch.rand(n, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    items[:, :, :4] = 0   # some background inside the item's box
    return items, torch.arange(n) % 10


def test_scenes_are_deterministic_and_masks_match_pixels():
    items, labels = _fake_items()
    a = fashion_mnist_scenes(items, labels, num_scenes=30, canvas=40, max_items=3, seed=5)
    b = fashion_mnist_scenes(items, labels, num_scenes=30, canvas=40, max_items=3, seed=5)
    c = fashion_mnist_scenes(items, labels, num_scenes=30, canvas=40, max_items=3, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    scenes, masks = a
    assert scenes.shape == (30, 1, 40, 40) and masks.shape == (30, 40, 40)
    assert torch.equal(scenes[:, 0] >= FOREGROUND, masks > 0)       # an item's pixels are exactly its mask
    assert (scenes[:, 0][masks == 0] == 0).all()                      # background is black
    assert int(masks.max()) <= 10 and (masks > 0).flatten(1).any(1).all()   # every scene holds an item


def test_joint_augmentation_keeps_masks_on_their_pixels():
    items, labels = _fake_items()
    scenes, masks = fashion_mnist_scenes(items, labels, num_scenes=16, canvas=32, max_items=2, seed=0)
    info = DatasetInfo("s", 11, 1, 32, (0.0,), (1.0,), task="segmentation")
    data = SegmentationTensorDataset(scenes, masks, info, augment=True, crop_padding=4, repeat=3)
    torch.manual_seed(0)
    x, m = data.transform_pair(torch.arange(16))
    assert x.shape == (16, 3, 32, 32) and m.shape == (16, 32, 32) and m.dtype == torch.int64
    assert torch.equal((x[:, 0] * 255).round() >= FOREGROUND, m > 0)
    assert not torch.equal(m, masks.long())   # something moved


@needs_fmnist
def test_fashion_mnist_seg_by_name():
    test = get_dataset("fashion-mnist-seg:32:2", "test", in_chans=3)
    again = get_dataset("fashion-mnist-seg:32:2", "test", in_chans=3)
    assert test.info.task == "segmentation" and test.info.num_classes == 11 and len(test) == 2000
    x, m = test[0]
    assert x.shape == (3, 32, 32) and m.shape == (32, 32)
    assert torch.equal(test.masks, again.masks) and torch.equal(test.images, again.images)
    assert not torch.equal(get_dataset("fashion-mnist-seg:32:2", "test", seed=1).masks, test.masks)
    with pytest.raises(UsageError, match="fashion-mnist-seg:48"):
        get_dataset("fashion-mnist-seg:32", "test", image_size=48)


def _png(path, array, mode):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.numpy(), mode=mode).save(path)


def test_voc_from_a_fake_tree(tmp_path):
    pytest.importorskip("torchvision")
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for i, split in enumerate(("train", "val")):
        name = f"2007_00000{i}"
        _png(root / "JPEGImages" / f"{name}.jpg", torch.full((20, 30, 3), 100, dtype=torch.uint8), "RGB")
        mask = torch.zeros(20, 30, dtype=torch.uint8)
        mask[5:15, 5:15], mask[0] = 15, 255   # a person, and an unlabelled border row
        _png(root / "SegmentationClass" / f"{name}.png", mask, "L")
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(name + "\n")
    data = get_dataset("voc", "test", data_dir=tmp_path, image_size=16)
    assert data.info.num_classes == 21 and data.info.ignore_index == 255 and len(data) == 1
    x, m = data[0]
    assert x.shape == (3, 16, 16) and m.shape == (16, 16) and m.dtype == torch.int64
    assert set(m.unique().tolist()) <= {0, 15, 255} and 15 in m.unique().tolist()
    x, m = get_dataset("voc", "train", data_dir=tmp_path, image_size=16)[0]
    assert x.shape == (3, 16, 16) and m.shape == (16, 16)


def test_cityscapes_from_a_fake_tree(tmp_path):
    pytest.importorskip("torchvision")
    for split in ("train", "val"):
        _png(tmp_path / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png",
             torch.full((16, 32, 3), 50, dtype=torch.uint8), "RGB")
        ids = torch.full((16, 32), 7, dtype=torch.uint8)   # road (train id 0)
        ids[:, 16:] = 26                                    # car (train id 13)
        ids[0] = 1                                          # ego vehicle: ignored
        _png(tmp_path / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", ids, "L")
    data = get_dataset("cityscapes", "test", data_dir=tmp_path, image_size=16)
    assert data.info.num_classes == 19 and len(data) == 1
    _, m = data[0]
    assert set(m.unique().tolist()) == {0, 13, 255}


def test_missing_voc_says_where_it_looked(tmp_path):
    with pytest.raises(cheapconv.errors.DatasetNotFoundError, match="VOCdevkit"):
        get_dataset("voc", "train", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- zoo


def test_segmentation_names_build_with_num_classes_and_aux(tmp_path):
    pytest.importorskip("torchvision")
    m = cheapconv.create_model("deeplabv3_mobilenet_v3_large", num_classes=5, aux_loss=True).eval()
    out = m(torch.zeros(1, 3, 64, 64))
    assert out["out"].shape == (1, 5, 64, 64) and out["aux"].shape == (1, 5, 64, 64)
    seg = cheapconv.create_model("segwrn_10_2", num_classes=4, in_chans=1)
    assert seg.classifier.out_channels == 4
    assert cheapconv.save(seg, tmp_path / "seg.pt") == "recipe"   # rebuilt from its name: no pickle
    again = cheapconv.load(tmp_path / "seg.pt")
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(again.eval()(x), seg.eval()(x))
    with pytest.raises(UsageError, match="21 classes"):
        cheapconv.create_model("fcn_resnet50", num_classes=5, pretrained=True)


# ---------------------------------------------------------------------------------------------- CLI


@needs_fmnist
def test_cli_evaluate_json_has_miou_and_pixel_acc(tmp_path, capsys):
    from cheapconv_cli.main import main

    model = cheapconv.create_model("segwrn_10_1", num_classes=11, in_chans=1)
    cheapconv.save(cheapconv.cheapen(model, "G(4)"), tmp_path / "s.pt")
    code = main(["evaluate", str(tmp_path / "s.pt"), "--data", "fashion-mnist-seg:16:1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert 0.0 <= res["miou"] <= 1.0 and 0.0 <= res["pixel_acc"] <= 1.0 and len(res["iou"]) == 11
    assert res["n"] == 2000 and "top1" not in res


@pytest.mark.slow
@needs_fmnist
def test_cli_train_distill_evaluate_segmentation(tmp_path, capsys):
    from cheapconv_cli.main import main

    t_file, s_file, out_file = tmp_path / "t.pt", tmp_path / "s.pt", tmp_path / "trained.pt"
    code = main(["train", "segwrn_10_1", "--data", "fashion-mnist-seg:16:1", "--max-steps", "2", "-b", "8",
                 "--no-progress", "-o", str(t_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "val mIoU" in out
    assert main(["cheapen", str(t_file), "--block", "G(4)", "-o", str(s_file)]) == 0
    capsys.readouterr()
    code = main(["distill", "-t", str(t_file), "-s", str(s_file), "--data", "fashion-mnist-seg:16:1",
                 "--max-steps", "2", "-b", "8", "--no-progress", "--taps", "block2, up1", "-o", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "attention-transfer taps: block2, up1 (matched by name)" in err
    code = main(["evaluate", str(out_file), "--data", "fashion-mnist-seg:16:1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert 0.0 <= res["miou"] <= 1.0 and 0.0 <= res["pixel_acc"] <= 1.0 and len(res["iou"]) == 11
    assert main(["evaluate", str(out_file), "--data", "fashion-mnist-seg:16:1"]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_progress_lines_show_miou_for_segmentation():
    from cheapconv.data import SegmentationTensorDataset, default_workers
    from cheapconv.train import callbacks

    seg = callbacks._epoch_line({"epoch": 1, "loss": 0.5, "lr": 0.1, "train_miou": 0.25, "val_miou": 0.2,
                                 "val_pixel_acc": 0.9})
    assert "train mIoU=25.00%" in seg and "val mIoU=20.00%" in seg and "pixel acc=90.00%" in seg
    assert "top1" not in seg
    cls = callbacks._epoch_line({"epoch": 1, "loss": 0.5, "lr": 0.1, "train_top1": 0.5, "val_top1": 0.6,
                                 "val_top5": 0.9})
    assert "train top1=50.00%" in cls and "val top1=60.00%" in cls and "mIoU" not in cls
    # scenes live in memory: no worker processes by default (they would only copy batches between processes)
    data = SegmentationTensorDataset.__new__(SegmentationTensorDataset)
    assert default_workers(data) == 0
