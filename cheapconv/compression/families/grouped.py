"""``grouped``: a dense k×k conv as a grouped k×k conv and a 1×1 (``G(g)``), from two groups to depthwise."""

from ..family import Family, register

register(Family("grouped", "conv", ("G(2)", "G(4)", "G(N)"),
                help="grouped k×k conv + 1×1: G(2), G(4), G(N)"))
