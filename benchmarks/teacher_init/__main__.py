"""``python -m benchmarks.teacher_init``: the study (see :mod:`benchmarks.teacher_init.study`)."""

import sys

from .study import main

if __name__ == "__main__":
    sys.exit(main())
