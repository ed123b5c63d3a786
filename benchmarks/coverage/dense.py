"""Coverage of ``cheapen`` on torchvision's dense-prediction families: every segmentation and detection model.

For each model (random initialisation, no downloads, a 128×128 input; SSD resizes to its own 300/320) and its
contract policy (``G(4)``, or ``*=G(N)`` where ``G(4)`` removes nothing) this measures: the student is built,
the teacher is left unchanged, the student has fewer parameters and fewer MACs than the teacher, its eval-mode
output keeps the teacher's structure (segmentation: the same dict keys and shapes; detection: a list of dicts
with the same keys), a train-mode step runs backward with finite gradients (segmentation: a loss on ``out``
and ``aux``; detection: the model's own losses on one box per image), and what ``cheapconv.save`` stores and
whether the file reloads to equal outputs.

MACs per image are counted with every operator (``cheapconv.count_macs``, FlopCounterMode). For a segmenter
that is the whole model. A detector's heads and post-processing run once per *proposal/detection*, whose count
depends on the weights (random here), so for detectors the comparable figure is the backbone's (with its FPN),
which runs once per image; the table says which was counted.

Each model runs in its own subprocess::

    python -m benchmarks.coverage.dense --jsonl docs/data/dense-results.jsonl     # all 18 (minutes)
    python -m benchmarks.coverage.dense --only lraspp_mobilenet_v3_large
    python -m benchmarks.coverage.dense --render docs/data/dense-results.jsonl    # the Markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from ..common.records import latest_by, read_records
from ..common.workers import first_line, run_worker

#: the module that runs one model (``--worker``)
WORKER = "benchmarks.coverage.dense"

SIZE = 128
#: the side at which SSD models run whatever the input (their transform resizes to it)
SSD_SIDES = {"ssd300": 300, "ssdlite320": 320}
POLICY, FALLBACK = "G(4)", "*=G(N)"


def dense_models() -> list[tuple[str, str]]:
    """(task, name) for every torchvision segmentation and detection builder."""
    import torchvision

    models = torchvision.models
    return ([("segmentation", n) for n in sorted(models.list_models(module=models.segmentation))]
            + [("detection", n) for n in sorted(models.list_models(module=models.detection))])


def task_of(name: str) -> str:
    return dict((n, t) for t, n in dense_models())[name]


def build(name: str):
    """The model with random weights; segmenters with their auxiliary head where they have one, detectors at
    a 128-pixel working size (SSD keeps its own)."""
    import torchvision

    kwargs = {"weights": None, "weights_backbone": None}
    if task_of(name) == "segmentation":
        if not name.startswith("lraspp"):
            kwargs["aux_loss"] = True
        return torchvision.models.get_model(name, **kwargs).eval()
    if not name.startswith("ssd"):
        kwargs.update(min_size=SIZE, max_size=SIZE)
    return torchvision.models.get_model(name, **kwargs).eval()


def detection_targets(name: str, n: int, side: int = SIZE) -> list[dict]:
    """One box per image, with the masks and keypoints that Mask / Keypoint R-CNN need."""
    import torch

    targets = []
    for _ in range(n):
        t = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])}
        if name.startswith("maskrcnn"):
            t["masks"] = torch.zeros(1, side, side, dtype=torch.uint8)
            t["masks"][0, 12:70, 10:60] = 1
        if name.startswith("keypointrcnn"):
            t["keypoints"] = torch.tensor([[[20.0, 30.0, 1.0]] * 17])
        targets.append(t)
    return targets


def _structure(out):
    """What must be equal between teacher and student outputs: dict keys and tensor shapes for segmenters,
    the list length and each dict's keys for detectors (the number of boxes depends on the weights)."""
    if isinstance(out, dict):
        return {k: tuple(v.shape) for k, v in out.items()}
    return [sorted(o) for o in out]


def _macs(task: str, name: str, model) -> tuple[int, str]:
    import cheapconv

    if task == "segmentation":
        return cheapconv.count_macs(model, (1, 3, SIZE, SIZE)), "whole model"
    side = next((s for prefix, s in SSD_SIDES.items() if name.startswith(prefix)), SIZE)
    return cheapconv.count_macs(model.backbone, (1, 3, side, side)), "backbone"


def _train_step(task: str, name: str, student, x) -> bool:
    import torch

    flags = [(m, m.training) for m in student.modules()]
    student.train()
    try:
        if task == "segmentation":
            out = student(x)
            loss = sum(v.float().square().mean() for v in out.values())
        else:
            loss = sum(student(list(x), detection_targets(name, len(x))).values())
        loss.backward()
        grads = [p.grad for p in student.parameters() if p.requires_grad and p.grad is not None]
        return bool(grads) and all(torch.isfinite(g).all() for g in grads)
    finally:
        for m, flag in flags:
            m.training = flag
        student.zero_grad(set_to_none=True)


def _round_trip(student, x, task: str) -> tuple[str, bool | None]:
    """The storage kind ``cheapconv.save`` chooses and whether the reloaded student gives equal outputs."""
    import torch

    import cheapconv

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "student.pt")
        kind = cheapconv.save(student, path)
        loaded = cheapconv.load(path, trust=kind == "pickle")
    with torch.no_grad():
        want, got = student.eval()(x if task == "segmentation" else list(x)), loaded.eval()(
            x if task == "segmentation" else list(x))
    if task == "segmentation":
        return kind, all(torch.allclose(want[k], got[k], rtol=1e-4, atol=1e-5) for k in want)
    # a random detector may keep few boxes, so the backbone's feature maps are compared as well (at the size
    # the backbone works at: SSD's transform resizes every image to its fixed size, the R-CNN family keeps it)
    fixed = getattr(student.transform, "fixed_size", None)
    with torch.no_grad():
        xb = x if fixed is None else torch.nn.functional.interpolate(x, size=tuple(fixed), mode="bilinear")
        feats_want, feats_got = student.backbone(xb), loaded.backbone(xb)
    same_feats = all(torch.allclose(feats_want[k], feats_got[k], rtol=1e-4, atol=1e-5) for k in feats_want)
    same_boxes = len(want) == len(got) and all(
        a["boxes"].shape == b["boxes"].shape and torch.allclose(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-4)
        for a, b in zip(want, got, strict=True))
    return kind, same_feats and same_boxes


def measure_dense(name: str, save: bool = True) -> dict:
    """Build ``name`` with random weights, cheapen it under the contract policy and check the student."""
    import torch

    import cheapconv

    torch.manual_seed(0)
    t0 = time.perf_counter()
    task = task_of(name)
    res: dict = {"model": name, "task": task}
    teacher = build(name)
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    x = torch.rand(2, 3, SIZE, SIZE)
    for policy in (POLICY, FALLBACK):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student = cheapconv.cheapen(teacher, policy, input_size=(3, SIZE, SIZE))
        res.update(policy=policy, replaced=len(student.cheapconv_plan.replaced),
                   params_before=cheapconv.count_params(teacher), params_after=cheapconv.count_params(student))
        if res["params_after"] < res["params_before"]:
            break
    try:
        (res["macs_before"], res["macs_counted"]), (res["macs_after"], _) = \
            _macs(task, name, teacher), _macs(task, name, student)
        with torch.no_grad():
            t_out = teacher(x if task == "segmentation" else list(x))
            s_out = student.eval()(x if task == "segmentation" else list(x))
        res["structure_ok"] = _structure(t_out) == _structure(s_out)
        res["train_ok"] = _train_step(task, name, student, x)
        if save:
            res["storage"], res["load_ok"] = _round_trip(student, x, task)
    except Exception as e:  # noqa: BLE001 - recorded, the table shows it
        res["error"] = f"{type(e).__name__}: {first_line(e) if str(e).strip() else ''}"
        res["trace"] = traceback.format_exc(limit=-4)
    after = teacher.state_dict()
    res["unchanged"] = after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    res["time"] = round(time.perf_counter() - t0, 1)
    return res


def dense_failures(res: dict) -> list[str]:
    """What one dense model's result breaks: the same contract as the classifiers' (smaller in parameters,
    same output structure, trains, teacher unchanged, reloads equal), plus fewer MACs."""
    if "error" in res:
        return [res["error"]]
    fails = [] if res.get("unchanged") else ["the input model changed"]
    if not res["params_after"] < res["params_before"]:
        fails.append(f"no fewer parameters under {POLICY} or {FALLBACK}")
    if not res["macs_after"] < res["macs_before"]:
        fails.append("no fewer MACs")
    for key, what in (("structure_ok", "output structure differs"), ("train_ok", "train step failed"),
                      ("load_ok", "save/load round trip differs")):
        if res.get(key) is False:
            fails.append(what)
    return fails


def run_isolated(name: str, timeout: float = 900, save: bool = True) -> dict:
    """:func:`measure_dense` of one model in a fresh process (:func:`benchmarks.common.workers.run_worker`)."""
    result, error = run_worker(WORKER, ["--worker", name] + ([] if save else ["--no-save"]), timeout)
    return result if result is not None else {"model": name, "task": task_of(name), "error": error}


def _short(n: int, digits: int) -> str:
    return f"{n / 1e9:.{digits}f}G" if n >= 1e9 else f"{n / 1e6:.{digits}f}M"


def _change(before: int, after: int) -> str:
    pct = 100 * (after / before - 1)
    digits, pct_digits = (1, 0) if abs(pct) >= 1 else (2, 2)
    return f"{_short(before, digits)} → {_short(after, digits)} ({pct:+.{pct_digits}f}%)".replace("-", "−")


def render(results: list[dict]) -> str:
    head = ("| task | model | policy | replaced | params | MACs / image (counted on) | smaller (params / MACs) "
            "| output structure | train step | storage | load = | unchanged | s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    mark = {True: "✓", False: "✗", None: "–"}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['model']} | {r.get('policy', '')} | | | **{r['error']}** "
                         "| | | | | | | |")
            continue
        smaller = (f"{mark[r['params_after'] < r['params_before']]} / "
                   f"{mark[r['macs_after'] < r['macs_before']]}")
        lines.append(" | ".join([
            f"| {r['task']}", r["model"], f"`{r['policy']}`", str(r["replaced"]),
            _change(r["params_before"], r["params_after"]),
            f"{_change(r['macs_before'], r['macs_after'])} ({r['macs_counted']})", smaller,
            mark[r.get("structure_ok")], mark[r.get("train_ok")], r.get("storage", "–"), mark[r.get("load_ok")],
            mark[r.get("unchanged")], f"{r['time']:.0f} |"]))
    passed = sum(not dense_failures(r) for r in results)
    lines.append(f"\n**Dense families: {passed}/{len(results)} meet the contract** (fewer parameters and MACs, "
                 "same output structure, a train step, teacher unchanged, reload equal).")
    for r in results:
        if dense_failures(r):
            lines.append(f"- {r['model']}: {'; '.join(dense_failures(r))}")
    return "\n".join(lines)


def _read(path: Path) -> list[dict]:
    latest = latest_by(read_records(path), "model")
    order = {n: i for i, (_, n) in enumerate(dense_models())}
    return sorted(latest.values(), key=lambda r: order.get(r["model"], len(order)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.coverage.dense", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="torchvision builder names")
    ap.add_argument("--jsonl", help="append each model's result here (the last line per model counts)")
    ap.add_argument("--no-save", action="store_true", help="skip the save/load round trip")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model")
    ap.add_argument("--render", metavar="JSONL", help="print the Markdown table of saved results")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.render:
        print(render(_read(Path(args.render))))
        return 0
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(measure_dense(args.worker, save=not args.no_save)))
        return 0
    names = args.only or [n for _, n in dense_models()]
    results = []
    for i, name in enumerate(names, 1):
        r = run_isolated(name, args.timeout, not args.no_save)
        fails = dense_failures(r)
        print(f"[{i}/{len(names)}] {name}: {'ok' if not fails else 'FAIL ' + '; '.join(fails)[:200]} "
              f"({r.get('time', 0):.0f} s)", file=sys.stderr, flush=True)
        results.append(r)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(r) + "\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
