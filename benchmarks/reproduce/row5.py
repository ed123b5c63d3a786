"""The reproduction report's section on row 5: teacher-initialised + reconstructed students against the
random-initialised students of row 2, along the run (issue 11's question at the study's full schedule)."""

from __future__ import annotations

from ..common.stats import steps_to_reach

FRACTIONS = (0.125, 0.25, 0.5, 1.0, 2.0)
LABELS = ("⅛ ep", "¼ ep", "½ ep", "1 ep", "2 ep")


def _pct(top1: float | None) -> str:
    return "–" if top1 is None else f"{100 * top1:.2f}"


def curve_steps(steps_per_epoch: int, epochs: int) -> dict[float, int]:
    """The optimiser step that ends each fraction of an epoch in ``FRACTIONS``, for those before the run's end:
    where ``study.TestCurve`` evaluates and where this section looks its figures up."""
    return {f: max(1, round(f * steps_per_epoch)) for f in FRACTIONS if f < epochs}


def teacher_init_section(records: list[dict]) -> list[str]:
    """Markdown lines: one row per row-5 run with its learning curve (test top-1 %, fp32 evaluation)."""
    runs = [r for r in records if r.get("kind") == "run" and r.get("row") == "5"]
    if not runs:
        return ["Pending (row 5 has not run: `python -m benchmarks.reproduce --teacher-init`)."]
    random = {r["student"]: r for r in records
              if r.get("kind") == "run" and r.get("row") == "2" and r.get("mode") == "at" and r.get("seed") == 0}
    head = "| student | seed | step 0 | " + " | ".join(LABELS) + " | final | random-init AT final | " \
           "steps to it | fewer steps |"
    lines = [head, "|" + "---|" * (len(LABELS) + 7)]
    for r in sorted(runs, key=lambda r: (r["student"], r["seed"])):
        block = r["student"].removeprefix("init:")
        spe = r["steps"] // r["epochs"]
        by_step = {int(p[0]): p[2] for p in r.get("curve", [])}
        steps = curve_steps(spe, r["epochs"])
        cells = [_pct(by_step.get(steps[f])) if f in steps else "–" for f in FRACTIONS]
        rand = random.get(block)
        reach = fewer = "–"
        if rand:
            measured = [*sorted(by_step.items()), (r["steps"], r["test_top1"])]
            s = steps_to_reach(r["test_top1_at_start"], measured, rand["test_top1"])
            reach = f"{s} of {rand['steps']}" if s is not None else f"not reached in {r['steps']}"
            fewer = ("at step 0" if s == 0 else f"{rand['steps'] / s:.1f}×") if s is not None else "–"
        lines.append(f"| {block} | {r['seed']} | {_pct(r['test_top1_at_start'])} | " + " | ".join(cells) +
                     f" | {_pct(r['test_top1'])} ({r['epochs']} ep) | {_pct(rand['test_top1']) if rand else '–'} | "
                     f"{reach} | {fewer} |")
    calib = {(r.get("calib_samples"), r.get("calib_steps")) for r in runs}
    teacher = next((r for r in records if r.get("kind") == "run" and r.get("row") == "1"), None)
    lines += ["", "Test top-1 %, fp32, on the study's test images, as the model stands at that step (running "
                  f"BatchNorm statistics). One epoch is {spe:.0f} steps. The start is `cheapen(teacher, block, "
                  "init=\"teacher\")` + `cheapconv.reconstruct` on "
                  + "; ".join(f"{n} training images, {k if k is not None else 'the default'} steps per site"
                              for n, k in sorted(calib, key=str))
                  + ", then AT with the study's schedule and the gradient norm clipped at 1."
                  + (f" Teacher: {_pct(teacher['test_top1'])}." if teacher else "")
                  + " \"Steps to it\": the first measured step at or above the random-initialised AT student's "
                  "final accuracy (row 2, seed 0).",
                  "", "Two things make this row understate what a teacher-initialised start saves. The study's "
                  "schedule holds lr 0.1 for its first 30 %, and the running BatchNorm averages lag the weights "
                  "at that lr, so the early points dip below the start (they are the model as it would be "
                  "deployed at that step, not its best possible reading). With the fine-tuning recipe that "
                  "`cheapconv distill` now applies to teacher-initialised students (gradient norm clipped at 1, "
                  "cosine decay over the budget), the same starts reach the random-initialised students' final "
                  "accuracy in far fewer steps: benchmarks/teacher_init/README.md, \"Short budgets with the "
                  "fine-tuning recipe\" (`python -m benchmarks.teacher_init`)."]
    return lines
