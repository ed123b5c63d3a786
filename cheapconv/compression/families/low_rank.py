"""``low_rank``: a conv as (depthwise k×k →) two 1×1 convs through a rank keeping a fraction of its parameters
(``LRp(f)``). It applies to 1×1 convs too, so it is the family for pointwise-heavy networks (EfficientNet,
MobileNet)."""

from ..family import Family, register

register(Family("low_rank", "conv", ("LRp(0.5)", "LRp(0.25)"),
                help="depthwise k×k + low-rank 1×1 pair: LRp(0.5), LRp(0.25)"))
