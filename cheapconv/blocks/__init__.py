"""The cheap-block library: one parametrised spec class per family, registered under the paper's notation.

>>> from cheapconv.blocks import parse_block
>>> str(parse_block("BG(2, M/4)"))
'BG(2,M/4)'
"""

from .base import (
    BLOCK_ALIASES,
    BLOCK_MODULES,
    BLOCK_REGISTRY,
    BlockSpec,
    ConvGeometry,
    GroupCount,
    check_multiple,
    register_alias,
    register_block,
    register_module,
    rounded,
)
from .bottleneck import Bottleneck, BottleneckSpec, GroupedBottleneckSpec
from .decomposed import FractionSpec, SpatialSVD, SpatialSVDConv, Tucker2, Tucker2Conv
from .grammar import parse_block, valid_block_names
from .grouped import Grouped, GroupedPointwise
from .same import SamePadded, pads_at_run_time
from .side_head import SideHead, SideHeadReached, side_outputs
from .standard import Dilated2x2, Standard
from .structured import (
    ACDC,
    ACDCPointwise,
    LowRank,
    LowRankFraction,
    LowRankPointwise,
    Separable,
    SeparablePointwise,
    Shuffle,
    ShufflePointwise,
)
from .tensorized import TensorTrain, TensorTrainPointwise, Tucker, TuckerPointwise
from .thin import Thin, ThinSpec, kept_channels

__all__ = [
    "ACDC", "ACDCPointwise", "BLOCK_ALIASES", "BLOCK_MODULES", "BLOCK_REGISTRY", "BlockSpec", "Bottleneck",
    "BottleneckSpec", "ConvGeometry", "Dilated2x2", "GroupCount", "Grouped", "GroupedBottleneckSpec",
    "GroupedPointwise", "LowRank", "LowRankFraction", "LowRankPointwise", "SamePadded", "Separable",
    "SeparablePointwise", "Shuffle", "ShufflePointwise", "SideHead", "SideHeadReached", "Standard",
    "pads_at_run_time", "parse_block",
    "register_alias", "register_block", "register_module", "side_outputs", "valid_block_names",
    "FractionSpec", "SpatialSVD", "SpatialSVDConv", "TensorTrain", "TensorTrainPointwise", "Tucker", "Tucker2",
    "Tucker2Conv", "TuckerPointwise", "Thin", "ThinSpec", "kept_channels", "check_multiple", "rounded",
]
