"""Reproduce the Moonshine and BlockSwap claims on real Fashion-MNIST, resumably (issue 13).

One command runs the whole study; every finished training run is appended as one JSON line to the results
file (``benchmarks/results/reproduce.jsonl``) and skipped when the command runs again, keyed by
row / student / mode / seed / schedule. A run interrupted midway restarts from its last checkpoint (written
every epoch under ``--work``, by ``cheapconv.distill(checkpoint=..., resume=True)``). The results file only ever
holds finished runs, so it can be committed at any moment; ``python -m benchmarks.reproduce.report``
renders the study's page and its plots from it.

Rows (``--only`` takes a comma list of their names; all rows share one schedule and the seeds below):

- ``0`` parity: the teacher architecture from scratch on ``--parity-subset`` images, fp32 / NCHW against
  ``--precision`` / channels_last, same seed: does the fast setting keep the accuracy?
- ``1`` the teacher (``--teacher``, a WRN), from scratch; saved under ``--work`` for the rows after it.
- ``2`` cheap students with the teacher's architecture (``--students``), each from scratch, with KD and AT.
- ``3`` smaller standard WRNs at comparable parameter counts (``--smaller``), the same three ways.
- ``4`` BlockSwap: ``cheapconv.search`` at the parameter budget of each ``--budgets`` student (default the
  ``BG(2,M)`` and ``B(2)`` students), the winner trained with AT against the single-type student (row 2).
- ``fidelity``: ``--fidelity-configs`` configurations at the first budget, sampled and Fisher-scored by the
  search's own machinery, each trained with the same short AT schedule (``--fidelity-epochs``).
- ``5`` (``--teacher-init``): ``G(4)`` and ``B(2)`` students built with ``cheapen(..., init="teacher")`` and
  ``cheapconv.reconstruct``, then AT with the gradient norm clipped at 1; skipped with a message where the
  library lacks them.

Seeds: ``--seeds N`` (3) seeds for the ``G(4)`` AT student, the smaller WRN closest to it in parameters (AT),
the searched student and the single-type student at its budget (AT); one seed elsewhere, except for the
students named in ``--more-seeds`` (every mode; for a searched student ``search@BLOCK``, its single-type
student's AT runs too). A seed fixes the
student's random initialisation and the run's shuffling and augmentation.

Students start from random initialisation (the spec): cheap students are ``cheapen(create_model(teacher))``
of a freshly seeded teacher architecture, never of the trained teacher's weights (row 5 excepted).

The defaults, and why: the papers' WRN-40-2 with 200 epochs takes days on a 2-core CPU. A WRN-16-2 teacher
(693k params; its G(4) student 252k, G(N/8) 151k, B(2) 151k, BG(2,M) 56k; the smaller WRNs 10-2 305k, 16-1
176k, 10-1 78k sit next to them) with the spec's recipe shortened to 3 epochs of all 60,000 images (1,404 steps,
lr × 0.2 at 30/60/80 %) in bf16 autocast + channels_last is 55 jobs; the per-step times measured by
``--dry-run`` put it at a few hours of a quiet 2-core machine (see the report of issue 13 for the figures).
The Fisher-ranking check (bf16 and smaller minibatches against fp32 / 128 images) is the separate command
``python -m benchmarks.reproduce.fisher``; the report renders its JSON too.

    python -m benchmarks.reproduce --dry-run          # what would run, and an estimate of how long
    python -m benchmarks.reproduce                    # the whole study (resumable; Ctrl-C is safe)
    python -m benchmarks.reproduce --only 1           # the teacher alone
    python -m benchmarks.reproduce --latency          # CPU latency of every architecture (a quiet machine!)
    python -m benchmarks.reproduce.report             # the study's page and its plots
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import cheapconv
from cheapconv import Callback, DistillConfig, distill
from cheapconv.data import get_dataset

from ..common import runs
from ..common.records import RESULTS as RESULTS_DIR
from ..common.records import append_record, file_sha, read_records, slug
from ..common.report import progress_printer, say
from ..common.runs import quiet_cheapen
from . import plan as plan_mod
from .plan import Run, Settings, plan_runs
from .row5 import curve_steps

#: how the study is started, as its records name the command
COMMAND = ("python", "-m", "benchmarks.reproduce")
RESULTS = RESULTS_DIR / "reproduce.jsonl"
WORK = RESULTS_DIR.parents[1] / "runs" / "reproduce"   # checkpoints and the teacher (/runs/ is ignored by git)


# ------------------------------------------------------------------------------------------ the results file
# (records are appended with their keys sorted; another process of the study, say ``--only 5`` beside the main
# run, may append to the same file: common.records.append_record locks it)


def environment(args: argparse.Namespace) -> dict:
    """What every record carries: the command, versions, machine state and date."""
    return {"command": shlex.join([*COMMAND, *args.argv]),
            "cheapconv": cheapconv.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "load_avg": round(os.getloadavg()[0], 2),
            **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# --------------------------------------------------------------------------------------------------- data


def load_data(args: argparse.Namespace) -> tuple:
    """(train, test): real images, 3 channels, 32×32; the first ``--subset`` / ``--test-subset`` of each."""
    train = get_dataset(args.data, "train", data_dir=args.data_dir, in_chans=3, image_size=32)
    test = get_dataset(args.data, "test", data_dir=args.data_dir, in_chans=3, image_size=32)
    return subset(train, args.subset, augment=True), subset(test, args.test_subset, augment=False)


def subset(ds, n: int | None, *, augment: bool):
    """The first ``n`` images of ``ds`` (``ds`` itself where ``n`` is None or covers it all)."""
    if not n or n >= len(ds):
        return ds
    return runs.subset(ds, n, augment=augment)


# ------------------------------------------------------------------------------------------------ models


def teacher_path(work: Path, settings: Settings) -> Path:
    return work / f"teacher-{slug(settings.key())}.pt"


def build(run: Run, settings: Settings, records: list[dict]) -> torch.nn.Module:
    """The randomly initialised model of ``run`` (seeded by the run's seed)."""
    torch.manual_seed(run.seed)
    kind, what = run.arch
    if kind == "wrn":
        return cheapconv.create_model(what)
    if kind in ("cheap", "init"):   # "init": the same architecture (latency), random weights
        return quiet_cheapen(cheapconv.create_model(settings.teacher), what)
    if kind == "policy":
        return quiet_cheapen(cheapconv.create_model(settings.teacher), "\n".join(policy_of(what, records)))
    raise ValueError(f"cannot build {run.arch}")


def policy_of(ref: str, records: list[dict]) -> list[str]:
    """Rules of a searched (``search:<key>``) or sampled (``fidelity:<key>#i``) configuration."""
    kind, key = ref.split(":", 1)
    if kind == "search":
        return next(r["rules"] for r in records if r.get("kind") == "search" and r["key"] == key)
    key, index = key.rsplit("#", 1)
    rec = next(r for r in records if r.get("kind") == "fidelity-configs" and r["key"] == key)
    return rec["configs"][int(index)]["rules"]


def arch_id(run: Run, records: list[dict], settings: Settings) -> str:
    """A name for the architecture (latency is measured once per architecture)."""
    kind, what = run.arch
    if kind == "wrn":
        return what
    if kind in ("cheap", "init"):
        return f"{settings.teacher} {what}"
    rules = "\n".join(policy_of(what, records))
    return f"{settings.teacher} policy:{hashlib.sha256(rules.encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------- one run


def train_one(run: Run, settings: Settings, args, data, records: list[dict]) -> dict:
    """Train and evaluate one run (resuming its checkpoint if there is one); returns its record."""
    train, test = data
    teacher = None
    if run.mode in ("kd", "at"):
        tpath = teacher_path(args.work, settings)
        teacher = cheapconv.load(tpath)
    if run.row == "5":
        student, extra = teacher_initialised(run, teacher, test, args)
    else:
        student, extra = build(run, settings, records), {}
    params, macs = cheapconv.count_params(student, "paper"), cheapconv.count_macs(student, (1, 3, 32, 32))
    fast = run.mode != "scratch-fp32"
    cfg = DistillConfig(epochs=run.epochs, batch_size=settings.batch_size,
                        loss={"kd": "kd", "at": "at"}.get(run.mode, "ce"),
                        precision=settings.precision if fast else "fp32",
                        channels_last=settings.channels_last if fast else False, seed=run.seed,
                        device=args.device, eval_every=run.epochs, progress=not args.quiet,
                        checkpoint_every_steps=200,   # an interrupted run loses at most 200 steps
                        # row 5 starts from its teacher: unclipped steps at lr 0.1 undo that start (issue 11's
                        # diagnosis in benchmarks/teacher_init/README.md), so its gradient norm is clipped at 1
                        grad_clip=1.0 if run.row == "5" else None)
    data_train = subset(train, settings.parity_subset, augment=True) if run.row == "0" else train
    ckpt = args.work / "ckpt" / f"{slug(run.key)}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    resumed = ckpt.exists()
    if resumed:
        say(f"  resuming from {ckpt}")
    curve = TestCurve(student, test, ckpt.with_suffix(".curve.jsonl")) if run.row == "5" else None
    if curve is not None and not resumed:
        curve.path.unlink(missing_ok=True)   # points of an earlier, unfinished attempt without a checkpoint
    t0 = time.perf_counter()
    result = distill(teacher, student, data_train, config=cfg, checkpoint=ckpt, resume=resumed,
                     callbacks=[curve] if curve is not None else ())
    wall = time.perf_counter() - t0
    student = result.student.to(memory_format=torch.contiguous_format)
    acc = cheapconv.evaluate(student, test, batch_size=500)   # fp32, whatever precision trained it
    record = {"kind": "run", "key": run.key, "row": run.row, "student": run.student, "mode": run.mode,
              "seed": run.seed, "schedule": run.schedule, "build": list(run.arch),
              "arch": arch_id(run, records, settings),
              "params": params, "macs": macs, "test_top1": round(acc["top1"], 5),
              "test_error": round(100 * (1 - acc["top1"]), 3), "test_loss": round(acc["loss"], 5),
              "test_images": int(acc["n"]), "train_images": len(data_train), "steps": result.steps,
              "epochs": run.epochs, "batch_size": settings.batch_size, "precision": cfg.precision,
              "channels_last": cfg.channels_last, "grad_clip": cfg.grad_clip, "wall_s": round(wall, 1),
              "resumed": resumed,
              **({"curve": curve.points(), "curve_columns": ["step", "epoch", "test_top1"]} if curve else {}),
              "device": str(next(student.parameters()).device), **extra, **environment(args)}
    if run.row == "1":
        path = teacher_path(args.work, settings)
        cheapconv.save(student.eval(), path)
        record["teacher_file"] = str(path)
        record["teacher_sha"] = file_sha(path)
    if teacher is not None:
        record["teacher_sha"] = file_sha(teacher_path(args.work, settings))
    return record


def teacher_initialised(run: Run, teacher, test, args) -> tuple[torch.nn.Module, dict]:
    """Row 5: the student starts from the trained teacher (closed forms), then block-wise reconstruction."""
    torch.manual_seed(run.seed)
    student = quiet_cheapen(teacher, run.arch[1], init="teacher")
    calib = get_dataset(args.data, "train", data_dir=args.data_dir, augment=False, in_chans=3, image_size=32)
    t0 = time.perf_counter()
    report = cheapconv.reconstruct(student, teacher, calib, samples=args.calib_samples, seed=run.seed,
                                   steps=args.calib_steps,
                                   progress=not args.quiet)
    acc0 = cheapconv.evaluate(student, test, batch_size=500)["top1"]
    return student, {"init_seconds": round(time.perf_counter() - t0, 1), "test_top1_at_start": round(acc0, 5),
                     "calib_samples": getattr(report, "samples", args.calib_samples),
                     "calib_steps": args.calib_steps}


class TestCurve(Callback):
    """Row 5's learning curve: test top-1 after fixed fractions of an epoch (issue 11 asks for ¼ and 1 epoch).

    Each point is appended to a JSON-lines file beside the run's checkpoint as soon as it is measured, so a
    resumed run keeps the points before its interruption; ``points()`` reads them back in step order."""

    def __init__(self, student: torch.nn.Module, test, path: Path):
        self.student, self.test, self.path, self.marks = student, test, path, set()

    def on_start(self, run) -> None:
        self.marks = set(curve_steps(run.steps_per_epoch, run.epochs).values())

    def on_step(self, run) -> None:
        if run.step in self.marks:
            top1 = cheapconv.evaluate(self.student, self.test, batch_size=500)["top1"]
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 4),
                                    "test_top1": round(top1, 5)}) + "\n")

    def points(self) -> list[list[float]]:
        if not self.path.exists():
            return []
        got = {}
        for line in self.path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                got[rec["step"]] = [rec["step"], rec["epoch"], rec["test_top1"]]
        return [got[k] for k in sorted(got)]


# --------------------------------------------------------------------------- search and sampled configurations


def do_search(job: plan_mod.SearchJob, settings: Settings, args) -> dict:
    """``cheapconv.search`` at the budget of ``job.block``'s student; returns its record."""
    budget = cheapconv.count_params(quiet_cheapen(cheapconv.create_model(settings.teacher), job.block), "paper")
    t0 = time.perf_counter()
    result = cheapconv.search(settings.teacher, float(budget), metric="params", samples=args.search_samples,
                              data=args.data, seed=0, progress=progress_printer(f"search at {job.block}"))
    w = result.winner
    return {"kind": "search", "key": job.key, "budget_of": job.block, "budget": budget, "rules": list(w.rules),
            "summary": w.summary(), "paper": w.paper, "macs": w.macs, "fisher": w.score,
            "samples": len(result.results), "draws": result.draws, "minibatch": result.minibatch,
            "wall_s": round(time.perf_counter() - t0, 1), **environment(args)}


def do_fidelity_configs(job: plan_mod.SearchJob, settings: Settings, args) -> dict:
    """``--fidelity-configs`` configurations at ``job.block``'s budget, Fisher-scored as the search does."""
    from cheapconv.blockswap import Scorer, SearchSpace, fixed_minibatch, sample_configurations

    teacher = cheapconv.create_model(settings.teacher)
    budget = cheapconv.count_params(quiet_cheapen(teacher, job.block), "paper")
    space = SearchSpace.of(teacher, None, model_name=settings.teacher)
    key = space.cost_key("params", "paper")
    configs, draws, _ = sample_configurations(space, key, (budget * 0.975, budget * 1.025),
                                              args.fidelity_configs, seed=1)
    batch = fixed_minibatch(args.data, batch_size=128, seed=0, input_shape=space.input_shape, teacher=teacher)
    scorer = Scorer(teacher, space, batch, seed=0)
    out = []
    tick = progress_printer("Fisher scores of the sampled configurations")
    for i, config in enumerate(configs):
        costs = space.costs(config)
        out.append({"rules": space.rules(config), "fisher": scorer.score(config).total,
                    "paper": int(costs["paper"]), "macs": int(costs["macs"])})
        tick("scoring", i + 1, len(configs))
    return {"kind": "fidelity-configs", "key": job.key, "budget_of": job.block, "budget": budget,
            "configs": out, "draws": draws, "minibatch": batch.source, **environment(args)}


# ------------------------------------------------------------------------------------------------ latency


def latency_pass(records: list[dict], settings: Settings, args) -> None:
    """CPU latency of every trained architecture not yet measured, side by side, batch 1 and 32 (fp32)."""
    from cheapconv.measure import measure_side_by_side

    done = {(r["arch"], r["threads"]) for r in records if r.get("kind") == "latency"}
    runs = {r["arch"]: r for r in records if r.get("kind") == "run" and r["row"] != "fidelity"}
    todo = [a for a in sorted(runs) if (a, args.threads) not in done]
    if not todo:
        say("latency: every architecture is measured")
        return
    models = [build(plan_mod.run_from_record(runs[a]), settings, records).eval() for a in todo]
    say(f"latency of {len(todo)} architectures, side by side, {args.threads} thread(s); load average "
        f"{os.getloadavg()[0]:.2f} (measure on a quiet machine)")
    by_batch = {b: measure_side_by_side(models, (b, 3, 32, 32), device="cpu", repeats=args.latency_repeats,
                                        threads=args.threads) for b in (1, 32)}
    for i, a in enumerate(todo):
        record = {"kind": "latency", "arch": a, "key": f"latency|{a}|{args.threads}",
                  "batch1_ms": round(by_batch[1][i].median_ms, 4), "batch32_ms": round(by_batch[32][i].median_ms, 4),
                  "dtype": "fp32", "repeats": args.latency_repeats, **environment(args)}
        append_record(args.results, record, sort_keys=True)
    say(f"latency: {len(todo)} architectures measured")


# --------------------------------------------------------------------------------------------------- main


def execute(args: argparse.Namespace, settings: Settings) -> None:
    records = read_records(args.results)
    done = {r["key"] for r in records}
    jobs = plan_runs(settings, args, records)
    todo = [j for j in jobs if j.key not in done]
    say(f"{len(jobs)} jobs in the selected rows, {len(jobs) - len(todo)} already in {args.results}")
    data = load_data(args) if todo else None
    for n, job in enumerate(todo, start=1):
        records = read_records(args.results)
        if job.key in {r["key"] for r in records}:
            say(f"[{n}/{len(todo)}] {job.key}: finished meanwhile by another process of the study")
            continue
        if isinstance(job, plan_mod.Skip):
            say(f"[{n}/{len(todo)}] skipped: {job.reason}")
            continue
        say(f"[{n}/{len(todo)}] {job.key}")
        if isinstance(job, plan_mod.SearchJob):
            record = (do_search if job.kind == "search" else do_fidelity_configs)(job, settings, args)
        else:
            if job.needs_teacher() and not teacher_path(args.work, settings).exists():
                raise SystemExit(f"error: {job.key} needs the trained teacher at "
                                 f"{teacher_path(args.work, settings)}, which is missing. Run row 1 first "
                                 "(--only 1), or restore the file the teacher row was trained into.")
            record = train_one(job, settings, args, data, records)
            say(f"  test error {record['test_error']:.2f} % ({record['wall_s']:.0f} s)")
        append_record(args.results, record, sort_keys=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=" ".join(COMMAND), description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="Rows to run, comma-separated: 0,1,2,3,4,fidelity,5.")
    p.add_argument("--seeds", type=int, default=3, help="Seeds of the multi-seed students (see above).")
    p.add_argument("--more-seeds", default="", metavar="STUDENTS",
                   help="Comma list of further students (e.g. 'B(2),search@B(2)') to run with every seed, "
                        "in every mode.")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", type=int, default=None, help="Train on the first N training images (all).")
    p.add_argument("--test-subset", type=int, default=None, help="Evaluate on the first N test images (all).")
    p.add_argument("--teacher", default="wrn_16_2")
    p.add_argument("--students", default="G(4),G(N/8),B(2),BG(2,M)")
    p.add_argument("--smaller", default="wrn_10_2,wrn_16_1,wrn_10_1")
    p.add_argument("--budgets", default="BG(2,M),B(2)", help="Search budgets: these students' parameters.")
    p.add_argument("--search-samples", type=int, default=1000)
    p.add_argument("--fidelity-configs", type=int, default=16)
    p.add_argument("--fidelity-epochs", type=int, default=1)
    p.add_argument("--parity-subset", type=int, default=10000)
    p.add_argument("--teacher-init", action="store_true", help="Add row 5 (teacher-initialised students).")
    p.add_argument("--calib-samples", type=int, default=2048)
    p.add_argument("--calib-steps", type=int, default=200, help="Row 5: optimisation steps per reconstructed site.")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None,
                   help="Folder with the dataset's files for the training rows (default: the standard places; "
                        "the search rows read the dataset from those).")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, default=WORK, help="Checkpoints and the trained teacher.")
    p.add_argument("--dry-run", action="store_true", help="List what would run and estimate how long.")
    p.add_argument("--latency", action="store_true", help="Only the latency pass (run it on a quiet machine).")
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    settings = Settings.from_args(args)
    try:
        if args.latency:
            latency_pass(read_records(args.results), settings, args)
        elif args.dry_run:
            plan_mod.dry_run(settings, args, read_records(args.results), load_data)
        else:
            execute(args, settings)
    except KeyboardInterrupt:
        say("interrupted: finished runs are in the results file and the current one left a checkpoint; run the "
            "same command again to continue")
        raise SystemExit(130) from None
    except cheapconv.CheapconvError as e:
        say(f"error: {e}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
