"""``python -m benchmarks.segmentation``: the study (see :mod:`benchmarks.segmentation.study`)."""

from .study import main

if __name__ == "__main__":
    main()
