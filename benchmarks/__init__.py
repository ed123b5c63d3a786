"""The studies behind the project's measured claims: one subpackage per study, run from the repository root as
``python -m benchmarks.<study>`` (see ``benchmarks/README.md`` for the list and each study's page).

Studies use only the names that ``cheapconv`` and its subpackages export (``__all__`` of their ``__init__``), and
what they share from :mod:`benchmarks.common`; they never import one another. ``benchmarks/results/`` holds
their committed results (data only).
"""
