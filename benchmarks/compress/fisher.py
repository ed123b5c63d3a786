"""Stage ``fisher`` of the compress study: at one latency budget, the ``compress`` student against the winner of
the Fisher-potential search (BlockSwap, ``cheapconv.search``) for the same budget and runtime, both
teacher-initialised and reconstructed the same way, then distilled for one epoch with the same recipe, over seeds.

- search: ``cheapconv.search(teacher, budget, metric="latency", runtime=...)`` on real Fashion-MNIST minibatches,
  its winning policy applied with ``cheapen(init="teacher")``, then ``reconstruct`` on the calibration images
  (closed forms, no Adam steps, as compress reconstructs);
- compress: ``cheapconv.compress(..., epochs=0)`` from the runtime's library (assembled from its fitted options,
  then the same sequential reconstruction);
- each start copied and distilled once per seed (``DistillConfig.fine_tuning``, the teacher's lr), evaluated on the
  10,000 test images. One record per (method, seed); the two students' latencies are measured side by side with the
  teacher in the ``latency`` record (its load average beside it).

Both starts depend on timings (the search's latency table, compress's measured re-solve), so they are built and
timed first and saved (``OUT/fisher-<method>-<budget>.pt``, what made them in ``.json`` beside): run with
``--seeds`` and nothing after it on a quiet machine to build and time them alone; the distillations, which time
nothing, can run later, beside other work.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from pathlib import Path

import torch

import cheapconv
from cheapconv import DistillConfig
from cheapconv.measure import measure_in_runtime

from ..common.records import append_record
from ..common.report import say


def starts(teacher, train, args, budget: str, library: Path) -> dict[str, tuple[torch.nn.Module, dict]]:
    """The two students before distillation, and what made each (policy, search or selection figures)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        began = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)          # the search times its candidates on the threads it is given
        try:
            found = cheapconv.search(teacher, budget, metric="latency", runtime=args.runtime, data="fashion-mnist",
                                     seed=args.seed, latency_batch=args.batch)
        finally:
            torch.set_num_threads(threads)
        searched_s = time.perf_counter() - began
        policy = "\n".join(found.winner.rules)
        searched = cheapconv.cheapen(teacher, policy, init="teacher")
        # closed forms only (steps=0), as compress's sequential pass below (its reconstruct_steps default)
        cheapconv.reconstruct(searched, teacher, train, samples=args.samples, steps=0, progress=False,
                              seed=args.seed)
        compressed = cheapconv.compress(teacher, train, budget, runtime=args.runtime, batch=args.batch, threads=1,
                                        library=library, samples=args.samples, held_out=args.held_out, epochs=0,
                                        reconstruct_samples=args.samples, repeats=args.repeats, progress=False,
                                        seed=args.seed)
    return {"search": (searched, {"policy": policy, "search_seconds": searched_s,
                                  "predicted_ms": found.winner.cost}),
            "compress": (compressed.student, {"policy": compressed.selection.policy(),
                                              "met": compressed.met})}


def saved_starts(teacher, train, args, budget: str, library: Path) -> dict[str, tuple[torch.nn.Module, dict]]:
    """:func:`starts`, read from ``args.out`` where a run before built them, else built and saved there."""
    files = {m: args.out / f"fisher-{m}-{args.runtime}-b{args.batch}-{budget.rstrip('%')}.pt"
             for m in ("search", "compress")}
    if all(f.is_file() and f.with_suffix(".json").is_file() for f in files.values()):
        return {m: (cheapconv.load(f), json.loads(f.with_suffix(".json").read_text())) for m, f in files.items()}
    say(f"== building both starts at {budget} ({args.runtime}, batch {args.batch})")
    built = starts(teacher, train, args, budget, library)
    for m, (student, made) in built.items():
        cheapconv.save(student, files[m])
        files[m].with_suffix(".json").write_text(json.dumps(made, indent=1))
    return built


def run(teacher, train, augmented, test, args, budget: str, results: Path, done: set[str], sha: str, *,
        library: Path) -> None:
    """The two starts (built, or read where built before) and their side-by-side latency record, then every
    (method, seed) not yet in ``done``."""
    base = f"fisher {args.runtime} b{args.batch} {budget} {sha}"
    todo = [(m, s) for m in ("search", "compress") for s in args.seeds if f"{base} {m} seed{s}" not in done]
    if not todo and f"{base} latency" in done:
        return
    built = saved_starts(teacher, train, args, budget, library)
    if f"{base} latency" not in done:     # before any distillation: timed on the machine the starts were built on
        models = [teacher, built["search"][0], built["compress"][0]]
        lat = measure_in_runtime(models, (args.batch, 3, 32, 32), args.runtime, threads=1, repeats=args.repeats)
        append_record(results, {"key": f"{base} latency", "stage": "fisher", "budget": budget,
                                "runtime": args.runtime, "batch": args.batch,
                                "ms": {n: x.median_ms for n, x in zip(("teacher", "search", "compress"), lat,
                                                                      strict=True)},
                                "loadavg": [round(v, 2) for v in os.getloadavg()]})
    for method, seed in todo:
        student, made = built[method]
        student = copy.deepcopy(student)    # keeps its records (recipe: the step-0 evaluation) since cheapconv's fix
        say(f"== {base} {method} seed {seed}")
        config = DistillConfig.fine_tuning(epochs=args.epochs, lr=0.1, progress=not args.quiet, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = cheapconv.distill(teacher, student, augmented, val_data=test, config=config)
        append_record(results, {"key": f"{base} {method} seed{seed}", "stage": "fisher", "method": method,
                                "seed": seed, "budget": budget, "runtime": args.runtime, "batch": args.batch,
                                "epochs": args.epochs, **made, "start": result.start, "end": result.end,
                                "params": cheapconv.count_params(student, "paper"),
                                "macs": cheapconv.count_macs(student, (1, 3, 32, 32))})
