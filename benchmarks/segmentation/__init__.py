"""The segmentation study (issue 12): cheap students of a small segmentation teacher on fashion-mnist-seg, trained
from scratch against distilled with attention transfer. ``python -m benchmarks.segmentation`` runs it
(:mod:`.study`); the figures are on ``benchmarks/segmentation/README.md``.
"""
