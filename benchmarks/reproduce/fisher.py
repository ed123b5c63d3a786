"""Does a cheaper Fisher score keep BlockSwap's ranking? bf16 autocast and smaller minibatches against fp32 / 128.

The search scores every sampled configuration by its Fisher potential on one minibatch of 128 training images
in fp32 (``cheapconv.search``'s defaults). This check draws ``--configs`` configurations (50) with the search's
own machinery at one parameter budget (the ``BG(2,M)`` student's, as the study's search row), scores each with
the same seeded initialisation under several settings, and reports Spearman's ρ of each setting's scores
against fp32 / 128 images (with a bootstrap interval), plus the Fisher-pass time of each setting measured in
the same run, interleaved config by config (a ratio, not an absolute speed). As a yardstick of what "keeping
the ranking" can mean, the fp32 / 128 scores are also redone with another seed (another initialisation and
another 128 images): the search's own noise.

A setting keeps the ranking when ρ ≥ 0.95 (the issue's threshold). No training happens here; it runs in a few
minutes at one thread.

    python -m benchmarks.reproduce.fisher --teacher wrn_16_2 --configs 50 --threads 1 \\
        --out benchmarks/results/fisher_check.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
from rich.progress import track

import cheapconv
from cheapconv.blockswap import Scorer, SearchSpace, fixed_minibatch, sample_configurations
from cheapconv.data import get_dataset

from ..common.records import RESULTS
from ..common.stats import bootstrap_spearman, spearman

#: (label, precision, minibatch size, seed): seed 1 is the noise yardstick (other init and images)
SETTINGS = [("fp32/128", "fp32", 128, 0), ("bf16/128", "bf16", 128, 0), ("fp32/64", "fp32", 64, 0),
            ("fp32/32", "fp32", 32, 0), ("bf16/64", "bf16", 64, 0), ("bf16/32", "bf16", 32, 0),
            ("fp32/128, seed 1", "fp32", 128, 1)]
REFERENCE = "fp32/128"


class BuildOnce(Scorer):
    """The search's :class:`Scorer`, building each configuration's student once for all the settings (scoring
    inserts probes into the graph, so every setting gets a fresh copy of the built student)."""

    _built: tuple = ((), None)

    def build(self, config):
        if self._built[0] != tuple(config):
            self._built = (tuple(config), super().build(config))
        return copy.deepcopy(self._built[1])


def run_check(teacher_name: str, block: str, n_configs: int, data: str, seed: int = 0,
              settings=SETTINGS) -> dict:
    """Score ``n_configs`` configurations at the budget of ``cheapen(teacher, block)`` under every setting."""
    teacher = cheapconv.create_model(teacher_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        budget = cheapconv.count_params(cheapconv.cheapen(teacher, block), "paper")
    space = SearchSpace.of(teacher, None, model_name=teacher_name)
    key = space.cost_key("params", "paper")
    tol = 0.025  # the search's default tolerance
    configs, draws, _ = sample_configurations(space, key, (budget * (1 - tol), budget * (1 + tol)), n_configs,
                                              seed=seed)
    dataset = get_dataset(data, "train", augment=False, in_chans=3, image_size=32)
    batches = {(size, s): fixed_minibatch(dataset, batch_size=size, seed=seed + s,
                                          input_shape=space.input_shape, teacher=teacher)
               for _, _, size, s in settings}
    scorer = BuildOnce(teacher, space, batches[(128, 0)], seed=seed)
    scores: dict[str, list[float]] = {label: [] for label, *_ in settings}
    seconds: dict[str, float] = {label: 0.0 for label, *_ in settings}
    costs = []
    for config in track(configs, description=f"Fisher scores of {len(configs)} configurations"):
        for label, precision, size, s in settings:   # interleaved: every setting sees the same moments
            before = scorer.seconds["fisher"]
            result = scorer.score(config, seed=seed + s, batch=batches[(size, s)], precision=precision)
            seconds[label] += scorer.seconds["fisher"] - before
            scores[label].append(result.total)
        c = space.costs(config)
        costs.append({"paper": int(c["paper"]), "macs": int(c["macs"])})
    ref = scores[REFERENCE]
    rows = []
    for label, precision, size, s in settings:
        rho = spearman(scores[label], ref)
        lo, hi = bootstrap_spearman(scores[label], ref, seed=seed)
        rows.append({"setting": label, "precision": precision, "minibatch": size, "seed": seed + s,
                     "rho_vs_fp32_128": round(rho, 4), "rho_interval": [round(lo, 4), round(hi, 4)],
                     "keeps_ranking": bool(rho >= 0.95), "fisher_seconds": round(seconds[label], 2),
                     "speedup_vs_fp32_128": round(seconds[REFERENCE] / seconds[label], 2)})
    return {"teacher": teacher_name, "budget_of": block, "budget_params": budget, "configs": len(configs),
            "draws": draws, "settings": rows, "scores": scores, "costs": costs}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce.fisher", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="wrn_16_2")
    p.add_argument("--block", default="BG(2,M)", help="The budget is this single-type student's parameters.")
    p.add_argument("--configs", type=int, default=50)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default=None, help="Labels to run, separated by ';' (default all): "
                   + "; ".join(label for label, *_ in SETTINGS) + f". {REFERENCE} is always included.")
    p.add_argument("--out", default=str(RESULTS / "fisher_check.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    chosen = SETTINGS
    if args.settings:
        wanted = {REFERENCE, *(w.strip() for w in args.settings.split(";"))}
        unknown = wanted - {label for label, *_ in SETTINGS}
        if unknown:
            raise SystemExit(f"error: unknown setting(s) {', '.join(sorted(unknown))}; valid: "
                             + ", ".join(label for label, *_ in SETTINGS))
        chosen = [s for s in SETTINGS if s[0] in wanted]
    result = run_check(args.teacher, args.block, args.configs, args.data, seed=args.seed, settings=chosen)
    result.update({"command": shlex.join(["python", "-m", "benchmarks.reproduce.fisher", *(argv or sys.argv[1:])]),
                   "threads": args.threads, "load_avg_start": round(load, 2),
                   "load_avg_end": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                     time.gmtime()),
                   "wall_s": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
                   "cheapconv": cheapconv.__version__, "python": platform.python_version()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)   # never a half-written result
    for row in result["settings"]:
        print(f"{row['setting']:>18}: rho {row['rho_vs_fp32_128']:+.3f} "
              f"[{row['rho_interval'][0]:+.3f}, {row['rho_interval'][1]:+.3f}]  "
              f"Fisher pass {row['fisher_seconds']:.1f} s ({row['speedup_vs_fp32_128']:.2f}x)")
    return result


if __name__ == "__main__":
    main()
