"""Training objectives, one file each, registered by name in :data:`LOSSES` (see :mod:`._base`);
``LOSSES.names()`` lists them.

Adding an objective is adding one file here (or defining an :class:`Objective` subclass anywhere and importing
it): its name, its settings and its terms, which the command line and the stored configurations pick up.
"""

from __future__ import annotations

from ._base import LOSSES, Objective, canonical_name, make_objective

__all__ = ["LOSSES", "Objective", "canonical_name", "make_objective"]
