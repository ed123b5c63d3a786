"""Measuring: latency timed side by side, peak memory, whole-model profiles, accuracy, and their tables."""

from __future__ import annotations

from .accuracy import evaluate_accuracy
from .latency import Latency, default_device, measure_latency, measure_side_by_side, parse_dtype, time_side_by_side
from .memory import peak_memory
from .profiler import block_timings, profile, profile_many
from .profiles import BlockTiming, LayerCost, Profile, blocks_table, compare_table, profile_table
from .runtimes import RUNTIMES, check_runtime, describe_runtime, make_runners, measure_in_runtime

__all__ = [
    "BlockTiming", "Latency", "LayerCost", "Profile", "block_timings", "blocks_table", "compare_table",
    "default_device", "evaluate_accuracy", "measure_latency", "measure_side_by_side", "parse_dtype",
    "peak_memory", "profile", "profile_many", "profile_table",
    "RUNTIMES", "check_runtime", "measure_in_runtime",
    # the parts of measure_in_runtime, for studies that time one export at several batch sizes
    "describe_runtime", "make_runners", "time_side_by_side",
]
