"""Model surgery: policies, the pure printable plan, the rewrite, attention-transfer taps, BN folding."""

from __future__ import annotations

from .coupled import group_importance, thin_group, thin_groups, thinned_counts, top_channels
from .fold import FoldReport, deployable, fold_batchnorm, strip_taps
from .planner import plan, prepare
from .plans import Plan, PlanEntry, plan_table, summary_table
from .policy import Policy, Rule, Selector, parse_policy
from .rewrite import apply_plan, cheapen
from .taps import find_stages, insert_taps, record, taps_of
from .teacher_init import InitRecord, Site, init_from_teacher, replaced_sites, site_output_errors

__all__ = [
    "FoldReport", "Plan", "PlanEntry", "Policy", "Rule", "Selector", "apply_plan", "cheapen", "deployable",
    "find_stages", "fold_batchnorm", "insert_taps", "parse_policy", "plan", "plan_table", "prepare",
    "record", "strip_taps", "summary_table", "taps_of",
    "group_importance", "thin_group", "thin_groups", "thinned_counts", "top_channels",
    "InitRecord", "Site", "init_from_teacher", "replaced_sites", "site_output_errors",
]
