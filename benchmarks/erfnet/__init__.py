"""The Moonshine paper's segmentation study (Section 5.2, Table 4) as the paper ran it, on fashion-mnist-seg:
an ERFNet teacher trained encoder first until validation mIoU stops improving, its ``G(N)`` student from scratch,
with attention transfer at the paper's layers, and teacher-initialised (issue 28). See :mod:`.study`."""
