"""BlockSwap search benchmark (issue 5): where the time goes, and searched vs single-type students.

Two parts, each runnable alone (results as JSON lines on stdout and, with --json, in a file):

``timing``   WRN-40-2 at a 300k-parameter budget: cost tables, sampling (draws/s; 1000 configurations kept),
             then scoring of N configurations on a batch of 128 (build by cheapen, seeded init, Fisher
             forward+backward), samples/s, and the extrapolation to 1000 samples (stated as such when N <
             1000).

``compare``  On real Fashion-MNIST (28×28 zero-padded to 32×32, grey repeated to 3 channels): train a teacher
             from scratch, take the single-block-type student (e.g. ``B(2)``), search a mixed configuration
             at exactly its parameter budget (±2.5 %) with the Fisher minibatch from Fashion-MNIST, and
             distil both students with AT from the same teacher on the same short schedule (same seed, same
             data order); report both test accuracies. Needs :func:`cheapconv.distill`.

``runtimes`` (issue 14) A latency-budget search at the same budget (``--budget 75%``: three quarters of the
             teacher's latency *in each runtime*, since 50 % is out of eager torch's reach on WRN-40-2 at
             batch 1; or an absolute ``--budget 3ms``) priced in each of ``--runtimes``
             (default eager torch and ONNX Runtime): which blocks each picks, its additive estimate and its
             measured latency in its own runtime; then the teacher and every winner exported to ONNX and
             timed side by side in ONNX Runtime (and in eager torch), so both winners' deployed latency is
             compared in one run.

Examples::

    python -m benchmarks.perf.search_bench timing --samples 40 --threads 1
    python -m benchmarks.perf.search_bench compare --teacher wrn_16_2 --single 'B(2)' --steps 800 --threads 2
    python -m benchmarks.perf.search_bench runtimes --model wrn_40_2 --budget 75% --samples 200 --threads 2

Timings on the project's shared 2-core CPU are noisy: the script records the thread count and the load
average at start and end next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import torch

from ..common.runs import eval_mode, one_thread


def _conditions() -> dict:
    return {"threads": torch.get_num_threads(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}


def _emit(record: dict, sink: list) -> None:
    sink.append(record)
    print(json.dumps(record), flush=True)


def timing(args, sink: list) -> None:
    import cheapconv
    from cheapconv.blockswap import Scorer, SearchSpace, fixed_minibatch, parse_budget, sample_configurations

    teacher = cheapconv.create_model(args.model)
    start = _conditions()
    t0 = time.perf_counter()
    space = SearchSpace.of(teacher)
    t_tables = time.perf_counter() - t0
    key = "paper"
    budget = parse_budget(args.budget).target(space.base[key])
    window = (budget * 0.975, budget * 1.025)
    t0 = time.perf_counter()
    with one_thread():
        configs, draws, hits = sample_configurations(space, key, window, 1000, seed=args.seed)
    t_sampling = time.perf_counter() - t0
    _emit({"part": "timing", "phase": "tables+sampling", "model": args.model, "budget": args.budget,
           "blocks": len(space.blocks), "space_size": float(space.size), "tables_s": round(t_tables, 3),
           "sampling_s": round(t_sampling, 3), "draws": draws, "in_window": hits, "kept": len(configs),
           "draws_per_s": round(draws / t_sampling), **start}, sink)

    if not configs:
        raise SystemExit(f"no configuration of {args.model} within 2.5 % of {args.budget}")
    data = None if args.data == "synthetic" else args.data
    t0 = time.perf_counter()
    batch = fixed_minibatch(data, batch_size=args.batch_size, seed=args.seed, input_shape=space.input_shape,
                            teacher=teacher)
    t_batch = time.perf_counter() - t0
    scorer = Scorer(teacher, space, batch, seed=args.seed)
    n = min(args.samples, len(configs))
    per_sample = []
    t0 = time.perf_counter()
    for config in configs[:n]:
        s0 = time.perf_counter()
        scorer.score(config)
        per_sample.append(time.perf_counter() - s0)
    t_scoring = time.perf_counter() - t0
    parts = {k: round(v / n, 3) for k, v in scorer.seconds.items()}
    rate = n / t_scoring
    total_1000 = t_tables + t_sampling + t_batch + 1000 / rate
    per_sample.sort()
    _emit({"part": "timing", "phase": "scoring", "model": args.model, "batch_size": args.batch_size,
           "minibatch": batch.source, "scored": n, "scoring_s": round(t_scoring, 2),
           "samples_per_s": round(rate, 4), "median_sample_s": round(per_sample[n // 2], 3),
           "per_sample_parts_s": parts, "batch_load_s": round(t_batch, 3),
           "sampling_share_of_1000": round(t_sampling / total_1000, 5),
           "extrapolated_1000_samples_s": round(total_1000) if n < 1000 else None,
           "measured_1000_samples_s": round(t_tables + t_sampling + t_batch + t_scoring) if n >= 1000 else None,
           **_conditions()}, sink)


def _accuracy(model, dataset, batch_size: int = 500) -> float:
    correct = 0
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            index = torch.arange(i, min(i + batch_size, len(dataset)))
            x, y = dataset.transform_batch(index), dataset.labels[index]
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)


def compare(args, sink: list) -> None:
    import cheapconv
    from cheapconv.blockswap import seeded_init_
    from cheapconv.data import get_dataset

    try:
        from cheapconv import DistillConfig, distill
    except ImportError:
        _emit({"part": "compare", "skipped": "cheapconv.distill is not available yet"}, sink)
        return
    train = get_dataset("fashion-mnist", "train", in_chans=3, image_size=32)
    test = get_dataset("fashion-mnist", "test", in_chans=3, image_size=32)
    common = dict(max_steps=args.steps, epochs=None, batch_size=128, seed=args.seed, progress=False,
                  schedule="cosine", lr=0.1)

    torch.manual_seed(args.seed)
    teacher = cheapconv.create_model(args.teacher)
    t0 = time.perf_counter()
    if args.teacher_weights and os.path.exists(args.teacher_weights):
        teacher.load_state_dict(torch.load(args.teacher_weights, weights_only=True))
        teacher_s = 0.0
    else:
        distill(None, teacher, train, config=DistillConfig(loss="ce", **{**common, "max_steps": args.teacher_steps}))
        teacher_s = time.perf_counter() - t0
        if args.teacher_weights:
            torch.save(teacher.state_dict(), args.teacher_weights)
    teacher_acc = _accuracy(teacher, test)
    _emit({"part": "compare", "phase": "teacher", "model": args.teacher, "steps": args.teacher_steps,
           "test_top1": teacher_acc, "train_s": round(teacher_s), **_conditions()}, sink)

    single = cheapconv.cheapen(teacher, args.single)
    budget = cheapconv.count_params(single, "paper")
    t0 = time.perf_counter()
    result = cheapconv.search(teacher, budget, samples=args.samples, data="fashion-mnist", seed=args.seed,
                              batch_size=args.batch_size)
    search_s = time.perf_counter() - t0
    searched = cheapconv.cheapen(teacher, result.winner.policy)
    assert cheapconv.count_params(searched, "paper") == result.winner.paper
    _emit({"part": "compare", "phase": "search", "budget_from": args.single, "budget_params": budget,
           "searched_params": result.winner.paper, "searched_macs": result.winner.macs,
           "single_macs": cheapconv.count_macs(single, (1, 3, 32, 32)), "samples": len(result.results),
           "winner": result.winner.summary(), "winner_score": result.winner.score,
           "winner_spread": result.winner.spread, "search_s": round(search_s), "policy": str(result.winner.policy),
           **_conditions()}, sink)

    for label, student in (("single " + args.single, single), ("searched", searched)):
        torch.manual_seed(args.seed)
        seeded_init_(student, args.seed)  # both start from the same kind of initialisation
        t0 = time.perf_counter()
        distill(teacher, student, train, config=DistillConfig(loss="at", **common))
        _emit({"part": "compare", "phase": "student", "student": label,
               "params_paper": cheapconv.count_params(student, "paper"), "steps": args.steps,
               "test_top1": _accuracy(student, test), "train_s": round(time.perf_counter() - t0),
               **_conditions()}, sink)


def runtimes(args, sink: list) -> None:
    import cheapconv
    from cheapconv.measure import check_runtime, measure_in_runtime
    from cheapconv.models import default_input_size

    names = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for r in [*names, "onnxruntime"]:
        check_runtime(r)
    teacher = cheapconv.create_model(args.model)
    data = None if args.data == "synthetic" else args.data
    winners = {}
    for runtime in names:
        t0 = time.perf_counter()
        result = cheapconv.search(teacher, args.budget or "75%", metric="latency", runtime=runtime,
                                  samples=args.samples,
                                  data=data, seed=args.seed, batch_size=args.batch_size,
                                  candidates=args.candidates, latency_batch=args.latency_batch,
                                  spread_runs=1)
        win = result.winner
        winners[runtime] = cheapconv.cheapen(teacher, win.policy)
        _emit({"part": "runtimes", "phase": "search", "model": args.model, "runtime": runtime,
               "runtime_info": result.latency_conditions.get("runtime_info"), "budget": args.budget or "75%",
               "target_ms": round(result.target, 4), "teacher_ms": round(result.teacher_cost, 4),
               "winner": win.summary(), "choice": list(win.choice), "score": win.score,
               "estimate_ms": round(win.latency_ms, 4),
               "measured_ms": round(result.measured["latency"], 4), "params_paper": win.paper, "macs": win.macs,
               "scored": len(result.results), "search_s": round(time.perf_counter() - t0), **_conditions()}, sink)
    shape = (args.latency_batch, *default_input_size(teacher))   # a zoo teacher: its native size
    labels = ["teacher", *[f"winner of the {r} search" for r in winners]]
    for where in ("onnxruntime", "torch"):  # the deployed latency first
        lat = measure_in_runtime([teacher, *winners.values()], shape, where, repeats=args.repeats, warmup=3)
        _emit({"part": "runtimes", "phase": "side by side", "timed_in": where, "batch": args.latency_batch,
               "repeats": args.repeats, **{label: round(x.median_ms, 4) for label, x in zip(labels, lat, strict=True)},
               "speedup_over_teacher": {label: round(lat[0].median_ms / x.median_ms, 3)
                                        for label, x in zip(labels[1:], lat[1:], strict=True)}, **_conditions()}, sink)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.search_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("timing", "compare", "runtimes", "all"))
    p.add_argument("--model", default="wrn_40_2", help="timing, runtimes: the teacher")
    p.add_argument("--budget", default=None, help="timing: the parameter budget (default 300k); runtimes: the "
                   "latency budget (default 75%%: of the teacher's latency in each runtime)")
    p.add_argument("--samples", type=int, default=1000, help="configurations to score")
    p.add_argument("--batch-size", type=int, default=128, help="Fisher minibatch")
    p.add_argument("--data", default="fashion-mnist", help="timing: minibatch source (or 'synthetic')")
    p.add_argument("--teacher", default="wrn_16_2", help="compare: the teacher")
    p.add_argument("--teacher-weights", default=None, help="compare: reuse/save the trained teacher here")
    p.add_argument("--teacher-steps", type=int, default=1000)
    p.add_argument("--single", default="B(2)", help="compare: the single-block-type student")
    p.add_argument("--steps", type=int, default=800, help="compare: AT distillation steps per student")
    p.add_argument("--runtimes", default="torch,onnxruntime", help="runtimes: where each search prices latency")
    p.add_argument("--candidates", default=None, help="runtimes: candidate blocks (default: the paper's 23)")
    p.add_argument("--latency-batch", type=int, default=1, help="runtimes: batch of the latency budget")
    p.add_argument("--repeats", type=int, default=20, help="runtimes: timed rounds of the side-by-side check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also append the records to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.budget is None and args.part != "runtimes":
        args.budget = "300k"
    warnings.simplefilter("ignore")
    sink: list = []
    if args.part in ("timing", "all"):
        timing(args, sink)
    if args.part in ("compare", "all"):
        compare(args, sink)
    if args.part == "runtimes":  # not in "all": its budget is a latency, the others' a parameter count
        runtimes(args, sink)
    if args.json:
        with open(args.json, "a") as f:
            for record in sink:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
