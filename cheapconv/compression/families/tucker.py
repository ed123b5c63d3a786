"""``tucker``: a dense k×k conv as a Tucker-2 decomposition, 1×1 → k×k at reduced ranks → 1×1
(``Tucker2(f)``: ranks keeping a fraction f of its parameters)."""

from ..family import Family, register

register(Family("tucker", "conv", ("Tucker2(0.5)",),
                help="Tucker-2, 1×1 → k×k at reduced ranks → 1×1: Tucker2(0.5)"))
