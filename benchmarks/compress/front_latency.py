"""The reproduction study's models timed in another runtime, so the compress students of that runtime can be placed
on its error-against-latency front (issue 27: "in that runtime").

The reproduction study timed its models in eager torch only (``kind: latency`` in ``results/reproduce.jsonl``).
Latency depends on the architecture, not the weights, so each of its timed models is rebuilt here (a plain
WRN, the teacher's architecture with one block type, or a searched policy applied to it, untrained) and all of
them are timed side by side with the teacher in ``--runtime`` at ``--batch``, one thread: one record
``front-latency <runtime> b<batch>`` in ``results/compress.jsonl`` holding each model's median ms under the name the
reproduction study gives it. Their errors stay the reproduction study's. Needs a quiet machine (its load average is
in the record).

    python -m benchmarks.compress.front_latency --runtime onnxruntime --batch 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings

import torch

import cheapconv
from cheapconv.measure import measure_in_runtime

from ..common.records import RESULTS, append_record, latest_by, read_records
from ..common.report import say

TEACHER = "wrn_16_2"


def reproduction_models(records: list[dict]) -> dict[str, torch.nn.Module]:
    """Name (as the reproduction study's latency records name it: ``teacher``, ``wrn_10_1``, ``G(4)``,
    ``policy:<sha>``) -> an untrained model of that architecture."""
    policies = {f"policy:{hashlib.sha256(chr(10).join(r['rules']).encode()).hexdigest()[:10]}": "\n".join(r["rules"])
                for r in records if r.get("kind") == "search"}
    models: dict[str, torch.nn.Module] = {}
    for r in records:
        if r.get("kind") != "latency":
            continue
        arch = r["arch"]
        if arch == TEACHER:
            models["teacher"] = cheapconv.create_model(TEACHER, num_classes=10)
        elif not arch.startswith(TEACHER + " "):
            models[arch] = cheapconv.create_model(arch, num_classes=10)
        else:
            name = arch.removeprefix(TEACHER + " ")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                models[name] = cheapconv.cheapen(cheapconv.create_model(TEACHER, num_classes=10),
                                                 policies.get(name, name))
    return {n: m.eval() for n, m in models.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", default="onnxruntime")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    key = f"front-latency {args.runtime} b{args.batch}"
    if key in latest_by(read_records(RESULTS / "compress.jsonl"), "key"):
        say(f"{key}: already recorded")
        return
    models = reproduction_models(read_records(RESULTS / "reproduce.jsonl"))
    say(f"== {key}: {', '.join(models)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed = measure_in_runtime(list(models.values()), (args.batch, 3, 32, 32), args.runtime, threads=1,
                                   repeats=args.repeats)
    ms = {n: t.median_ms for n, t in zip(models, timed, strict=True)}
    append_record(RESULTS / "compress.jsonl", {"key": key, "runtime": args.runtime, "batch": args.batch,
                                               "threads": 1, "repeats": args.repeats, "ms": ms,
                                               "loadavg": [round(v, 2) for v in os.getloadavg()]})
    for n, v in ms.items():
        say(f"{n:24s} {v:8.3f} ms  {v / ms['teacher']:.2f}×")


if __name__ == "__main__":
    main()
