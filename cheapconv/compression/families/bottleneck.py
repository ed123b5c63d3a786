"""``bottleneck``: a residual pair ``conv_a → norm → act → conv_b`` collapsed into one bottleneck
1×1 → k×k → 1×1 of inner width C_out/b (``B(b)``)."""

from ..family import Family, register

register(Family("bottleneck", "pair", ("B(2)", "B(4)"),
                help="residual pair as a bottleneck 1×1 → k×k → 1×1: B(2), B(4)"))
