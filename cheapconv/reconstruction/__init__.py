"""Block-wise reconstruction: a cheapened student fitted, site by site, to its teacher on calibration data.

:func:`reconstruct` is the entry point; :mod:`.sites` says which student block replaces which teacher convs,
:mod:`.capture` streams what the models compute at a site, :mod:`.linear` holds the closed forms,
:mod:`.fitting` fits one site, :mod:`.batchnorm` recomputes BatchNorm statistics, :mod:`.report` renders
the per-site errors.
"""

from .batchnorm import batchnorms, recalibrate
from .coupled import ReaderFit, refit_readers
from .report import ReconstructionReport, SiteResult
from .runner import BATCHNORM_CHOICES, reconstruct
from .sites import Site, fitting_sites

__all__ = ["BATCHNORM_CHOICES", "ReaderFit", "ReconstructionReport", "Site", "SiteResult", "batchnorms",
           "fitting_sites", "recalibrate", "reconstruct", "refit_readers"]
