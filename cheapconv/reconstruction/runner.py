"""``reconstruct(student, teacher, data)``: fit every replaced site of a student to its teacher, in order."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..counting import input_mismatch
from ..data import adapt_for_model, check_finite, data_preprocessing, default_workers, get_dataset
from ..errors import UsageError
from ..models.preprocessing import preprocessing_of
from ..progress import ProgressReport
from .batchnorm import batchnorms, recalibrate
from .capture import eval_flags, site_outputs
from .fitting import FitSettings, fit_site
from .report import ReconstructionReport, SiteResult
from .sites import Site, execution_order, fitting_sites

__all__ = ["BATCHNORM_CHOICES", "reconstruct"]

BATCHNORM_CHOICES = ("blocks", "all")


def _batches(data: Dataset | torch.Tensor, samples: int, batch_size: int, seed: int
             ) -> tuple[Callable[[], Iterable[torch.Tensor]], int]:
    """A re-iterable of image batches over a fixed random subset of ``samples`` items of ``data``."""
    in_memory = isinstance(data, torch.Tensor)
    if in_memory:
        data = TensorDataset(data)
    try:
        n = len(data)
    except TypeError:
        raise UsageError("reconstruct needs a dataset with a length (e.g. cheapconv.data.get_dataset(...)) or a "
                         "tensor of images; an iterable of batches cannot be subsampled.") from None
    if n == 0:
        raise UsageError("The calibration data is empty; pass a dataset with images in it.")
    chosen = min(samples, n)
    # A random subset, not the first items: ImageFolder lists images class by class.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:chosen].sort().values.tolist()
    subset = Subset(data, order)
    workers = 0 if in_memory else default_workers(data)   # worker processes would only copy a tensor

    def batches() -> Iterable[torch.Tensor]:
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers)
        for i, item in enumerate(loader):
            x = item[0] if isinstance(item, (list, tuple)) else item
            # every pass checks (cheap next to the forwards); the first whole pass, the errors before any fit,
            # finds a NaN or inf before a block is fitted to it
            check_finite(x, what=f"calibration batch {i + 1}", items=order[i * batch_size:(i + 1) * batch_size])
            yield x

    return batches, chosen


def _device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _errors(student: nn.Module, teacher: nn.Module, sites: list[Site], batches, device) -> list[float]:
    """Each site's end-to-end relative error in whole forward passes of both models."""
    num, den = [0.0] * len(sites), [0.0] * len(sites)
    t_dev = next((p.device for p in teacher.parameters()), device)
    s_paths = [s.student_path for s in sites]
    t_paths = sorted({s.teacher_out for s in sites})
    with torch.no_grad():
        for x in batches():
            got_s = site_outputs(student, s_paths, x.to(device))
            got_t = site_outputs(teacher, t_paths, x.to(t_dev))
            for i, s in enumerate(sites):
                a, b = got_s[s.student_path].float(), got_t[s.teacher_out].to(device).float()
                num[i] += float((a - b).pow(2).sum())
                den[i] += float(b.pow(2).sum())
    return [math.sqrt(n / max(d, 1e-30)) for n, d in zip(num, den, strict=True)]


def _check(samples: int, steps: int, lr: float, batch_size: int, batchnorm: str, cache_mb: float) -> None:
    problems = []
    if samples < 1:
        problems.append(f"samples must be at least 1, got {samples}")
    if steps < 0:
        problems.append(f"steps must be 0 or more, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        problems.append(f"lr must be a positive number, got {lr}")
    if batch_size < 1:
        problems.append(f"batch_size must be at least 1, got {batch_size}")
    if batchnorm not in BATCHNORM_CHOICES:
        problems.append(f"batchnorm must be one of {', '.join(BATCHNORM_CHOICES)}, got {batchnorm!r}")
    if not 0 <= cache_mb < math.inf:
        problems.append(f"cache_mb must be a finite number, 0 or more, got {cache_mb}")
    if problems:
        raise UsageError("Invalid reconstruction settings: " + "; ".join(problems) + ".")


def _calibration_data(data: Dataset | torch.Tensor | str, student: nn.Module, teacher: nn.Module
                      ) -> Dataset | torch.Tensor:
    """``data``, or for a dataset name its training split built the way ``--data`` is everywhere
    (:func:`cheapconv.data.adapt_for_model`: the size and normalisation the student records, else the
    teacher's; no augmentation). A dataset fed otherwise than the record says gets a warning."""
    fed = student if preprocessing_of(student) is not None else teacher
    if isinstance(data, str):
        fit = adapt_for_model(data, fed)
        return get_dataset(data, "train", augment=False, in_chans=fit.in_chans, image_size=fit.image_size,
                           preprocessing=fit.preprocessing)
    record, info = preprocessing_of(fed), getattr(data, "info", None)
    if record is not None and info is not None:
        try:
            got = data_preprocessing(info)
        except (UsageError, AttributeError, TypeError):   # a hand-made info: nothing to compare
            return data
        same = got.input_size == record.input_size and all(
            math.isclose(a, b, rel_tol=1e-3) for a, b in zip(got.mean + got.std, record.mean + record.std, strict=True))
        if not same:
            warnings.warn(f"The calibration data is fed as {got.describe()}, but the model records "
                          f"{record.describe()}: the blocks are fitted on inputs it is not fed. Build the data with "
                          "get_dataset(..., image_size=SIZE, preprocessing=model.cheapconv_preprocessing), or pass "
                          "the dataset's name.", stacklevel=3)
    return data


def reconstruct(student: nn.Module, teacher: nn.Module, data: Dataset | torch.Tensor | str, *, samples: int = 2048,
                batch_size: int = 64, steps: int = 200, lr: float = 1e-2, batchnorm: str = "blocks",
                cache_mb: float = 512, device=None, progress: bool = True, seed: int = 0,
                balance: bool = True) -> ReconstructionReport:
    """Fit every replaced site of ``student`` so that its output matches ``teacher``'s at that site.

    ``student`` is a result of :func:`cheapconv.cheapen` of ``teacher`` (or a file saved from one; it is
    modified in place and is what this function is for); ``teacher`` is never modified (hooks removed,
    training flags restored, no gradient). ``data`` is a dataset yielding ``(image, label)``, a tensor of
    images, or a dataset name (``"imagefolder:DIR"``: its training split, fed as the student's preprocessing
    record says, else the teacher's; a dataset fed otherwise gets a warning); ``samples`` of it (a fixed
    random subset; all of it if smaller) form the calibration set, read in batches of ``batch_size``.

    Sites are fitted in the order the student runs them, each on the student's own inputs, which already
    come through the reconstructed blocks before it, so errors do not compound. Per site: closed forms where
    the block is linear (``Sep``, ``LR``, ``LRp``: activation-aware least squares), BatchNorm statistics and a
    least-squares last 1×1 conv where the block ends in one (``G``, ``B``, ``BG``), then ``steps`` Adam steps
    (learning rate ``lr``, cosine decay) on that block alone, kept only if they lower the error (see
    :mod:`cheapconv.reconstruction.fitting`; ``lr=1e-2`` beat ``1e-3`` at 200 steps on a trained WRN-16-2,
    step-0 test top-1 85.6 % against 82.5 % for ``B(2)``, 90.4 % against 90.0 % for ``G(4)``; more steps help
    the bottleneck further, benchmarks/teacher_init/README.md). With ``balance`` (the default) each fitted block is
    then rescaled exactly (same eval-mode function) so that distillation at the teacher's learning rate does not
    throw it out in its first steps (:mod:`cheapconv.reconstruction.balance` says why and what).

    BatchNorm statistics: with ``batchnorm="blocks"`` (the default)
    those inside each replaced block are recomputed right after its fit, from its final inputs (nothing
    upstream changes afterwards), with the rest of the student in eval mode; ``"all"`` adds, at the end, the
    classic pass over the calibration set in train mode (``momentum=None``, no gradients) for every
    BatchNorm of the student. Why not "all" by default: the kept BatchNorm layers are the teacher's, and the
    targets are the teacher's outputs computed with the teacher's statistics; where those differ from the
    calibration set's (a teacher whose running averages lag its weights, a calibration set unlike its
    training data), recomputing them moves the student *away* from the teacher (measured on a random
    WRN-16-1 whose statistics came from three batches, 256 random images: the 14 LR(0.25) sites end at
    relative errors 0.44-0.79 with "blocks", their fitted values, and 0.74-2.06 with "all"). A final pass
    over only the blocks' layers is not done either: in train mode every block normalises with batch
    statistics, so the blocks downstream see other inputs than in eval mode (measured on a random
    ResNet-18 at 64×64, 32 images in batches of 16, B(2): layer4 sites fitted to 1e-4 ended at 0.85-1.0).

    Memory is bounded: activations are streamed batch by batch, the models run only up to the site being
    fitted, and each site keeps at most ``cache_mb`` MiB of (input, target) pairs for its optimisation.

    Returns a :class:`~cheapconv.reconstruct.ReconstructionReport` (``print(report)`` shows the table).

    Example::

        student = cheapconv.cheapen(teacher, "G(4)")
        calib = cheapconv.data.get_dataset("fashion-mnist", "train", augment=False, in_chans=3, image_size=32)
        report = cheapconv.reconstruct(student, teacher, calib, samples=1024)
        print(report)
    """
    _check(samples, steps, lr, batch_size, batchnorm, cache_mb)
    started = time.perf_counter()
    sites = fitting_sites(student, teacher)
    dev = _device(student, device)
    student.to(dev)
    batches, chosen = _batches(_calibration_data(data, student, teacher), samples, batch_size, seed)
    settings = FitSettings(steps=steps, lr=lr, batch_size=min(batch_size, 32),
                           cache_bytes=int(cache_mb * 2**20), seed=seed, balance=balance)
    report = ReconstructionReport(samples=chosen, steps=steps, batchnorm=batchnorm,
                                  cache_limit_bytes=settings.cache_bytes)
    if not sites:
        report.seconds = time.perf_counter() - started
        return report
    with _Progress(progress, total=len(sites) + 3) as bar, eval_flags(student, teacher):
        bar.step("checking the sites")
        first = next(iter(batches()))
        sites = _first_forward(student, teacher, sites, first.to(dev))
        bar.step("errors before")
        before = _errors(student, teacher, sites, batches, dev)
        fits = []
        for site in sites:
            bar.step(f"fitting {site.name}")
            fits.append(fit_site(site, student, teacher, batches, settings, dev, chosen))
        bar.step("errors after" if batchnorm == "blocks" else "BatchNorm statistics and errors after")
        layers = batchnorms(student) if batchnorm == "all" else []   # "blocks": done site by site
        recalibrate(layers, student, (x.to(dev) for x in batches()))
        after = _errors(student, teacher, sites, batches, dev)
    for site, fit, b, a in zip(sites, fits, before, after, strict=True):
        report.sites.append(SiteResult(site.name, site.entry.block or "", fit.method, b, fit.start, fit.fitted, a,
                                       fit.cached_images, fit.streamed_images))
    _record_start(student, report)
    report.batchnorm_layers = len(layers)
    report.peak_site_bytes = max(f.cache_bytes for f in fits)
    report.seconds = time.perf_counter() - started
    return report


def _first_forward(student: nn.Module, teacher: nn.Module, sites: list[Site], x: torch.Tensor) -> list[Site]:
    """The sites in run order (one student forward on the first batch, before any fit); a batch the models
    cannot read (other channels, not N×C×H×W) is a UsageError instead of torch's error from inside a conv."""
    try:
        return execution_order(student, sites, x)
    except RuntimeError:
        problem = input_mismatch(teacher, tuple(x.shape))
        if problem is None:
            raise
    raise UsageError(f"The calibration images do not fit the teacher: {problem}. Load the data as the teacher is "
                     "fed (get_dataset(..., in_chans=C) repeats a grayscale channel C times), pass the dataset's "
                     "name (it is then fed as the model records), or give a tensor of images N×C×H×W.") from None


def _record_start(student: nn.Module, report: ReconstructionReport) -> None:
    """Record in the student's recipe (what :func:`cheapconv.save` writes) that it now starts from its
    teacher, so that training it chooses or checks the matching recipe (:mod:`cheapconv.train.fine_tuning`)."""
    recipe = getattr(student, "cheapconv_recipe", None)
    if isinstance(recipe, dict):
        recipe["init"] = "teacher"
        recipe["reconstructed"] = {"samples": report.samples, "steps": report.steps}


class _Progress:
    """The phases of a reconstruction as one progress report on stderr (:class:`cheapconv.progress.ProgressReport`:
    a bar on a terminal, a line per ~10 % with the time left in a log); nothing when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.report = ProgressReport() if enabled else None
        self.total, self.done = total, 0

    def __enter__(self) -> _Progress:
        if self.report is not None:
            self.report.__enter__()
            self.report.start("reconstructing", 0, self.total)
        return self

    def step(self, what: str) -> None:
        """The next phase begins: ``what`` (the previous one is done)."""
        if self.report is not None:
            self.report.tick("reconstructing", self.done, self.total, what)
        self.done += 1

    def __exit__(self, *exc) -> None:
        if self.report is not None:
            if exc[0] is None:
                self.report.tick("reconstructing", self.total, self.total)
            self.report.__exit__(*exc)
