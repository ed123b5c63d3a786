"""What a profile measured, as data and as tables: :class:`Profile` (one model), :class:`BlockTiming` (a
replaced layer against the original, timed side by side), :class:`LayerCost`, and their rich tables (one
model's totals, replaced blocks against the original layers, models compared side by side).

Used by :mod:`cheapconv.measure.profiler` (which measures), the ``profile`` and ``compare`` commands and
:meth:`Profile.table`; nothing here measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from rich.table import Table

from ..formatting import human
from .latency import SLOWER_MARGIN, Latency
from .runtimes import describe_precision, describe_runtime

__all__ = ["BlockTiming", "LayerCost", "Profile", "blocks_table", "compare_table", "profile_table"]


@dataclass
class LayerCost:
    """One Conv or Linear module of the profiled model: its own parameters and its MACs at batch 1."""

    name: str
    kind: str
    params: int
    macs: int


@dataclass
class BlockTiming:
    """A replaced layer: the cheap block against the original at the same input, timed side by side."""

    layer: str
    block: str
    input_shape: tuple[int, ...]      # (C, H, W) that the layer sees in the model
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    before: dict[int, Latency]        # batch -> latency of the original conv (or conv pair)
    after: dict[int, Latency]         # batch -> latency of the cheap block

    def speedup(self, batch: int) -> float:
        """original time ÷ block time (above 1: the block is faster)."""
        return self.before[batch].median_ms / self.after[batch].median_ms

    def verdict(self, batch: int) -> str:
        """``"slower"``, ``"faster"`` or ``"same"`` (within :data:`SLOWER_MARGIN`) at ``batch``."""
        s = self.speedup(batch)
        return "slower" if s < 1 / (1 + SLOWER_MARGIN) else "faster" if s > 1 + SLOWER_MARGIN else "same"

    def slower(self, batch: int | None = None) -> bool:
        """True when the block is slower than what it replaced (at ``batch``, or at any measured batch)."""
        batches = [batch] if batch is not None else list(self.after)
        return any(self.verdict(b) == "slower" for b in batches)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["before"] = {b: lat.to_dict() for b, lat in self.before.items()}
        d["after"] = {b: lat.to_dict() for b, lat in self.after.items()}
        return d


@dataclass
class Profile:
    """Everything :func:`profile` measured for one model. Latencies and memory are keyed by batch size."""

    model: str
    input_shape: tuple[int, ...]                  # (C, H, W)
    params_trainable: int
    params_paper: int
    macs: int                                     # per image (batch 1)
    latency: dict[int, Latency]
    peak_memory: dict[int, int] = field(default_factory=dict)   # bytes, per batch
    weight_bytes: int = 0
    layers: list[LayerCost] = field(default_factory=list)
    blocks: list[BlockTiming] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runtime: str = "torch"
    runtime_info: str = ""                        # what was timed: version, provider, threads
    checks: dict[int, str] = field(default_factory=dict)   # batch -> the runtime-vs-eager check line

    @property
    def batches(self) -> list[int]:
        return sorted(self.latency)

    @property
    def slower_blocks(self) -> list[BlockTiming]:
        return [b for b in self.blocks if b.slower()]

    def describe_setting(self) -> str:
        lat = next(iter(self.latency.values()))
        layout = "channels_last" if lat.channels_last else "NCHW"
        where = self.runtime_info or describe_runtime(self.runtime, lat.threads, lat.device)
        precision = describe_precision(self.runtime, lat.dtype)
        return (f"{where}, {lat.device}, {precision}, {layout}, {lat.threads} threads, "
                f"median of {lat.repeats} after warm-up")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency"] = {b: lat.to_dict() for b, lat in self.latency.items()}
        d["blocks"] = [b.to_dict() for b in self.blocks]
        return d

    def table(self) -> Table:
        """A rich Table of the totals (see :func:`profile_table`)."""
        return profile_table(self)


# --- tables ------------------------------------------------------------------------------------------------
def _ms(lat: Latency) -> str:
    return f"{lat.median_ms:.3g} ms (IQR {lat.iqr_ms:.2g})"


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def profile_table(p: Profile) -> Table:
    """Totals of one profile: params, MACs, latency per batch, peak memory."""
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
                 ) -> Table:
    """One row per replaced layer: MACs and side-by-side latency before → after per batch, slower ones
    flagged; the runtime they were timed in is named in the title when it is not torch eager."""
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


def compare_table(profiles: Sequence[Profile], accuracies: Sequence[float | None] | None = None) -> Table:
    """Models side by side with ratios against the first (rel. = this ÷ first: below 1 is smaller/faster)."""
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
