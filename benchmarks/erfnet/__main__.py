"""``python -m benchmarks.erfnet``: the study (see :mod:`benchmarks.erfnet.study`)."""

from .study import main

if __name__ == "__main__":
    main()
