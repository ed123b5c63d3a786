"""cheapconv: make trained convolutional networks cheap without redesigning them.

>>> import cheapconv
>>> teacher = cheapconv.create_model("wrn_40_2")
>>> student = cheapconv.cheapen(teacher, "G(4)")
>>> cheapconv.count_params(student, "paper")
825210

``import cheapconv`` imports torch only; torchvision and timm are imported when a model name needs them.
"""

__version__ = "0.1.0"

from .blocks import BLOCK_REGISTRY, BlockSpec, parse_block
from .blockswap import SearchResult, search
from .callbacks import Callback
from .config import DistillConfig
from .counting import count_macs, count_params
from .distill import DistillResult, NonFiniteLossError, distill
from .errors import CheapconvError, PolicyMatchError, PolicySyntaxError, TraceError, UsageError
from .export import ExportCheckError, export
from .fisher import fisher_potential
from .io import load, read_recipe, save
from .metrics import evaluate
from .models import WideResNet, create_model
from .plan import Plan, PlanEntry, plan
from .policy import Policy, Rule, Selector, parse_policy
from .profile import Profile, profile
from .rewrite import cheapen
from .sweep import sweep
from .taps import Tap, find_stages, record

__all__ = [
    "BLOCK_REGISTRY", "BlockSpec", "Callback", "CheapconvError", "DistillConfig", "DistillResult",
    "NonFiniteLossError", "ExportCheckError", "Plan", "PlanEntry", "Policy",
    "PolicyMatchError", "PolicySyntaxError", "Profile", "Rule", "Selector", "Tap", "TraceError", "UsageError",
    "WideResNet", "__version__", "cheapen", "count_macs", "count_params", "create_model", "distill",
    "evaluate", "export",
    "find_stages", "load", "parse_block", "parse_policy", "plan", "profile", "read_recipe", "record", "save",
    "sweep",
    "SearchResult", "fisher_potential", "search",
]
