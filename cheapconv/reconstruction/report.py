"""What reconstruction did, site by site: :class:`ReconstructionReport` (a rich table, plain text, JSON)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rich.table import Table

from ..formatting import render_plain

__all__ = ["ADAM_NOT_KEPT", "ReconstructionReport", "SiteResult"]

#: How a site's method says that the Adam steps after its fit were discarded (the fit itself stands).
ADAM_NOT_KEPT = "Adam refinement not kept"


@dataclass
class SiteResult:
    """One site's relative output error ‖student − teacher‖ / ‖teacher‖ at the site's output.

    ``before`` and ``after`` are measured in whole forward passes of the student as it was given and as it
    is returned (so they include every error upstream of the site), over the calibration set; ``start`` and
    ``fitted`` are the site's own fit, on the student's inputs at that moment (``fitted`` on the cached
    sample the optimisation used)."""

    name: str
    block: str
    method: str
    before: float
    start: float
    fitted: float
    after: float
    cached_images: int
    streamed_images: int


@dataclass
class ReconstructionReport:
    """The result of :func:`cheapconv.reconstruct`: one :class:`SiteResult` per replaced site, in the order
    the student runs them, and the settings and bounds of the run."""

    sites: list[SiteResult] = field(default_factory=list)
    samples: int = 0
    steps: int = 0
    batchnorm: str = "blocks"
    batchnorm_layers: int = 0     # recomputed by the final pass over the calibration set ("all")
    peak_site_bytes: int = 0      # the most any one site held at once: its cached sample and moments
    cache_limit_bytes: int = 0
    seconds: float = 0.0

    @property
    def improved(self) -> bool:
        """Whether every site's end-to-end error went down."""
        return all(s.after < s.before for s in self.sites)

    def as_dict(self) -> dict:
        """Plain JSON-able data."""
        return dataclasses.asdict(self)

    def table(self):
        """A rich Table: every site with its block, method and errors before and after."""
        t = Table(title=f"Reconstruction on {self.samples:,} calibration images "
                        f"({self.steps} optimisation steps per site, BatchNorm statistics: {self.batchnorm})",
                  title_justify="left")
        for col, just in (("site", "left"), ("block", "left"), ("error before", "right"),
                          ("fit start → end", "right"), ("error after", "right"), ("sample", "right"),
                          ("method", "left")):
            t.add_column(col, justify=just)
        if any(ADAM_NOT_KEPT in s.method for s in self.sites):
            t.caption = (f"{ADAM_NOT_KEPT}: the Adam steps after that site's fit did not lower its error on the "
                         "sample, so they were discarded; the fit itself (closed form, or BatchNorm from data) "
                         "stands, and 'fit start → end' shows its error.")
            t.caption_justify = "left"
        for s in self.sites:
            t.add_row(s.name, s.block, f"{s.before:.3g}", f"{s.start:.3g} → {s.fitted:.3g}", f"{s.after:.3g}",
                      f"{s.cached_images:,}", s.method)
        return t

    def __str__(self) -> str:
        lines = render_plain(self.table()).rstrip("\n")
        return (f"{lines}\nErrors are ‖student − teacher‖ / ‖teacher‖ at each site's output; 'sample' is the "
                f"number of calibration images cached for the site's optimisation (at most "
                f"{self.cache_limit_bytes / 2**20:.0f} MiB per site).")
