"""Building a teacher's candidate library (issue 27): every option of every site fitted, scored and timed alone.

For each site and each option a family offers there (:mod:`cheapconv.compression.candidates`), the model built is the
teacher with only that option swapped in (``cheapen(teacher, option.rule, init="teacher")``, checked to replace
exactly that site at exactly the priced cost). Then:

1. it is fitted locally: :func:`cheapconv.reconstruct` on the calibration images, so the block reads the teacher's
   own input at its site (everything else *is* the teacher) and options are independent of each other;
2. it is scored on held-out images (:mod:`cheapconv.compression.scoring`): the local relative error at the site, and
   KL divergence and top-1 agreement of its predictions against the teacher's;
3. the block is timed against the layers it replaced, side by side in the library's runtime, batch and threads
   (:func:`cheapconv.block_timings`); ``latency_saved_ms`` is the difference (None, with a note, where the runtime
   cannot time the block alone);
4. the fitted block's tensors are saved (``weights/``, a plain dict of tensors that ``torch.load(...,
   weights_only=True)`` reads) and the library JSON is rewritten, both atomically.

So a build killed at any moment resumes where it stopped and never redoes a finished option: a folder is reused when
its :attr:`Library.key` matches (the teacher's SHA-256, the calibration and held-out images' SHA-256, the families
and strengths, the runtime settings, and the fitting settings), and refused otherwise.

Steps 1 and 2 do not depend on where latency is measured, so a library for another runtime, batch or thread count
can take its fits and scores from a finished one (``fits_from=``, ``--fits-from DIR``) and only time them: the
donor's key must match in everything but :data:`TIMING_KEYS` and the families. One option's fit does not depend on
the other options beside it, so a donor built with fewer families or strengths (the defaults, before a ``thin``
family is added) gives the options it has, and only the others are fitted here.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import UsageError
from ..measure import block_timings, check_runtime, measure_in_runtime
from ..progress import ProgressReport
from ..reconstruction import fitting_sites, reconstruct
from ..store import atomic_save
from ..surgery import cheapen
from .calibration import calibration_split, state_sha256, tensors_sha256
from .candidates import find_sites
from .family import Families, FamilyChoice, resolve_families
from .group_library import add_groups
from .groups import group_fraction
from .library_model import LIBRARY_FORMAT, Library, LibrarySite, SiteOption
from .scoring import score_option, teacher_outputs

__all__ = ["LIBRARY_FILE", "TIMING_KEYS", "build_library", "fit_and_score", "is_finished", "key_differences",
           "library_key", "open_library"]

#: the library's JSON inside its folder (the fitted weights are in ``weights/`` beside it)
LIBRARY_FILE = "library.json"

#: the parts of a library's key that only its timings depend on (its fits and scores do not)
TIMING_KEYS = frozenset({"runtime", "batch", "threads", "fold"})
#: the parts a donor library may differ in (its options are taken one by one, where it has them; an option's fit
#: does not depend on the group widths beside it, which are fitted and timed in a stage of their own)
_DONOR_FREE_KEYS = TIMING_KEYS | {"families", "groups"}


def library_key(teacher: nn.Module, calibration: torch.Tensor, held_out: torch.Tensor,
                families: list[FamilyChoice], *, runtime: str, batch: int, threads: int, fold: bool,
                device: torch.device, steps: int, seed: int) -> dict[str, Any]:
    """What a library's figures depend on (see :attr:`Library.key`); plain JSON data."""
    return {
        "format": LIBRARY_FORMAT,
        "teacher": state_sha256(teacher),
        "data": tensors_sha256(calibration, held_out),
        "input_shape": list(calibration.shape[1:]),
        "families": {family.name: [str(s) for s in specs] for family, specs in families},
        "runtime": runtime, "batch": batch, "threads": threads, "dtype": "float32", "fold": fold,
        "device": device.type,
        "samples": int(calibration.shape[0]), "held_out": int(held_out.shape[0]), "steps": steps, "seed": seed,
    }


def _show(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12] + "…"
    return repr(value)


def key_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two library keys, one phrase each (``"samples: 1024 there, 2048 now"``)."""
    names = {"teacher": "the teacher's weights", "data": "the calibration and held-out images"}
    return [f"{names.get(k, k)}: {_show(old.get(k))} there, {_show(new.get(k))} now"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def open_library(directory: str | Path, key: Mapping[str, Any]) -> Library | None:
    """The library in ``directory`` if it was built for ``key`` (None where the folder holds none yet); a folder
    built for another key is a :class:`~cheapconv.errors.UsageError` saying what differs."""
    path = Path(directory) / LIBRARY_FILE
    if not path.is_file():
        return None
    try:
        library = Library.load_json(path)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not a candidate library cheapconv can read ({e}). Choose another folder for "
                         "the library, or delete this one to rebuild it.") from None
    differences = key_differences(library.key, key)
    if differences:
        raise UsageError(f"The library in {directory} was built for other settings, so its figures do not apply: "
                         f"{'; '.join(differences)}. Choose another folder for this library (--library DIR, "
                         "directory=...), or delete that one to rebuild it.")
    return library


def open_donor(directory: str | Path, key: Mapping[str, Any]) -> Library:
    """The library in ``directory`` whose fits and scores a library for ``key`` can take: built for the same teacher,
    images and fitting settings (anything but :data:`TIMING_KEYS`, the families and the groups may not differ). Only its
    finished options are taken."""
    path = Path(directory) / LIBRARY_FILE
    try:
        donor = Library.load_json(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--fits-from {directory}: no candidate library cheapconv can read there ({e}). Name the "
                         "folder of a library built before (its --library DIR).") from None
    fit_key = {k: v for k, v in key.items() if k not in _DONOR_FREE_KEYS}
    differences = key_differences({k: v for k, v in donor.key.items() if k not in _DONOR_FREE_KEYS}, fit_key)
    if differences:
        raise UsageError(f"The library in {directory} was fitted under other settings, so its fits do not apply "
                         f"here: {'; '.join(differences)}. Fit this library itself (leave out --fits-from), or "
                         "build it with the donor's teacher, data and fitting settings.")
    donor.directory = Path(directory)
    return donor


def _donated(donor: Library | None, site: str, spec: str) -> SiteOption | None:
    """The donor's finished option for (``site``, ``spec``), if it has one."""
    if donor is None:
        return None
    for s in donor.sites:
        if s.name == site:
            for o in s.options:
                if o.spec == spec and is_finished(o, donor.directory):
                    return o
    return None


def is_finished(option: SiteOption, folder: Path) -> bool:
    """Whether ``option`` is built in the library at ``folder`` (keep always is; others once their weights are
    there)."""
    return option.is_keep or (option.weights is not None and (folder / option.weights).is_file())


def _merge(found: list[LibrarySite], saved: Library | None, folder: Path) -> list[LibrarySite]:
    """The sites as found now, each option taken from ``saved`` where it was finished there."""
    if saved is None:
        return found
    done = {(s.name, o.spec): o for s in saved.sites for o in s.options if is_finished(o, folder)}
    for site in found:
        site.options = [done.get((site.name, o.spec), o) if not o.is_keep else o for o in site.options]
    return found


def _weights_name(site: str, spec: str) -> str:
    """A file name for the option's weights: readable, and unique (spellings that differ only in characters a file
    name cannot hold are told apart by a short hash)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{site}={spec}").strip("_")[:120]
    digest = tensors_sha256(torch.tensor(list(f"{site}\0{spec}".encode()), dtype=torch.uint8))[:8]
    return f"weights/{safe}-{digest}.pt"


def _single_swap(teacher: nn.Module, site: LibrarySite, option: SiteOption, shape: tuple[int, ...]) -> nn.Module:
    """The teacher with only ``option`` at ``site``, teacher-initialised; checked against the priced option."""
    student = cheapen(teacher, option.rule, init="teacher", input_size=shape)
    replaced = student.cheapconv_plan.replaced
    got = [(e.layer, e.block) for e in replaced]
    if got != [(site.name, option.spec)]:
        raise RuntimeError(f"cheapconv bug: the policy {option.rule!r} replaced {got}, not only {site.name} with "
                           f"{option.spec}")
    (entry,) = replaced
    cost = (entry.params_after - entry.params_before, entry.paper_after - entry.paper_before,
           entry.macs_after - entry.macs_before)
    if cost != (option.params, option.paper, option.macs):
        raise RuntimeError(f"cheapconv bug: {option.rule!r} is planned at {cost} (params, paper, MACs), the library "
                           f"priced it at {(option.params, option.paper, option.macs)}")
    return student


def _check_rest_is_teacher(student: nn.Module, teacher: nn.Module, prefix: str) -> None:
    """Everything outside the fitted block is the teacher's, bit for bit: assembling options from their blocks alone
    then rebuilds each single-swap model exactly."""
    theirs = teacher.state_dict()
    changed = [k for k, v in student.state_dict().items() if not k.startswith(prefix)
               and (k not in theirs or theirs[k].shape != v.shape or not torch.equal(theirs[k].to(v.device), v))]
    if changed:
        raise RuntimeError(f"cheapconv bug: fitting one site changed tensors outside its block: {changed[:4]}")


def fit_and_score(teacher: nn.Module, site: LibrarySite, option: SiteOption, *, shape: tuple[int, ...],
                   calibration: torch.Tensor, held_out: torch.Tensor, teacher_scores: torch.Tensor, steps: int,
                   seed: int, runtime: str, batch: int, threads: int, fold: bool, device: torch.device,
                   folder: Path, donor: Library | None = None) -> SiteOption:
    """``option`` built, fitted, scored, timed and saved; returns it with its figures filled in. With ``donor``
    holding this option finished, its fit and scores are taken and only the timing is done here."""
    started = time.perf_counter()
    notes: list[str] = []
    given = _donated(donor, site.name, option.spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = _single_swap(teacher, site, option, shape)
        (fitted,) = fitting_sites(student, teacher)
        prefix = fitted.student_path + "."
        if given is not None:
            _load_fit(student, donor.directory / given.weights, prefix)
            scores = given
            notes += [n for n in given.notes if n.startswith("fit: ")] + [f"fit and scores from {donor.directory}"]
        else:
            report = reconstruct(student, teacher, calibration, samples=calibration.shape[0], steps=steps,
                                 progress=False, seed=seed)
            if report.sites:
                notes.append(f"fit: {report.sites[0].method}")
            scores = score_option(student, teacher, fitted, held_out, teacher_scores)
        _check_rest_is_teacher(student, teacher, prefix)
        timed = block_timings(student, teacher, input_shape=shape, batches=(batch,), device=device,
                              threads=threads, runtime=runtime, fold=fold, notes=notes)
    notes = [*notes[:1], *(str(w.message) for w in caught), *notes[1:]]
    weights = _weights_name(site.name, option.spec)
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items() if k.startswith(prefix)}
    atomic_save(state, folder / weights)
    option.local_error, option.kl, option.agreement = scores.local_error, scores.kl, scores.agreement
    if timed:
        option.latency_saved_ms = timed[0].before[batch].median_ms - timed[0].after[batch].median_ms
    else:
        option.latency_saved_ms = None
        notes.append(f"not timed alone in {runtime}: the selection can use this option only under budgets that do "
                     "not count latency")
    option.weights = weights
    option.notes = list(dict.fromkeys(notes))
    option.seconds = time.perf_counter() - started
    return option


def _load_fit(student: nn.Module, path: Path, prefix: str) -> None:
    """Load a donor's fitted block (the tensors under ``prefix``) into the single-swap ``student``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    mine = {k for k in student.state_dict() if k.startswith(prefix)}
    if set(state) != mine:
        raise UsageError(f"The donor library's {path.name} does not hold the tensors of this block (it differs in "
                         f"{sorted(set(state) ^ mine)[:4]}). Fit this library itself (leave out --fits-from).")
    student.load_state_dict(state, strict=False)


def _check(runtime: str, batch: int, threads: int, samples: int, held_out: int, steps: int,
           device: torch.device) -> None:
    problems = [f"{name} must be at least {least}, got {value}" for name, value, least in
                (("batch", batch, 1), ("threads", threads, 1), ("samples", samples, 1), ("held_out", held_out, 1),
                 ("steps", steps, 0)) if value < least]
    if problems:
        raise UsageError("Invalid library settings: " + "; ".join(problems) + ".")
    check_runtime(runtime, device=device)


def build_library(teacher: nn.Module, data: Dataset | torch.Tensor | str, *, families: Families = None,
                  runtime: str = "torch", batch: int = 1, threads: int = 1, samples: int = 1024,
                  held_out: int = 512, steps: int = 0, directory: str | Path | None = None, progress: bool = True,
                  fold: bool = True, seed: int = 0, fits_from: str | Path | None = None,
                  round_to: int | None = None, groups: Sequence[str] | None = None) -> Library:
    """The candidate library of ``teacher``: every replaceable site, every option the ``families`` offer there,
    each fitted alone to the teacher and measured (the module docstring says how).

    - ``data``: a dataset yielding ``(image, label)`` without random augmentation, a tensor of images, or a dataset
      name (its training split, fed as the teacher's preprocessing record says, as ``reconstruct`` does).
      ``samples`` images of it are the calibration set, ``held_out`` *other* images score the options (a split
      seeded with ``seed``).
    - ``families``: None for the default families (``cheapconv.extensions.FAMILIES``, those marked default:
      grouped, low_rank and tucker on single convs, bottleneck on residual pairs), names (``"grouped,
      bottleneck"``), or a mapping name -> strengths (``{"low_rank": ["LRp(0.25)"]}``).
    - ``runtime``, ``batch``, ``threads``, ``fold``: where latency is measured (each block against the layers it
      replaced, and the whole teacher: :attr:`Library.teacher_latency_ms`), in float32 on the teacher's device.
    - ``steps``: Adam steps per option after its closed-form fit (0: closed forms, BatchNorm statistics and a
      least-squares last 1×1 only).
    - ``directory``: where the library lives (``library.json`` and ``weights/``), rewritten after every option; a
      rebuild into the same folder with the same settings resumes, one with other settings is refused. None: a new
      temporary folder (not resumable; delete it when done, :attr:`Library.directory` says where).
    - ``round_to``: every option's inner widths rounded to multiples of it (``B(2)@8``: ranks, bottleneck
      widths, channels per group; see :func:`cheapconv.cheapen`).
    - ``fits_from``: a library of the same teacher, images and fitting settings, built for another runtime, batch or
      thread count, or with other families: the fits and scores of its finished options are taken and only their
      timings are done here; the options it lacks are fitted here.
    - ``groups``: coupled widths (issue 31): the widths (``["Wg(0.75)", "Wg(0.5)"]``) each channel group of the
      teacher (a stage's residual stream, the stem's outputs) may be thinned to, one chosen per group by the
      selection, every site priced and timed at its groups' widths (:mod:`.group_library`); None: no groups.
    - ``progress``: a bar on a terminal, a line per ~10 % with the time left in a log.

    The teacher is never changed. Example::

        teacher = cheapconv.load("teacher.pt")
        library = build_library(teacher, "fashion-mnist", directory="wrn16-library")
        student = cheapconv.compression.assemble(teacher, library, {"block3.0.conv1+conv2": "B(2)"})
    """
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    _check(runtime, batch, threads, samples, held_out, steps, device)
    chosen = resolve_families(families, round_to=round_to)
    calibration, held = calibration_split(data, teacher, samples=samples, held_out=held_out, seed=seed)
    shape = tuple(int(v) for v in calibration.shape[1:])
    key = library_key(teacher, calibration, held, chosen, runtime=runtime, batch=batch, threads=threads, fold=fold,
                      device=device, steps=steps, seed=seed)
    if groups is not None:      # only then: the key of a library without groups is what it always was
        key["groups"] = [f"Wg({group_fraction(g):g})" for g in groups]
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="cheapconv-library-"))
    saved = open_library(folder, key)
    donor = open_donor(fits_from, key) if fits_from is not None else None
    found, notes, totals = find_sites(teacher, chosen, shape)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    if not found:
        names = ", ".join(f.name for f, _ in chosen)
        raise UsageError(f"No family of the library ({names}) applies to any site of this teacher, so there is "
                         "nothing to choose. Name families whose blocks fit it: low_rank applies to 1×1 convs too "
                         "(families=['low_rank'], --families low_rank).")
    library = Library(key=key, sites=_merge(found, saved, folder),
                      teacher_latency_ms=saved.teacher_latency_ms if saved else None,
                      teacher_params=totals["params"], teacher_paper=totals["paper"], teacher_macs=totals["macs"],
                      input_shape=shape, directory=folder)
    if saved is not None and saved.groups:      # a finished group stage resumes as it was left
        library.groups = saved.groups
        before = {s.name: s for s in saved.sites}
        for site in library.sites:
            if site.name in before:      # its groups, and keep's prices at their widths (the options' came along)
                site.touches = before[site.name].touches
                site.options[0] = before[site.name].options[0]
    folder.mkdir(parents=True, exist_ok=True)
    library.save_json(folder / LIBRARY_FILE)
    todo = [(s, o) for s in library.sites for o in s.options if not is_finished(o, folder)]
    total = sum(len(s.options) - 1 for s in library.sites) + 1
    report = ProgressReport({"library": "Building the candidate library"}, unit="options") if progress else None
    with report if report is not None else contextlib.nullcontext():
        done = total - len(todo) - (library.teacher_latency_ms is None)
        if report is not None:
            report.start("library", done, total, "resuming" if saved else "")
        if library.teacher_latency_ms is None:
            (latency,) = measure_in_runtime([teacher], (batch, *shape), runtime, device=device, threads=threads,
                                            fold=fold)
            library.teacher_latency_ms = latency.median_ms
            library.save_json(folder / LIBRARY_FILE)
            done += 1
            if report is not None:
                report.tick("library", done, total, "the teacher timed")
        teacher_scores = teacher_outputs(teacher, held) if todo else None
        for site, option in todo:
            fit_and_score(teacher, site, option, shape=shape, calibration=calibration, held_out=held,
                           teacher_scores=teacher_scores, steps=steps, seed=seed, runtime=runtime, batch=batch,
                           threads=threads, fold=fold, device=device, folder=folder, donor=donor)
            library.save_json(folder / LIBRARY_FILE)
            done += 1
            if report is not None:
                report.tick("library", done, total, f"{site.name} {option.spec}")
    if groups is not None and not library.groups:
        _add_groups(teacher, library, chosen, groups, calibration=calibration, held=held, runtime=runtime,
                    batch=batch, threads=threads, fold=fold, device=device, progress=progress)
    return library


def _add_groups(teacher: nn.Module, library: Library, chosen: list[FamilyChoice], groups: Sequence[str], *,
                calibration: torch.Tensor, held: torch.Tensor, runtime: str, batch: int, threads: int, fold: bool,
                device: torch.device, progress: bool) -> None:
    """The group stage (:func:`.group_library.add_groups`), with its own progress bar, saved once it is done (it
    reruns whole after a kill: a few minutes beside the options)."""
    report = ProgressReport({"groups": "Scoring and timing coupled widths"}, unit="steps") if progress else None
    with report if report is not None else contextlib.nullcontext():
        if report is not None:
            report.start("groups", 0, 1, "pricing every width combination")
        notes = add_groups(teacher, library, chosen, calibration=calibration, held_out=held,
                           teacher_scores=teacher_outputs(teacher, held), strengths=list(groups), runtime=runtime,
                           batch=batch, threads=threads, fold=fold, device=device,
                           tick=(lambda d, t, what: report.tick("groups", d, t, what)) if report is not None else None)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    library.save_json(Path(library.directory) / LIBRARY_FILE)

