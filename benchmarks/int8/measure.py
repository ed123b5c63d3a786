"""Stages ``accuracy`` and ``latency`` of the int8 study, one record per model (accuracy) or per setting (latency).

Accuracy: each model exported to ONNX float32 and to static int8 (``cheapconv.export(..., quantize="int8")``:
QDQ, per-channel weights, activations calibrated on 512 training images fed as the model records), then both
deployed files scored on the whole test split in ONNX Runtime (``load_deployed``), and the export's own check
(top-1 agreement of int8 with float32 on 500 held-out images) kept.

Latency: for each thread count, every model of a group is made runnable in ``onnxruntime`` (float32) and in
``onnxruntime-int8`` once, and all of them, both precisions, are timed side by side in one loop at each batch size
(one pass of each in turn, the order rotating every round), so every ratio (int8 student against the float32
teacher, against the int8 teacher) compares passes timed in the same rounds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

import cheapconv
from cheapconv.measure import evaluate_accuracy, make_runners, time_side_by_side

RUNTIMES = ("onnxruntime", "onnxruntime-int8")


def accuracy_record(name: str, model_file: Path, data: str, out: Path, keep_float: list[str] = ()) -> dict:
    """Float32 and int8 ONNX files of one model, and their top-1 on the whole test split of ``data``
    (``keep_float``: module paths left in float32 inside the int8 file)."""
    model = cheapconv.load(model_file)
    fp32_path, int8_path = out / f"{name}.onnx", out / f"{name}.int8.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cheapconv.export(model, fp32_path, "onnx")
        report = cheapconv.export(model, int8_path, "onnx", quantize="int8", calib_data=data,
                                  accept_quantization_loss=True, keep_float=keep_float)
    figures = {}
    for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
        deployed = cheapconv.load_deployed(path, threads=os.cpu_count())
        figures[precision] = evaluate_accuracy(deployed, data)
    return {"model": name, "file": str(model_file), "data": data, "top1_fp32": figures["fp32"],
            "top1_int8": figures["int8"], "export_check": report.quantization,
            "warnings": sorted({str(w.message).split("\n")[0] for w in caught})}


def latency_records(names: list[str], files: list[Path], input_shape: tuple[int, ...], *, batches=(1, 32),
                    threads=(1, 2), repeats: int = 30) -> list[dict]:
    """One record per (threads, batch): each model's median ms in float32 and int8, timed side by side."""
    models = [cheapconv.load(f).eval() for f in files]
    macs = {n: cheapconv.count_macs(m, (1, *input_shape)) for n, m in zip(names, models, strict=True)}
    params = {n: cheapconv.count_params(m, "paper") for n, m in zip(names, models, strict=True)}
    records = []
    for t in threads:
        runners, labels = [], []
        try:
            for runtime in RUNTIMES:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runners += make_runners(models, runtime, input_shape, threads=t,
                                            labels=[f"{n} {runtime}" for n in names])
                labels += [(n, runtime) for n in names]
            for b in batches:
                torch.manual_seed(0)
                timed = time_side_by_side(runners, (b, *input_shape), repeats=repeats, threads=t)
                ms = {runtime: {n: lat.median_ms for (n, r), lat in zip(labels, timed, strict=True) if r == runtime}
                      for runtime in RUNTIMES}
                records.append({"threads": t, "batch": b, "models": names, "ms": ms, "macs": macs,
                                "params": params, "repeats": repeats,
                                "loadavg": [round(v, 2) for v in os.getloadavg()]})
        finally:
            for r in runners:
                r.close()
    return records
