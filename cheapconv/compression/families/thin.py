"""``thin``: a residual pair ``conv_a → norm → act → conv_b`` kept as it is at a fraction f of its inner width
(``W(f)``): the channels nothing but conv_b reads. Options start from the teacher's most important channels and
have conv_b refitted by least squares, as every option of the library is fitted (closed forms, BatchNorm
statistics, least squares on the last conv). Not among the defaults yet: name it (``families=["thin", ...]``,
``--families thin,...``), so libraries built with the default families keep their key."""

from ..family import Family, register

register(Family("thin", "pair", ("W(0.75)", "W(0.5)", "W(0.25)"), default=False,
                help="residual pair at a fraction of its inner width: W(0.75), W(0.5), W(0.25)"))
