"""The compress study's table (Markdown) from its results file."""

from __future__ import annotations

from collections import defaultdict

from cheapconv.compression import FAMILIES

from ..common.stats import mean_sd

#: the families compress uses when none are named (a record's ``families`` lists them with the added ones)
DEFAULT_FAMILIES = tuple(e.name for e in FAMILIES.entries() if e.obj.default)


def _pct(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "-"


def _top1(figures: dict | None):
    """The top-1 of a start or end record (``val_top1`` in the metrics file, ``top1`` in DistillResult)."""
    figures = figures or {}
    return figures.get("top1", figures.get("val_top1"))


def _runtime(rec: dict) -> str:
    """The runtime, and the families the library added to the defaults (``torch + thin``)."""
    added = [f for f in rec.get("families") or [] if f not in DEFAULT_FAMILIES]
    return " + ".join([rec["runtime"], *added])


def setting_name(rec: dict) -> str:
    """A setting's name in files and keys: its runtime, then its batch where not 1 and the families it adds to the
    defaults (``onnxruntime-b32``, ``torch-thin``); ``rec`` is a record, or its runtime/batch/families."""
    added = [f for f in rec.get("families") or [] if f not in DEFAULT_FAMILIES]
    batch = rec.get("batch", 1)
    return "-".join([rec["runtime"], *([f"b{batch}"] if batch != 1 else []), *(["+".join(added)] if added else [])])


def build_time_line(rec: dict) -> str:
    """Stage ``build-time``: a fresh default library's build time and the median solve per budget."""
    solves = ", ".join(f"{budget} {'out of reach' if t is None else f'{1000 * t:.0f} ms'}"
                       for budget, t in rec["solve_seconds"].items())
    return (f"- fresh library at the defaults ({rec['runtime']}, batch {rec['batch']}, quiet machine: load average "
            f"{rec['loadavg_before'][0]} before, {rec['loadavg'][0]} after): {rec['options']} options on "
            f"{rec['sites']} sites built in {rec['seconds'] / 60:.1f} min (target ≤ 15 min); one solve (median of 5): "
            f"{solves} (target ≤ 5 s)")


def lite0_setting_name(runtime: str, attempt: int = 1) -> str:
    """The Lite0 students' setting in re-measure keys (batch 1, the stage's only batch): ``lite0-<runtime>``, and
    :func:`run_label` after it for a repeated run."""
    return f"lite0-{runtime}{run_label(attempt)}"


def run_label(attempt: int) -> str:
    """What a repeated run (``--attempt N``, N > 1) adds to its students' file names and re-measure setting."""
    return f"-run{attempt}" if attempt > 1 else ""


def attempt_suffix(attempt: int) -> str:
    """What a repeated run (``--attempt N``, N > 1) adds to its records' keys, kept beside the first run's."""
    return f" #{attempt}" if attempt > 1 else ""


def _remeasure_note(name: str, rec: dict) -> str:
    return (f"- re-measured ({name}): every saved student and the teacher side by side in one loop, "
            f"{rec['repeats']} rounds, load average {rec['loadavg'][0]}")


def _remeasured(records: list[dict]) -> dict[str, dict]:
    """Setting -> its latest ``remeasure`` record."""
    return {r["setting"]: r for r in records if r.get("stage") == "remeasure"}


def render(records: list[dict]) -> str:
    lines = []
    again = _remeasured(records)
    for rec in records:
        if rec["key"].startswith("library"):
            lines.append(f"- library ({_runtime(rec)}, batch {rec.get('batch', 1)}): {rec['options']} options on "
                         f"{rec['sites']} sites, built in "
                         f"{rec['seconds'] / 60:.1f} min (load average {rec['loadavg'][0]}); teacher "
                         f"{rec['teacher_latency_ms']:.3f} ms")
        if rec.get("stage") == "build-time":
            lines.append(build_time_line(rec))
    lines += ["", "| runtime | batch | budget | met | student ÷ teacher, batch 1 | at the budget's batch | "
                  "re-measured, batch 1 / the budget's | params | MACs | top-1 at step 0 | after 1 epoch | teacher | "
                  "rounds: predicted→measured(/again) ms | chosen |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for rec in records:
        if not rec["key"].startswith("student"):
            continue
        if "unreachable" in rec:
            fastest, teacher = rec["reachable_ms"]
            lines.append(f"| {_runtime(rec)} | {rec.get('batch', 1)} | {rec['budget']} | out of reach: the fastest "
                         f"student of this library is predicted at {fastest:.3f} ms ({fastest / teacher:.0%} of the "
                         "teacher) | | | | | | | | | | | |")
            continue
        batch = str(rec.get("batch", 1))
        ratios = {b: rec["student_ms"][b] / rec["teacher_ms"][b] for b in rec["student_ms"]}
        counts = rec["counts"]
        chosen = ", ".join([*(f"group {g}={w}" for g, w in (rec.get("widths") or {}).items()),
                            *(f"{site}={spec}" for site, spec in rec["choices"].items())])
        rounds = "; ".join(_round(r) for r in rec.get("rounds", []))
        ms = again.get(setting_name(rec), {}).get("ms", {})
        redone = " / ".join(f"{ms[b][rec['budget']] / ms[b]['teacher']:.2f}" for b in sorted({"1", batch}, key=int)
                            if rec["budget"] in ms.get(b, {})) or "–"
        lines.append(f"| {_runtime(rec)} | {batch} | {rec['budget']} | {'yes' if rec['met'] else 'no'} | "
                     f"{ratios['1']:.2f} | {ratios[batch]:.2f} | {redone} | "
                     f"{counts['student']['paper'] / counts['teacher']['paper']:.2f} | "
                     f"{counts['student']['macs'] / counts['teacher']['macs']:.2f} | "
                     f"{_pct(_top1(rec.get('start')))} | {_pct(_top1(rec.get('end')))} | "
                     f"{_pct(rec.get('teacher_top1'))} | {rounds} | {chosen} |")
    notes = [_remeasure_note(name, r) for name, r in again.items()
             if not name.startswith(lite0_setting_name(""))]      # those are under the Lite0 table
    return "\n".join(lines + ([""] + notes if notes else []) + fisher_table(records) + lite0_table(records))


def _run(rec: dict) -> str:
    """`` (run N)`` for a repeated run's record, else nothing."""
    return f" (run {rec['attempt']})" if rec.get("attempt", 1) > 1 else ""


def _round(r: dict) -> str:
    """One round of the measured-budget loop: predicted → measured ms, and the confirming measurement after a slash
    where there was one (records from before the loop confirmed have none)."""
    again = f"/{r['confirmation']:.2f}" if r.get("confirmation") is not None else ""
    return f"{r['predicted']:.2f}→{r['measured']:.2f}{again}"


def lite0_table(records: list[dict]) -> list[str]:
    """Stage ``lite0``: the fine-tuned EfficientNet-Lite0 compressed at each budget."""
    rows = [r for r in records if r.get("stage") == "lite0" or r["key"].startswith("lite0 ")]
    if not rows:
        return []
    lines = ["", "**EfficientNet-Lite0 (fine-tuned on the ImageFolder, 96×96)**", ""]
    for r in rows:
        if " library " in r["key"]:
            lines.append(f"- library ({r['runtime']}, batch {r['batch']}): {r['options']} options on {r['sites']} "
                         f"sites, {r['seconds'] / 60:.1f} min{' (resumed: this run only)' if r['resumed'] else ''} "
                         f"(load average {r['loadavg'][0]}); teacher {r['teacher_latency_ms']:.3f} ms")
    teacher_top1 = {r["teacher_sha"]: r["top1"] for r in rows if r["key"].startswith("lite0 teacher ")}
    rows = [r for r in rows if not r["key"].startswith("lite0 teacher ")]
    again = _remeasured(records)
    lines += ["", "| runtime | batch | budget | met | student ÷ teacher, batch 1 / the budget's | "
                  "re-measured, batch 1 | params | MACs | top-1 at step 0 | after 1 epoch | teacher | "
                  "rounds: predicted→measured(/again) ms | chosen |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if " library " in r["key"]:
            continue
        if "unreachable" in r:
            lines.append(f"| {r['runtime']} | | {r['budget']}{_run(r)} | out of reach: {r['unreachable'][:120]} "
                         "| | | | | | | | | |")
            continue
        ratios = " / ".join(f"{r['student_ms'][b] / r['teacher_ms'][b]:.2f}" for b in sorted(r["student_ms"], key=int))
        counts = r["counts"]
        attempt = r.get("attempt", 1)
        ms = again.get(lite0_setting_name(r["runtime"], attempt), {}).get("ms", {}).get("1", {})
        redone = f"{ms[r['budget']] / ms['teacher']:.2f}" if r["budget"] in ms else "–"
        budget = r["budget"] + _run(r)
        lines.append(f"| {r['runtime']} | {r['batch']} | {budget} | {'yes' if r['met'] else 'no'} | {ratios} | "
                     f"{redone} | "
                     f"{counts['student']['paper'] / counts['teacher']['paper']:.2f} | "
                     f"{counts['student']['macs'] / counts['teacher']['macs']:.2f} | {_pct(_top1(r.get('start')))} | "
                     f"{_pct(_top1(r.get('end')))} | {_pct(teacher_top1.get(r.get('teacher_sha')))} | "
                     f"{'; '.join(_round(x) for x in r.get('rounds', []))} | {len(r['choices'])} sites changed |")
    notes = [f"- {r['budget']}{_run(r)}: {note}" for r in rows if " library " not in r["key"]
             for note in r.get("notes") or []]
    notes += [_remeasure_note(name, r) for name, r in again.items() if name.startswith(lite0_setting_name(""))]
    return lines + ([""] + notes if notes else [])


def fisher_table(records: list[dict]) -> list[str]:
    """The ``fisher`` stage: compress against the Fisher-search winner at one budget, top-1 after distillation
    as mean ± sd over seeds, and both students' latency measured side by side with the teacher."""
    runs: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    latency: dict[tuple, dict] = {}
    for rec in records:
        if rec.get("stage") != "fisher":
            continue
        setting = (rec["runtime"], rec["batch"], rec["budget"])
        if "ms" in rec:
            latency[setting] = rec
        else:
            runs[setting][rec["method"]].append(rec)
    lines: list[str] = []
    for setting, methods in runs.items():
        runtime, batch, budget = setting
        lat = latency.get(setting)
        lines += ["", f"**{budget} of the teacher's latency, {runtime}, batch {batch}**"
                      + (f" (latency load average {lat['loadavg'][0]})" if lat else ""), "",
                  "| student | policy | student ÷ teacher | params | top-1 at step 0 | "
                  "after distillation (mean ± sd) | seeds |", "|---|---|---:|---:|---:|---:|---|"]
        for method in ("compress", "search"):
            recs = sorted(methods.get(method, []), key=lambda r: r["seed"])
            if not recs:
                continue
            ends = [_top1(r["end"]) for r in recs]
            mean, sd = mean_sd(ends)
            ratio = f"{lat['ms'][method] / lat['ms']['teacher']:.2f}" if lat else "–"
            lines.append(f"| {method} | {recs[0]['policy'].replace(chr(10), '; ')} | {ratio} | {recs[0]['params']:,} | "
                         f"{_pct(_top1(recs[0]['start']))} | {100 * mean:.2f}"
                         + (f" ± {100 * sd:.2f}" if sd is not None else "") + " % | "
                         + ", ".join(f"{100 * e:.2f}" for e in ends) + " |")
    return lines
