"""torchvision's detection families: cheapen the backbone, FPN and head convs, keep the output structure,
run in eval mode and train with targets (batch 2), count MACs, profile, and leave the teacher untouched."""

from __future__ import annotations

import warnings

import pytest
import torch

import cheapconv

detection = pytest.importorskip("torchvision.models.detection")

FAMILIES = {
    "retinanet_resnet50_fpn": "G(4)", "fasterrcnn_resnet50_fpn": "G(4)", "fcos_resnet50_fpn": "G(4)",
    "ssd300_vgg16": "G(4)", "ssdlite320_mobilenet_v3_large": "LRp(0.25)", "maskrcnn_resnet50_fpn": "G(4)",
    "keypointrcnn_resnet50_fpn": "G(4)",
}


def _targets(name: str) -> list[dict]:
    targets = []
    for _ in range(2):
        t = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])}
        if name.startswith("maskrcnn"):
            t["masks"] = torch.zeros(1, 128, 128, dtype=torch.uint8)
            t["masks"][0, 12:70, 10:60] = 1
        if name.startswith("keypointrcnn"):
            t["keypoints"] = torch.tensor([[[20.0, 30.0, 1.0]] * 17])
        targets.append(t)
    return targets


def check_family(name: str) -> None:
    kwargs = {"weights": None, "weights_backbone": None}
    if not name.startswith("ssd"):
        kwargs.update(min_size=128, max_size=128)
    torch.manual_seed(0)
    teacher = getattr(detection, name)(**kwargs).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = cheapconv.cheapen(teacher, FAMILIES[name], input_size=(3, 128, 128))
    assert student.cheapconv_plan.replaced
    assert cheapconv.count_params(student) < cheapconv.count_params(teacher)
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    with torch.no_grad():
        out = student.eval()(images)
    assert isinstance(out, list) and len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    losses = student.train()(images, _targets(name))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # a detector's head runs once per detection, so its MACs depend on the weights (random here): the backbone
    # (with the FPN), which runs once per image, is what the comparison can rely on
    assert cheapconv.count_macs(student.eval(), (1, 3, 128, 128)) > 0
    side = 300 if name.startswith("ssd300") else 320 if name.startswith("ssdlite") else 128  # SSD resizes to these
    shape = (1, 3, side, side)
    assert cheapconv.count_macs(student.backbone, shape) < cheapconv.count_macs(teacher.backbone, shape)
    after = teacher.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert isinstance(teacher([torch.rand(3, 128, 128)]), list)  # the teacher still runs (no meta leftovers)


def test_retinanet_cheapens_trains_and_counts():
    check_family("retinanet_resnet50_fpn")


def test_a_detector_profiles():
    student = cheapconv.cheapen(detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None),
                                "LRp(0.25)", input_size=(3, 128, 128))
    p = cheapconv.profile(student, (3, 128, 128), batch=2, warmup=1, repeats=2, per_layer=False)
    assert p.macs > 0 and all(lat.median_ms > 0 for lat in p.latency.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_detection_family(name):
    check_family(name)


def check_saves_as_data(name: str, tmp_path) -> None:
    """A detector built by name saves as a recipe (no pickle) and loads without trust, with equal outputs."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = cheapconv.cheapen(cheapconv.create_model(name, num_classes=5), FAMILIES.get(name, "G(4)"))
        assert cheapconv.save(student, tmp_path / "det.pt") == "recipe"
        loaded = cheapconv.load(tmp_path / "det.pt")           # trust=False: nothing from the file runs
    want, got = student.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    side = 300 if name.startswith("ssd300") else 320 if name.startswith("ssdlite") else 160  # SSD's own sizes
    images = [torch.rand(3, side, side)]
    with torch.no_grad():
        a, b = student.eval().backbone(images[0][None]), loaded.backbone(images[0][None])
        assert all(torch.equal(a[k], b[k]) for k in a) if isinstance(a, dict) else torch.equal(a, b)
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(student(images), loaded(images), strict=True))


def test_a_detector_built_by_name_saves_without_pickle(tmp_path):
    check_saves_as_data("fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_detection_family_saves_without_pickle(name, tmp_path):
    check_saves_as_data(name, tmp_path)


def test_detectors_are_zoo_names():
    """Detectors build by name, with random backbone weights (no download) and the asked number of classes."""
    model = cheapconv.create_model("retinanet_resnet50_fpn", num_classes=5)
    assert type(model).__name__ == "RetinaNet" and model.head.classification_head.num_classes == 5
    with pytest.raises(cheapconv.UsageError, match="91 classes"):
        cheapconv.create_model("retinanet_resnet50_fpn", num_classes=5, pretrained=True)
    with pytest.raises(cheapconv.errors.UnknownModelError, match="fasterrcnn_resnet50_fpn"):
        cheapconv.create_model("fasterrcnn_resnet5_fpn")


def test_a_detector_exports_to_torchscript_only(tmp_path):
    """Detectors export by scripting (their post-processing depends on the data); the check compares the
    detections and the backbone's feature maps; other formats are refused with the way out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                                  min_size=128, max_size=128)
        student = cheapconv.cheapen(teacher, "G(4)", input_size=(3, 128, 128))
        report = cheapconv.export(student, tmp_path / "det.pt", format="torchscript", input_shape=(3, 128, 128))
        assert report.passed and report.max_abs_ref > 0   # the backbone's features were compared
        loaded = torch.jit.load(str(tmp_path / "det.pt"))
        images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
        with torch.no_grad():
            _, got = loaded(images)
            want = student.eval()(images)
    assert len(got) == 2 and all(torch.equal(g["boxes"], w["boxes"]) for g, w in zip(got, want, strict=True))
    with pytest.raises(cheapconv.UsageError, match="torchscript"):
        cheapconv.export(student, tmp_path / "det.pt2", format="pt2", input_shape=(3, 128, 128))
    assert not (tmp_path / "det.pt2").exists()
