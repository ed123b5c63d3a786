"""Latency, params and MACs of ResNet-34 and WRN-40-2 and their cheap students, measured in one run.

For each network, each setting (fp32 / bf16 autocast × NCHW / channels_last) and each batch (1 and 32),
the teacher and its five students are timed **side by side** (:func:`cheapconv.measure.time_side_by_side`:
one pass of each in turn, repeated), so machine load hits all six alike and the speed-ups are same-moment
ratios. Prints a Markdown report (the tables of ``benchmarks/perf/README.md``) and optionally writes the raw
figures as JSON.

    python -m benchmarks.perf.latency_table                      # full run, ~10 min on the 2-core CPU
    python -m benchmarks.perf.latency_table --quick              # WRN-40-2 only, few repeats (a smoke test)
    python -m benchmarks.perf.latency_table --threads 1 --json latency.json
    python -m benchmarks.perf.latency_table --threads 2 --networks wrn_40_2 --settings fp32/NCHW bf16/CL \
        --students 'G(4)' Sep 'LR(0.25)' 'LRp(0.25)' 'Shuffle(2)' 'ACDC(2)'     # the structured blocks
    python -m benchmarks.perf.latency_table --threads 2 --settings fp32/NCHW --runtimes torch,compile,onnxruntime \
        --batches 1,32 --json runtimes.json          # where the student will run (issue 14)

With ``--runtimes``, each network and its students are exported once per runtime (``compile``: compiled once
per batch size), checked against eager mode (the check's maximal difference is kept in the JSON), then timed
side by side within that runtime; ``onnxruntime`` and ``pt2`` run the exported fp32 graph, so only the
fp32/NCHW setting is timed in them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

import cheapconv
from cheapconv import CheapconvError
from cheapconv.measure import RUNTIMES, check_runtime, describe_runtime, make_runners, time_side_by_side
from cheapconv.store import atomic_write

from ..common.report import human, say

STUDENTS = ("G(4)", "G(N)", "B(2)", "BG(2,M)", "S-2x2")
SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
#: (zoo name, label, input size, {batch: (warmup, repeats)}): repeats kept modest where a pass is long
NETWORKS = (
    ("wrn_40_2", "WRN-40-2", (3, 32, 32), {1: (3, 30), 32: (2, 10)}),
    ("resnet34", "ResNet-34", (3, 224, 224), {1: (2, 10), 32: (1, 3)}),
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(networks, students, settings, threads: int | None, log, runtimes=("torch",)) -> dict:
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": threads or torch.get_num_threads(), "networks": [],
               "runtimes": {r: describe_runtime(r, threads) for r in runtimes}}
    for zoo_name, label, size, plan in networks:
        teacher = cheapconv.create_model(zoo_name).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = [teacher] + [cheapconv.cheapen(teacher, s) for s in students]
        names = ["teacher"] + list(students)
        net = {"name": label, "input_size": list(size), "models": [
            {"name": n, "params_paper": cheapconv.count_params(m, "paper"),
             "macs": cheapconv.count_macs(m, (1, *size))} for n, m in zip(names, models, strict=True)],
            "latency": {}, "checks": {}}
        for runtime in runtimes:
            for dtype, channels_last in settings:
                if RUNTIMES.get(runtime).fp32_only and (dtype != "fp32" or channels_last):
                    continue  # the exported fp32 graph: see the module docstring
                layout = "channels_last" if channels_last else "NCHW"
                start = time.perf_counter()
                try:
                    runners = make_runners(models, runtime, size, device="cpu", dtype=dtype,
                                           channels_last=channels_last, threads=threads, labels=names)
                except CheapconvError as e:  # recorded, and the other runtimes still run
                    net.setdefault("failed", {})[f"{runtime}/{dtype}/{layout}"] = str(e)
                    log(f"{label} {runtime} {dtype}/{layout}: {e}")
                    continue
                log(f"{label} {runtime} {dtype}/{layout}: ready in {time.perf_counter() - start:.0f} s")
                try:
                    for batch, (warmup, repeats) in plan.items():
                        key = f"{runtime}/{dtype}/{layout}/b{batch}"
                        start = time.perf_counter()
                        try:
                            lat = time_side_by_side(runners, (batch, *size), warmup=warmup, repeats=repeats,
                                                    threads=threads)
                        except CheapconvError as e:  # a failed check: recorded, never timed
                            net.setdefault("failed", {})[key] = str(e)
                            log(f"{label} {key}: {e}")
                            continue
                        net["latency"][key] = [x.to_dict() for x in lat]
                        net["checks"][key] = [max((c.max_abs_diff for c in getattr(r, "checks", {}).values()),
                                                  default=0.0) for r in runners]
                        times = ", ".join(f"{n} {x.median_ms:.3g}" for n, x in zip(names, lat, strict=True))
                        log(f"{label} {key}: {times} ms ({time.perf_counter() - start:.0f} s)")
                finally:
                    for r in runners:
                        r.close()
        results["networks"].append(net)
    return results


def _cell(net: dict, key: str, i: int) -> str:
    mine, teacher = net["latency"][key][i]["median_ms"], net["latency"][key][0]["median_ms"]
    ms = f"{mine:,.0f}" if mine >= 100 else f"{mine:.3g}"
    return ms + ("" if i == 0 else f" ({teacher / mine:.2f}×)")


def runtime_table(net: dict) -> list[str]:
    """Runtimes side by side, as in issue 14: one row per runtime and batch (fp32, NCHW), the teacher's time
    and each student's speed-up over it in that runtime."""
    keys = [k for k in net["latency"] if "/fp32/NCHW/" in k]
    if len({k.split("/")[0] for k in keys}) < 2:
        return []
    names = [m["name"] for m in net["models"]]
    header = ["runtime", "batch", "teacher ms", *names[1:]]
    lines = [f"Runtimes side by side ({net['name']}, fp32, NCHW; speed-up over the teacher in the same runtime):",
             "", "| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    for k in keys:
        runtime, batch = k.split("/")[0], k.rsplit("/b", 1)[1]
        lat = net["latency"][k]
        teacher = lat[0]["median_ms"]
        cells = [runtime, batch, f"{teacher:.3g}"] + [f"{teacher / x['median_ms']:.2f}×" for x in lat[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(results: dict) -> str:
    lines = [f"CPU: {results['cpu']} ({results['cores']} cores), {results['threads']} intra-op thread(s), "
             f"torch {results['torch']}. Median ms per forward pass of the whole batch; in brackets the "
             "speed-up over the teacher measured side by side (above 1×: faster). "
             "bf16 = torch.autocast(bfloat16); CL = channels_last.", ""]
    lines += [f"- {name}: {what}" for name, what in results.get("runtimes", {}).items()] + [""]
    for net in results["networks"]:
        c, h, w = net["input_size"]
        lines += [f"### {net['name']} ({c}×{h}×{w})", ""]
        lines += runtime_table(net)
        lines += [f"Not timed, {key}: {why}" for key, why in net.get("failed", {}).items()]
        lines += [""] if net.get("failed") else []
        batches = sorted({int(k.rsplit("/b", 1)[1]) for k in net["latency"]})
        for batch in batches:
            keys = [k for k in net["latency"] if k.endswith(f"/b{batch}")]
            labels = [k.rsplit("/", 1)[0].replace("/", " ").replace("channels_last", "CL") for k in keys]
            header = ["model", "params (paper)", "MACs/image"] + [f"{lab}, b{batch}" for lab in labels]
            lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
            for i, m in enumerate(net["models"]):
                cells = [m["name"], f"{m['params_paper'] / 1e6:.3g} M", human(m["macs"])]
                lines.append("| " + " | ".join(cells + [_cell(net, k, i) for k in keys]) + " |")
            reps = {net["latency"][k][0]["repeats"] for k in keys}
            rounds = "/".join(map(str, sorted(reps)))
            lines += ["", f"Batch {batch}: median of {rounds} side-by-side rounds after warm-up.", ""]
        # throughput per MAC: what the MAC count hides
        b32 = [k for k in net["latency"] if k.endswith("/b32")]
        if b32:
            labels = [k.rsplit("/", 1)[0].replace("/", " ").replace("channels_last", "CL") for k in b32]
            lines += [f"Effective GMAC/s at batch 32 ({net['name']}; MACs ÷ time):", "",
                      "| model | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(b32)]
            for i, m in enumerate(net["models"]):
                rates = [m["macs"] * 32 / (net["latency"][k][i]["median_ms"] / 1e3) / 1e9 for k in b32]
                lines.append(f"| {m['name']} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.latency_table",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument("--quick", action="store_true", help="WRN-40-2 only, few repeats (smoke test)")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), help="block specs of the students")
    parser.add_argument("--networks", nargs="+", default=[n[0] for n in NETWORKS], help="zoo names among "
                        + ", ".join(n[0] for n in NETWORKS))
    parser.add_argument("--settings", nargs="+", default=None, metavar="DTYPE/LAYOUT",
                        help="e.g. fp32/NCHW bf16/CL (default: all four)")
    parser.add_argument("--runtimes", default="torch", help="comma-separated, among " + ", ".join(RUNTIMES))
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes among 1,32 (default: both)")
    args = parser.parse_args(argv)
    runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    for r in runtimes:
        check_runtime(r)
    networks = tuple(n for n in NETWORKS if n[0] in args.networks)
    settings = SETTINGS if args.settings is None else tuple(
        (text.split("/")[0], text.split("/")[1].upper() in ("CL", "CHANNELS_LAST")) for text in args.settings)
    if args.quick:
        networks = (("wrn_40_2", "WRN-40-2", (3, 32, 32), {1: (1, 3), 32: (1, 2)}),)
    if args.batches:
        keep = {int(b) for b in args.batches.split(",")}
        networks = tuple((*n[:3], {b: v for b, v in n[3].items() if b in keep}) for n in networks)
    start = time.perf_counter()
    results = measure(networks, tuple(args.students), settings, args.threads, say, runtimes)
    results["seconds"] = round(time.perf_counter() - start)
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    print(markdown(results))
    print(f"Total run time {results['seconds']} s.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
