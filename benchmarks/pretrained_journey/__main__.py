"""A practitioner's journey from the command line alone (issue 24): a real pretrained network fine-tuned on the
user's own images, cheapened, reconstructed, distilled, exported and measured, with the fine-tuning recipe's lr
chosen by measurement.

Every step is a ``cheapconv`` command (no Python of ours touches a model), run in a subprocess with one thread;
each writes a file or a ``--json`` figure, and a figure already in the results file is not measured again, so a
stopped run continues where it was. Stages:

``accuracy``
    1. ``train MODEL --weights W [--weights-by-position]`` onto the folder's classes at ``--size`` (the teacher);
    2. ``cheapen teacher.pt --block BLOCK`` and ``cheapen student.pt --teacher teacher.pt --init teacher
       --calib-data`` (reconstruction from the saved student);
    3. ``distill`` one epoch at each ``--lrs`` (the fine-tuning recipe otherwise: clip 1, cosine, AT), each from
       the same reconstructed student, its start and end read from the run's metrics file;
    4. ``export --format onnx`` of the teacher and of each distilled student, and ``evaluate`` of the ONNX files.
``latency`` (run it on a quiet machine: it times)
    5. ``compare teacher.pt student.pt --runtime R --threads 1`` in eager torch and ONNX Runtime, batch 1 and 16.

    python -m benchmarks.pretrained_journey --out bench-out/journey --weights W --by-position \\
        --images /path/to/imagefolder                      # stage accuracy
    python -m benchmarks.pretrained_journey --out bench-out/journey --stage latency ...
    python -m benchmarks.pretrained_journey --report       # the Markdown tables from the results file

Results: ``benchmarks/results/pretrained_journey.jsonl``, one JSON object per measured figure, keyed by ``key``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..common.records import append_record, latest_by, read_records
from ..common.report import say

RESULTS = Path(__file__).resolve().parents[1] / "results" / "pretrained_journey.jsonl"
DEFAULT_LRS = (0.1, 0.03, 0.01, 0.003)


def recorded(path: Path = RESULTS) -> dict[str, dict]:
    """The figures already measured, by key (the last record of a key wins)."""
    return latest_by(read_records(path), "key")


def append(record: dict, path: Path = RESULTS) -> None:
    """One more figure, with the time and the machine's load written beside it."""
    append_record(path, {**record, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "loadavg": [round(v, 2) for v in os.getloadavg()]})


def cheapconv(*args: str, capture: bool = False) -> str:
    """Run one cheapconv command with one thread; stop the study on failure with the command's own output."""
    command = [shutil.which("cheapconv") or "cheapconv", *map(str, args)]
    say("$ " + " ".join(command))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, text=True, stdout=subprocess.PIPE if capture else None)
    if done.returncode != 0:
        sys.exit(f"command failed (exit {done.returncode}): {' '.join(command)}")
    return done.stdout if capture else ""


def evaluate(model: Path, data: str) -> dict:
    """``cheapconv evaluate --json`` of ``model``, its file named without the folder (results hold no paths)."""
    figures = json.loads(cheapconv("evaluate", model, "--data", data, "--json", capture=True).strip().splitlines()[-1])
    return {**figures, "model": Path(model).name, "data": "imagefolder:IMAGES"}


def measure(key: str, what: dict, figure) -> dict:
    """``figure()`` recorded under ``key`` unless it was already."""
    done = recorded()
    if key in done:
        return done[key]
    record = {"key": key, **figure(), **what}
    append(record)
    return record


def start_and_end(metrics: Path) -> dict:
    """The distillation run's start (before the first step) and end records from its metrics file."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    start = next((r for r in records if r.get("kind") == "start" or r.get("event") == "start"), {})
    end = [r for r in records if "val_top1" in r][-1]
    return {"start_val_top1": start.get("val_top1"), "end_val_top1": end.get("val_top1"), "steps": end.get("step")}


def parse_run(text: str) -> tuple[float, str, str]:
    """``LR[:AUGMENT[:LOSS]]`` -> (lr, augment, loss); the defaults are the recipe's (standard, at)."""
    lr, augment, loss = (text.split(":") + ["", ""])[:3]
    return float(lr), augment or "standard", loss or "at"


def accuracy_stage(a: argparse.Namespace) -> None:
    out, data = a.out, f"imagefolder:{a.images}"
    out.mkdir(parents=True, exist_ok=True)
    teacher, student, init = out / "teacher.pt", out / "student.pt", out / "student-init.pt"
    if not teacher.exists():
        cheapconv("train", a.model, "--weights", a.weights, *(["--weights-by-position"] if a.by_position else []),
                  "--data", data, "--image-size", a.size, "--epochs", a.teacher_epochs, "--batch-size", 64,
                  "--lr", a.teacher_lr, "--schedule", "cosine", "--no-progress", "-o", teacher)
    measure("teacher", {"network": a.model, "size": a.size}, lambda: evaluate(teacher, data))
    if not student.exists():
        cheapconv("cheapen", teacher, "--block", a.block, "-o", student)
    if not init.exists():
        cheapconv("cheapen", student, "--teacher", teacher, "--init", "teacher", "--calib-data", data, "-o", init)
    measure(f"reconstructed {a.block}", {"block": a.block}, lambda: evaluate(init, data))
    runs = [(lr, "standard", "at") for lr in a.lrs] + [parse_run(text) for text in a.also]
    for lr, augment, loss in runs:
        variant = "".join(f" {k} {v}" for k, v, default in (("augment", augment, "standard"), ("loss", loss, "at"))
                          if v != default)
        trained = out / (f"student-lr{lr:g}" + variant.replace(" ", "-") + ".pt")
        if not trained.exists():
            cheapconv("distill", "--teacher", teacher, "--student", init, "--data", data, "--epochs", 1,
                      "--batch-size", 64, "--lr", lr, "--augment", augment, "--loss", loss, "--no-progress",
                      "--overwrite", "-o", trained)
        measure(f"distilled {a.block} lr {lr:g}{variant}",
                {"block": a.block, "lr": lr, "augment": augment, "loss_kind": loss, "epochs": 1},
                lambda trained=trained: {**evaluate(trained, data),
                                         **start_and_end(trained.with_suffix(".metrics.jsonl"))})
    for name in ("teacher", *(f"student-lr{lr:g}" for lr in a.lrs)):
        onnx = out / f"{name}.onnx"
        if not onnx.exists():
            cheapconv("export", out / f"{name}.pt", "--format", "onnx", "-o", onnx)
        measure(f"onnx {name}", {"file": onnx.name}, lambda onnx=onnx: evaluate(onnx, data))


def latency_stage(a: argparse.Namespace) -> None:
    best = a.out / f"student-lr{a.latency_lr:g}.pt"
    for runtime in ("torch", "onnxruntime"):
        key = f"latency {runtime} {best.stem}"
        if key in recorded():
            continue
        report = a.out / f"compare-{runtime}.json"
        cheapconv("compare", a.out / "teacher.pt", best, "--runtime", runtime, "--threads", 1, "--batch", 16,
                  "--repeats", 30, "--warmup", 5, "--json", report)
        models = [{k: v for k, v in m.items() if k != "layers"} for m in json.loads(report.read_text())]
        append({"key": key, "runtime": runtime, "threads": 1, "models": models})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pretrained_journey", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-out/journey"), help="Working folder (models, logs).")
    p.add_argument("--stage", choices=("accuracy", "latency"), default="accuracy")
    p.add_argument("--model", default="timm:tf_efficientnet_lite0")
    p.add_argument("--weights", type=Path, help="The pretrained weights file.")
    p.add_argument("--by-position", action="store_true", help="Pass --weights-by-position.")
    p.add_argument("--images", type=Path, help="The ImageFolder (train/ and val/).")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-lr", type=float, default=0.01)
    p.add_argument("--block", default="LRp(0.5)")
    p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS))
    p.add_argument("--also", nargs="*", default=[], metavar="LR:AUGMENT:LOSS",
                   help="More distillation runs, e.g. 0.01:light:at 0.01:none:kd.")
    p.add_argument("--latency-lr", type=float, default=0.01, help="Which distilled student the latency stage times.")
    p.add_argument("--report", action="store_true", help="Print the tables from the results file and stop.")
    a = p.parse_args(argv)
    if a.report:
        from .report import render

        print(render(recorded()))
        return
    if a.stage == "accuracy":
        if a.weights is None or a.images is None:
            p.error("the accuracy stage needs --weights and --images")
        accuracy_stage(a)
    else:
        latency_stage(a)


if __name__ == "__main__":
    main()
