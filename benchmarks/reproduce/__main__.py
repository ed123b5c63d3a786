"""``python -m benchmarks.reproduce``: the study (see :mod:`benchmarks.reproduce.study`)."""

from .study import main

if __name__ == "__main__":
    main()
