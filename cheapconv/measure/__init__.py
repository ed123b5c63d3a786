"""Measuring: latency timed side by side, peak memory, and whole-model profiles."""

from __future__ import annotations

from .latency import Latency, default_device, measure_latency, measure_side_by_side, parse_dtype
from .memory import peak_memory
from .profiler import BlockTiming, LayerCost, Profile, block_timings, profile, profile_many

__all__ = [
    "BlockTiming", "Latency", "LayerCost", "Profile", "block_timings", "default_device", "measure_latency",
    "measure_side_by_side", "parse_dtype", "peak_memory", "profile", "profile_many",
]
