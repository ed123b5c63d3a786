"""The study's plan: which runs make up each row, their keys, and the dry run's estimate (see study.py)."""

from __future__ import annotations

import inspect
import os
import statistics
import sys
from dataclasses import dataclass, field

import torch

import cheapconv
from cheapconv import DistillConfig, distill

from ..common.records import slug
from ..common.runs import StepTimer, quiet_cheapen

ROWS = ("0", "1", "2", "3", "4", "fidelity", "5")


@dataclass(frozen=True)
class Settings:
    """What every run of the study shares; ``key()`` names the schedule in every record's key."""

    teacher: str
    epochs: int
    batch_size: int
    precision: str
    channels_last: bool
    subset: int | None
    test_subset: int | None
    fidelity_epochs: int
    parity_subset: int

    @classmethod
    def from_args(cls, args) -> Settings:
        return cls(teacher=args.teacher, epochs=args.epochs, batch_size=args.batch_size, precision=args.precision,
                   channels_last=not args.no_channels_last, subset=args.subset, test_subset=args.test_subset,
                   fidelity_epochs=args.fidelity_epochs, parity_subset=args.parity_subset)

    def key(self, epochs: int | None = None, train: int | None = None) -> str:
        fast = self.precision + ("+cl" if self.channels_last else "")
        n = train or self.subset or "all"
        return (f"{self.teacher}/e{epochs or self.epochs}/b{self.batch_size}/{fast}/n{n}/"
                f"t{self.test_subset or 'all'}")


@dataclass(frozen=True)
class Run:
    """One training run. ``arch`` says how to build the student: ("wrn", name), ("cheap", block),
    ("policy", "search:<key>" or "fidelity:<key>#i"), ("init", block)."""

    row: str
    student: str
    mode: str            # scratch, kd, at; row 0: scratch-fp32 / scratch (the fast setting)
    seed: int
    schedule: str
    epochs: int
    arch: tuple[str, str]

    @property
    def key(self) -> str:
        return f"{self.row}|{self.student}|{self.mode}|{self.seed}|{self.schedule}"

    def needs_teacher(self) -> bool:
        return self.mode in ("kd", "at")


@dataclass(frozen=True)
class SearchJob:
    """A search (kind "search") or the sampled fidelity configurations (kind "fidelity-configs")."""

    kind: str
    block: str
    teacher: str
    size: int            # search samples / configurations

    @property
    def key(self) -> str:
        return f"{self.kind}|{self.block}|{self.teacher}|{self.size}"


@dataclass(frozen=True)
class Skip:
    reason: str
    key: str = field(default="skip")


def init_available() -> str | None:
    """None when teacher initialisation and reconstruction exist in this cheapconv, else why not."""
    if not hasattr(cheapconv, "reconstruct"):
        return "cheapconv.reconstruct does not exist in this cheapconv"
    if "init" not in inspect.signature(cheapconv.cheapen).parameters:
        return "cheapconv.cheapen has no init= argument in this cheapconv"
    return None


def run_from_record(record: dict) -> Run:
    return Run(record["row"], record["student"], record["mode"], record["seed"], record["schedule"],
               record["epochs"], tuple(record["build"]))


def closest_smaller(settings: Settings, block: str, smaller: list[str]) -> str | None:
    """The smaller WRN whose parameter count is closest to ``block``'s student."""
    if not smaller:
        return None
    target = cheapconv.count_params(quiet_cheapen(cheapconv.create_model(settings.teacher), block), "paper")
    return min(smaller, key=lambda s: abs(cheapconv.count_params(cheapconv.create_model(s), "paper") - target))


def split(text: str) -> list[str]:
    """``"G(4),BG(2,M),B(2)"`` -> the three specs (commas inside brackets stay)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur.strip()] if p]


def plan_runs(settings: Settings, args, records: list[dict]) -> list:
    """Every job of the selected rows in the order they run (duplicates dropped)."""
    rows = ROWS[:-1] + (("5",) if args.teacher_init else ()) if args.only is None else tuple(split(args.only))
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown row(s) {', '.join(unknown)} in --only; rows are {', '.join(ROWS)}.")
    students, smaller, budgets = split(args.students), split(args.smaller), split(args.budgets)
    key, many = settings.key(), range(args.seeds)
    seeded = set(split(args.more_seeds))   # students given every seed in every mode
    multi_block = "G(4)" if "G(4)" in students else (students[0] if students else None)
    multi_small = closest_smaller(settings, multi_block, smaller) if multi_block and "3" in rows else None
    jobs: list = []
    if "0" in rows:
        pkey = settings.key(train=settings.parity_subset)
        jobs += [Run("0", settings.teacher, m, 0, pkey, settings.epochs, ("wrn", settings.teacher))
                 for m in ("scratch-fp32", "scratch")]
    if "1" in rows:
        jobs.append(Run("1", "teacher", "scratch", 0, key, settings.epochs, ("wrn", settings.teacher)))
    for row, names, kind in (("2", students, "cheap"), ("3", smaller, "wrn")):
        if row not in rows:
            continue
        for name in names:
            for mode in ("scratch", "kd", "at"):
                multi = (mode == "at" and name in (multi_block, multi_small)) or name in seeded
                jobs += [Run(row, name, mode, s, key, settings.epochs, (kind, name)) for s in (many if multi else [0])]
    if "4" in rows:
        for i, block in enumerate(budgets):
            search = SearchJob("search", block, settings.teacher, args.search_samples)
            jobs.append(search)
            seeds = many if i == 0 or f"search@{block}" in seeded or block in seeded else [0]
            jobs += [Run("4", f"search@{block}", "at", s, key, settings.epochs, ("policy", f"search:{search.key}"))
                     for s in seeds]
            # the single-type student at this budget, AT, with the same seeds (row 2's runs)
            jobs += [Run("2", block, "at", s, key, settings.epochs, ("cheap", block)) for s in seeds]
    if "fidelity" in rows and budgets:
        fid = SearchJob("fidelity-configs", budgets[0], settings.teacher, args.fidelity_configs)
        fkey = settings.key(epochs=settings.fidelity_epochs)
        jobs.append(fid)
        jobs += [Run("fidelity", f"cfg{i:02d}", "at", 0, fkey, settings.fidelity_epochs,
                     ("policy", f"fidelity:{fid.key}#{i}")) for i in range(args.fidelity_configs)]
    if "5" in rows:
        why = init_available()
        if why:
            jobs.append(Skip(f"row 5 (teacher-initialised students): {why}; run it again once the "
                             "teacher-initialisation issue has landed", key="skip|5"))
        else:
            jobs += [Run("5", f"init:{b}", "at", 0, key, settings.epochs, ("init", b)) for b in ("G(4)", "B(2)")]
    seen, out = set(), []
    for j in jobs:
        if j.key not in seen:
            seen.add(j.key)
            out.append(j)
    return out


# ------------------------------------------------------------------------------------------------ dry run


def step_seconds(run: Run, settings: Settings, args, records: list[dict], train, cache: dict) -> float:
    """Seconds per optimiser step of ``run``: from finished runs of the same architecture kind and mode, else
    timed here over a few steps (an untrained teacher of the same architecture: timing only)."""
    kind = (run.arch[0], run.arch[1] if run.arch[0] != "policy" else "policy", run.mode)
    if kind in cache:
        return cache[kind]
    done = [r["wall_s"] / r["steps"] for r in records if r.get("kind") == "run" and r["steps"] and
            tuple(r["build"])[0] == run.arch[0] and r["mode"] == run.mode and not r.get("resumed")
            and (run.arch[0] == "policy" or r["build"][1] == run.arch[1])]
    if done:
        cache[kind] = statistics.median(done)
        return cache[kind]
    torch.manual_seed(0)
    build_arch = run.arch if run.arch[0] != "policy" else ("cheap", split(args.budgets)[0])
    if build_arch[0] == "wrn":
        student = cheapconv.create_model(build_arch[1])
    else:
        student = quiet_cheapen(cheapconv.create_model(settings.teacher), build_arch[1])
    teacher = cheapconv.create_model(settings.teacher) if run.needs_teacher() or run.row == "5" else None
    fast = run.mode != "scratch-fp32"
    cfg = DistillConfig(epochs=None, max_steps=5, batch_size=settings.batch_size,
                        loss={"kd": "kd", "at": "at"}.get(run.mode, "ce"),
                        precision=settings.precision if fast else "fp32",
                        channels_last=settings.channels_last and fast, progress=False, device=args.device)
    timer = StepTimer()
    distill(teacher, student, train, config=cfg, callbacks=[timer])
    cache[kind] = statistics.median(timer.times[2:])
    return cache[kind]


def dry_run(settings: Settings, args, records: list[dict], load_data) -> None:
    """Print every job of the selected rows with its state and an estimated duration."""
    done = {r["key"] for r in records}
    jobs = plan_runs(settings, args, records)
    train, _ = load_data(args)
    cache: dict = {}
    total = 0.0
    print(f"{'state':<8} {'est. min':>8}  job")
    for job in jobs:
        if isinstance(job, Skip):
            print(f"{'skip':<8} {'':>8}  {job.reason}")
            continue
        state = "done" if job.key in done else "todo"
        est = 0.0
        if isinstance(job, SearchJob) and state == "todo":
            # ~3.5 s per scored WRN-16-2 configuration: fisher.py measured a 2.6 s fp32/128 Fisher pass
            # plus ~1 s of building, at one thread on the loaded machine (load 11): an upper bound
            est = job.size * 3.5
        elif state == "todo":
            n_train = settings.parity_subset if job.row == "0" else len(train)
            steps = job.epochs * (n_train // settings.batch_size)
            ckpt = args.work / "ckpt" / f"{slug(job.key)}.ckpt"
            est = steps * step_seconds(job, settings, args, records, train, cache)
            state = "partial" if ckpt.exists() else state
        total += est if state != "done" else 0.0
        print(f"{state:<8} {est / 60:>8.1f}  {job.key}")
    print(f"\n{sum(1 for j in jobs if j.key in done)} of {len(jobs)} jobs done; the rest takes about "
          f"{total / 3600:.1f} h at the per-step times of the finished runs, or timed now where there are none "
          f"({torch.get_num_threads()} thread(s), load "
          f"average {os.getloadavg()[0]:.1f}; evaluation and row 5's reconstruction not included)", file=sys.stdout)
