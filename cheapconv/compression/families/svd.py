"""``svd``: a dense k×k conv as a k×1 then a 1×k conv through a rank keeping a fraction of its parameters
(``SVDk(f)``). Not among the defaults: name it (``families=["svd", ...]``)."""

from ..family import Family, register

register(Family("svd", "conv", ("SVDk(0.5)",), default=False,
                help="spatial SVD, k×1 then 1×k: SVDk(0.5)"))
