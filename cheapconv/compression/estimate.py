"""How long a candidate library will take to build (``compress --dry-run``, issue 27: "the plan with a time
estimate"), measured rather than guessed.

A library's work is one fit, score and timing per option (:func:`cheapconv.compression.build_library`), and the
options of one teacher cost about the same, so the estimate is the number of options left times the measured time
of one:

- where the library's folder already holds finished options for the same settings, their recorded ``seconds``
  (what a resumed build will take for the rest);
- otherwise two options are built now, exactly as the library builds them (the first option of the first site
  and of the last site: the widest and the narrowest layers of a typical CNN), in a temporary folder that is
  deleted afterwards, and their mean is used.

The figure is for this machine under its present load; a busier machine takes longer.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..measure import measure_in_runtime
from .calibration import calibration_split
from .candidates import find_sites
from .family import Families, resolve_families
from .library import LIBRARY_FILE, fit_and_score, is_finished, library_key
from .library_model import Library
from .scoring import teacher_outputs

__all__ = ["BuildEstimate", "estimate_build"]


@dataclass
class BuildEstimate:
    """Options in all and left to build, the measured seconds per option and what they were measured on."""

    options: int
    left: int
    seconds_per_option: float
    basis: str

    @property
    def seconds(self) -> float:
        """The estimated time to build the options left."""
        return self.left * self.seconds_per_option

    def line(self) -> str:
        minutes = self.seconds / 60
        size = f"{minutes:.1f} min" if minutes >= 1 else f"{self.seconds:.0f} s"
        return (f"Estimated library build: about {size} for {self.left} of {self.options} options "
                f"({self.seconds_per_option:.1f} s each, {self.basis}; this machine, its present load).")


def _recorded(directory: Path | None, key: dict) -> Library | None:
    """The library in ``directory`` built for ``key``, if there is one (a folder for other settings: None)."""
    if directory is None or not (Path(directory) / LIBRARY_FILE).is_file():
        return None
    library = Library.load_json(Path(directory) / LIBRARY_FILE)
    return library if library.key == key else None


def estimate_build(teacher: nn.Module, data: Dataset | torch.Tensor | str, *, families: Families = None,
                   runtime: str = "torch", batch: int = 1, threads: int = 1, samples: int = 1024,
                   held_out: int = 512, steps: int = 0, fold: bool = True, seed: int = 0,
                   round_to: int | None = None, directory: str | Path | None = None) -> BuildEstimate:
    """Estimate the build of the library :func:`build_library` would make with these arguments (see the module
    docstring). Nothing is kept: the teacher is only read and ``directory`` is never written."""
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    chosen = resolve_families(families, round_to=round_to)
    calibration, held = calibration_split(data, teacher, samples=samples, held_out=held_out, seed=seed)
    shape = tuple(int(v) for v in calibration.shape[1:])
    key = library_key(teacher, calibration, held, chosen, runtime=runtime, batch=batch, threads=threads, fold=fold,
                      device=device, steps=steps, seed=seed)
    sites, _, _ = find_sites(teacher, chosen, shape)
    options = sum(len(s.options) - 1 for s in sites)
    saved = _recorded(Path(directory) if directory is not None else None, key)
    if saved is not None:
        done = [o for s in saved.sites for o in s.options if not o.is_keep and is_finished(o, saved.directory)]
        if done:
            per = sum(o.seconds for o in done) / len(done)
            return BuildEstimate(options, options - len(done), per,
                                 f"the mean of the {len(done)} options already built in {directory}")
    if not options:
        return BuildEstimate(0, 0, 0.0, "no family applies to any site of this teacher")
    ends = [sites[0]] if len(sites) == 1 else [sites[0], sites[-1]]
    probes = [(site, site.options[1]) for site in ends if len(site.options) > 1]
    folder = Path(tempfile.mkdtemp(prefix="cheapconv-estimate-"))
    try:
        began = time.perf_counter()
        scores = teacher_outputs(teacher, held)
        measure_in_runtime([teacher], (batch, *shape), runtime, device=device, threads=threads, fold=fold)
        shared = time.perf_counter() - began
        for site, option in probes:
            fit_and_score(teacher, site, option, shape=shape, calibration=calibration, held_out=held,
                           teacher_scores=scores, steps=steps, seed=seed, runtime=runtime, batch=batch,
                           threads=threads, fold=fold, device=device, folder=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    per = sum(o.seconds for _, o in probes) / len(probes) + shared / max(options, 1)
    names = " and ".join(f"{s.name} {o.spec}" for s, o in probes)
    return BuildEstimate(options, options, per, f"measured now on {names}, nothing kept")
