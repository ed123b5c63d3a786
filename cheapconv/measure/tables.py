"""Rich tables of measured profiles: one model's totals, replaced blocks against the original layers, and
models compared side by side. Used by the ``profile`` and ``compare`` commands and :meth:`Profile.table`.

Rendering only: everything shown was measured by :mod:`cheapconv.measure.profiler`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .latency import SLOWER_MARGIN, Latency

if TYPE_CHECKING:
    from .profiler import BlockTiming, Profile

__all__ = ["blocks_table", "compare_table", "profile_table"]


def _ms(lat: Latency) -> str:
    return f"{lat.median_ms:.3g} ms (IQR {lat.iqr_ms:.2g})"


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def profile_table(p: Profile):
    """Totals of one profile: params, MACs, latency per batch, peak memory."""
    from rich.table import Table

    from ..surgery.report import human

    c, h, w = p.input_shape
    t = Table(title=f"{p.model} (input {c}×{h}×{w}; {p.describe_setting()})", title_justify="left")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("params (paper)", f"{p.params_paper:,}")
    t.add_row("params (trainable)", f"{p.params_trainable:,}")
    t.add_row("MACs per image", f"{p.macs:,} ({human(p.macs)})")
    t.add_row("weights", _mib(p.weight_bytes))
    for b in p.batches:
        lat = p.latency[b]
        t.add_row(f"latency, batch {b}", f"{_ms(lat)}; {lat.per_image_ms:.3g} ms/image")
        if b in p.peak_memory:
            t.add_row(f"peak memory, batch {b}", _mib(p.peak_memory[b]))
    if p.blocks:
        t.add_row("blocks slower than what they replaced", f"{len(p.slower_blocks)} of {len(p.blocks)}")
    return t


def blocks_table(blocks: Sequence[BlockTiming], *, title: str = "Replaced blocks against the original layers"
                 ):
    """One row per replaced layer: MACs and side-by-side latency before → after per batch, slower ones
    flagged; the runtime they were timed in is named in the title when it is not torch eager."""
    from rich.table import Table

    from ..surgery.report import human

    batches = sorted({b for bt in blocks for b in bt.after})
    runtimes = sorted({lat.runtime for bt in blocks for lat in bt.after.values()} - {"torch"})
    where = f"; timed in {', '.join(runtimes)}" if runtimes else ""
    t = Table(title=f"{title} (speed-up = original ÷ block; SLOWER beyond {SLOWER_MARGIN:.0%}{where})",
              title_justify="left")
    for col in ("layer", "block", "input", "MACs", *[f"batch {b}: ms" for b in batches],
                *[f"speed-up b{b}" for b in batches], "flag"):
        t.add_column(col, justify="left" if col in ("layer", "block", "input", "flag") else "right")
    for bt in blocks:
        cells = [bt.layer, bt.block, "×".join(str(v) for v in bt.input_shape),
                 f"{human(bt.macs_before)}→{human(bt.macs_after)}"]
        cells += [f"{bt.before[b].median_ms:.3g}→{bt.after[b].median_ms:.3g}" for b in batches]
        cells += [f"{bt.speedup(b):.2f}×" for b in batches]
        slower = bt.slower()
        cells.append("SLOWER" if slower else "")
        t.add_row(*cells, style="yellow" if slower else None)
    return t


def compare_table(profiles: Sequence[Profile], accuracies: Sequence[float | None] | None = None):
    """Models side by side with ratios against the first (rel. = this ÷ first: below 1 is smaller/faster)."""
    from rich.table import Table

    from ..surgery.report import human

    first = profiles[0]
    batches = first.batches
    c, h, w = first.input_shape
    t = Table(title=f"Compared on {c}×{h}×{w} ({first.describe_setting()}; latencies measured side by side). "
                    "rel. = this ÷ first model", title_justify="left")
    t.add_column("model", overflow="fold")
    latency_cols = [x for b in batches for x in (f"batch {b} ms", "rel.")]
    for col in ("params (paper)", "rel.", "MACs", "rel.", *latency_cols):
        t.add_column(col, justify="right")
    show_acc = accuracies is not None and any(a is not None for a in accuracies)
    if show_acc:
        t.add_column("top-1", justify="right")
        t.add_column("Δ", justify="right")
    show_blocks = any(p.blocks for p in profiles)
    if show_blocks:
        t.add_column("slower blocks", justify="right")
    for i, p in enumerate(profiles):
        row = [p.model, f"{p.params_paper:,}", f"{p.params_paper / first.params_paper:.3f}", human(p.macs),
               f"{p.macs / first.macs:.3f}" if first.macs else "–"]
        for b in batches:
            rel = p.latency[b].median_ms / first.latency[b].median_ms
            row += [f"{p.latency[b].median_ms:.3g}", f"{rel:.2f}"]
        if show_acc:
            acc, base = accuracies[i], accuracies[0]
            row += ["–" if acc is None else f"{100 * acc:.2f}%",
                    "" if acc is None or base is None or i == 0 else f"{100 * (acc - base):+.2f}"]
        if show_blocks:
            row.append(f"{len(p.slower_blocks)} of {len(p.blocks)}" if p.blocks else "")
        t.add_row(*row)
    return t
