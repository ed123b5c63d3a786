"""``cheapconv search``: BlockSwap, the best mixed-block student within a budget, written as a policy file."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from .app import (
    app,
    check_input_size,
    check_outputs,
    emit,
    err,
    literal,
    literal_table,
    out,
    output_path,
    parse_input_size,
    warn,
)
from .options import round_option, runtime_option


def _policy_paths(output: Path, count: int) -> list[Path]:
    """-o for the winner, ``<stem>.<k><suffix>`` for rank k (as SearchResult.write_policies names them)."""
    return [output if rank == 1 else output.with_name(f"{output.stem}.{rank}{output.suffix}")
            for rank in range(1, count + 1)]


def _write_policies(result, output: Path, top: int) -> list[Path]:
    """Write the top policies atomically; on a failure (a full disk) none of this run's files is left."""
    from cheapconv.store.files import atomic_write

    written: list[Path] = []
    try:
        for rank, target in enumerate(_policy_paths(output, min(top, len(result.results))), 1):
            text = result.policy_text(rank)
            atomic_write(target, lambda tmp, text=text: Path(tmp).write_text(text))
            written.append(target)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def _refuse_existing(paths: list[Path]) -> None:
    """Before any work: the policy files this run would write must not exist yet (a ``<stem>.2.txt`` of another
    run, or a model file given as -o by mistake), unless --overwrite says to replace them."""
    from cheapconv.errors import UsageError

    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise UsageError(f"{', '.join(repr(str(p)) for p in existing)} already exist{'s' if len(existing) == 1 else ''}"
                         ": search writes its policies to -o and <stem>.K for the top K. Choose another -o, or pass "
                         "--overwrite to replace them.")


def _metric(value: str | None) -> str | None:
    if value is not None and value not in ("params", "macs", "latency"):
        raise typer.BadParameter(f"choose params, macs or latency, not {value!r}", param_hint="--metric")
    return value


def progress_bar():
    """The search's progress on stderr, one row per phase (a bar on a terminal; in a pipe or a log, a line per
    phase and per ~10 % with the time left: see cheapconv.progress), and the callback that advances it."""
    from cheapconv.progress import ProgressReport

    labels = {"latency": "Timing blocks", "scoring": "Scoring (Fisher)", "spread": "Re-scoring the top",
              "blocks": "Timing replaced blocks"}
    report = ProgressReport(labels, console=err)
    return report, report.tick


def _print_result(result, show: int) -> None:
    """The top ``show`` configurations, what was sampled and scored, and the winner as cheapen built it."""
    from cheapconv.blockswap import format_cost

    out.print(literal_table(result.table(top=show)))
    win = result.winner
    out.print(f"Sampled {result.draws:,} configurations, {result.in_budget:,} within the budget window; "
              f"scored {len(result.results):,} distinct students on {result.minibatch}.", highlight=False)
    line = (f"Winner: {format_cost(win.cost, result.metric)}; built by cheapen: "
            f"{int(result.measured['paper']):,} parameters (paper), {int(result.measured['macs']):,} MACs")
    if result.metric == "latency":
        cond = result.latency_conditions
        where = cond.get("runtime_info") or cond.get("runtime", "torch")
        line += (f"; latency {win.latency_ms:.3f} ms estimated (additive, per-block), "
                 f"{result.measured['latency']:.3f} ms measured whole (in {where}; batch {cond['batch']}, "
                 f"{cond['device']}, {cond['threads']} threads, {cond['dtype']})")
    out.print(line + ".", highlight=False)


@app.command()
def search(
    model: str = typer.Argument(..., help="wrn_40_2, resnet18, torchvision:NAME, timm:NAME, or a file."),
    budget: str = typer.Option(..., "--budget", "-b", help="300k, 1.2M, 40M (MACs), 5ms, or 25% of the "
                                                           "teacher."),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write the winning policy file."),
    metric: str = typer.Option(None, "--metric", "-m", help="params, macs or latency (default: latency for a "
                                                            "time budget, else params)."),
    samples: int = typer.Option(1000, "--samples", "-n", min=1, help="Configurations in budget to score."),
    data: str = typer.Option(None, "--data", help="Dataset for the scoring minibatch (e.g. fashion-mnist); "
                                                  "default: synthetic images with random labels."),
    seed: int = typer.Option(0, "--seed", help="Fixes sampling, initialisation and minibatch."),
    top: int = typer.Option(1, "--top", "-k", min=1, help="Write the K best policies (-o, <stem>.2, ...)."),
    show: int = typer.Option(10, "--show", min=1, help="Rows of the results table."),
    tolerance: float = typer.Option(0.025, "--tolerance", min=0.0, max=0.99, help="Budget window (±)."),
    candidates: str = typer.Option(None, "--candidates", "-c", help="Block types to choose from, e.g. 'S, "
                                                                    "G(4), B(2)' (default: the paper's)."),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="Scoring minibatch (the paper: 128)."),
    precision: str = typer.Option("bf16", "--fisher-precision", help="Precision of the Fisher pass: bf16 "
                                  "(autocast; keeps the fp32 ranking at ~1.4x the speed) or fp32."),
    spread_runs: int = typer.Option(3, "--spread-runs", min=1, help="Scorings (seeds) per top configuration "
                                                                    "for the spread."),
    convention: str = typer.Option("paper", "--convention", help="Parameter convention: paper or trainable."),
    threads: int = typer.Option(None, "--threads", min=1, help="Intra-op CPU threads (default: torch's)."),
    runtime: str = runtime_option("Where a latency budget is priced and the winner timed"),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Fold BatchNorm into the convs before them when the "
                              "--runtime times an exported file; --no-fold exports them as they are."),
    num_classes: int = typer.Option(None, "--num-classes", min=1, help="Classifier size of the teacher."),
    input_size: str = typer.Option(None, "--input-size", help="C,H,W (default: the model's own)."),
    leaf: list[str] = typer.Option([], "--leaf", help="Module class or name fx must not trace into "
                                                      "(repeatable)."),
    trust: bool = typer.Option(False, "--trust", help="Allow a model file that needs unpickling (runs its "
                                                      "code)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files at -o and its <stem>.K "
                                                              "paths."),
    round_to: int = round_option(),
) -> None:
    """Search one block type per residual pair or replaceable conv of MODEL within a budget (BlockSwap).

    Shows a progress bar, then the top configurations (cost, Fisher score, spread over seeds), and writes the
    winner as a policy file (one rule per searched block) that `cheapconv cheapen --policy-file` applies
    exactly. A budget outside the reachable range is an error (exit 2) that gives the range. The default
    candidates replace dense k×k convs; for a depthwise network (MobileNet, EfficientNet) pass blocks that
    replace its 1×1 convs, e.g. --candidates 'S, LRp(0.5), LRp(0.25), ACDC(2)'.

    \b
    Example:
      cheapconv search wrn_40_2 --budget 300k --data fashion-mnist -o policy.txt
      cheapconv cheapen wrn_40_2 --policy-file policy.txt -o student.pt
    """
    import torch

    from cheapconv.blockswap import search as run_search
    from cheapconv.blockswap.scoring import PRECISIONS
    from cheapconv.measure.runtimes import RUNTIMES, check_runtime

    metric = _metric(metric)
    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"choose one of {', '.join(RUNTIMES)}, not {runtime!r}", param_hint="--runtime")
    check_runtime(runtime)  # not installed: a usage error naming the extra, before any work
    if precision not in PRECISIONS:
        raise typer.BadParameter(f"choose {' or '.join(PRECISIONS)}, not {precision!r}",
                                 param_hint="--fisher-precision")
    if convention not in ("paper", "trainable"):
        raise typer.BadParameter(f"choose paper or trainable, not {convention!r}", param_hint="--convention")
    output_path(output, required=False)
    size = parse_input_size(input_size)
    if output is not None:
        check_outputs(inputs={"MODEL": model}, outputs=[(f"-o/--output (rank {k})" if k > 1 else "-o/--output", p)
                                                        for k, p in enumerate(_policy_paths(output, top), 1)])
        if not overwrite:
            _refuse_existing(_policy_paths(output, top))
    if threads is not None:
        torch.set_num_threads(threads)
    from cheapconv.store.resolve import resolve_model
    with err.status(f"Building {model}..."):
        teacher = resolve_model(model, trust=trust, num_classes=num_classes)
    check_input_size(teacher, size, what=model)
    name = getattr(teacher, "cheapconv_source", None) or model

    progress, tick = progress_bar()
    with progress, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_search(teacher, budget, metric=metric, candidates=candidates, samples=samples, data=data,
                            seed=seed, tolerance=tolerance, batch_size=batch_size, convention=convention,
                            top=max(top, 5), spread_runs=spread_runs, input_size=size,
                            leaf_modules=leaf, progress=tick, runtime=runtime, precision=precision,
                            fold=fold, round_to=round_to)
    for w in caught:
        warn(str(w.message))
    if runtime != "torch" and result.metric != "latency":
        warn(f"--runtime {runtime} was not used: it prices latency budgets, and this is a {result.metric} budget.")
    elif not fold and (runtime in ("torch", "compile") or result.metric != "latency"):
        warn("--no-fold was not used: it applies to latency budgets priced in --runtime pt2 or onnxruntime.")
    for note in result.notes:
        warn(note)
    result.model = name
    _print_result(result, show)
    if output is None:
        emit(result.policy_text(1))
        return
    written = _write_policies(result, output, top)
    err.print(literal(f"Wrote {', '.join(map(str, written))}. Apply with: cheapconv cheapen {model} --policy-file "
                      f"{written[0]} -o student.pt"), highlight=False)
