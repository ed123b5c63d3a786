"""The candidate families of ``compress``'s library, one file each, registered in
:data:`cheapconv.extensions.FAMILIES` under the file's name (see :mod:`cheapconv.compression.family`).

By default the library uses ``grouped`` (``G(2)``, ``G(4)``, ``G(N)``), ``low_rank`` (``LRp(0.5)``, ``LRp(0.25)``),
``tucker`` (``Tucker2(0.5)``) on single convs and ``bottleneck`` (``B(2)``, ``B(4)``) on residual pairs; ``svd``
(``SVDk(0.5)``) and ``thin`` (``W(0.75)``, ``W(0.5)``, ``W(0.25)``: a pair at a fraction of its inner width) are
there to be named. Adding a family is adding a file here.
"""

__all__: list[str] = []
