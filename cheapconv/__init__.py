"""cheapconv: make trained convolutional networks cheap without redesigning them.

>>> import cheapconv
>>> teacher = cheapconv.create_model("wrn_40_2")
>>> student = cheapconv.cheapen(teacher, "G(4)")
>>> cheapconv.count_params(student, "paper")
825210

``import cheapconv`` imports torch only; torchvision and timm are imported when a model name needs them.
"""

from .blocks import BLOCK_REGISTRY, BlockSpec, parse_block
from .blockswap import SearchResult, search
from .blockswap.fisher import fisher_potential
from .counting import count_macs, count_params
from .data import get_dataset
from .errors import CheapconvError, PolicyMatchError, PolicySyntaxError, TraceError, UsageError
from .exporter import ExportCheckError, export
from .fx.tap import Tap
from .measure.latency import measure_side_by_side
from .measure.profiler import Profile, block_timings, profile
from .models import WideResNet
from .reconstruction import ReconstructionReport, reconstruct
from .store.modelfile import load, read_recipe, save
from .store.resolve import create_model
from .surgery.planner import Plan, PlanEntry, plan
from .surgery.policy import Policy, Rule, Selector, parse_policy
from .surgery.rewrite import cheapen
from .surgery.taps import find_stages, record
from .surgery.teacher_init import InitRecord, Site, init_from_teacher, replaced_sites
from .sweeper import sweep
from .train.callbacks import Callback
from .train.config import DistillConfig
from .train.loop import DistillResult, NonFiniteLossError, distill
from .train.metrics import evaluate
from .version import __version__

__all__ = [
    "BLOCK_REGISTRY", "BlockSpec", "Callback", "CheapconvError", "DistillConfig", "DistillResult",
    "NonFiniteLossError", "ExportCheckError", "Plan", "PlanEntry", "Policy",
    "PolicyMatchError", "PolicySyntaxError", "Profile", "Rule", "Selector", "Tap", "TraceError", "UsageError",
    "WideResNet", "__version__", "cheapen", "count_macs", "count_params", "create_model", "distill",
    "evaluate", "export",
    "find_stages", "load", "parse_block", "parse_policy", "plan", "profile", "read_recipe", "record", "save",
    "sweep",
    "SearchResult", "fisher_potential", "search",
    "ReconstructionReport", "reconstruct",
    "InitRecord", "Site", "init_from_teacher", "replaced_sites",
    "block_timings", "get_dataset", "measure_side_by_side",
]
