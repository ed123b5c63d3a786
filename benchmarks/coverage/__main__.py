"""``python -m benchmarks.coverage``: the classifier sweep (see :mod:`benchmarks.coverage.zoo`)."""

import sys

from .zoo import main

if __name__ == "__main__":
    sys.exit(main())
