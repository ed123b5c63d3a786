"""The graph layer: tracing any CNN with torch.fx, the node vocabulary, and where the convs are."""

from __future__ import annotations

from .analysis import Analysis, ConvSite, FunctionalConv, PairSite, analyse, shape_mismatch
from .groups import ChannelGroup, channel_groups
from .tap import TAPS_ATTR, Tap
from .tracer import CheapTracer, is_traceable, module_path_of, trace

__all__ = [
    "Analysis", "ChannelGroup", "CheapTracer", "ConvSite", "FunctionalConv", "PairSite", "TAPS_ATTR", "Tap", "analyse",
    "channel_groups",
    "is_traceable", "module_path_of", "shape_mismatch", "trace",
]
