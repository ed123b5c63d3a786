"""``compress``: from a pretrained teacher to the most accurate student that meets a measured latency budget in the
runtime it ships in (issue 27). A candidate library per teacher (every replaceable site, every applicable family at a
few strengths, each fitted locally to the teacher and measured), an exact selection under the budget (a
multiple-choice knapsack solved as an integer program), then the assembled student measured as a whole, reconstructed
in order and distilled."""

from .assembly import assemble
from .budgets import METRICS, parse_budget
from .estimate import BuildEstimate, estimate_build
from .family import FAMILIES, Family
from .fronts import DEFAULT_SHARES, Front, front
from .groups import DEFAULT_STRENGTHS as DEFAULT_GROUP_WIDTHS
from .library import build_library
from .library_model import KEEP, GroupWidth, Library, LibraryGroup, LibrarySite, SiteOption, WidthPrice
from .measured_budget import BudgetResult, Round, meet_budget
from .runner import CompressResult, compress, list_sites
from .selection import BudgetUnreachableError, Selection, select

__all__ = ["KEEP", "GroupWidth", "Library", "LibraryGroup", "LibrarySite", "SiteOption", "WidthPrice",
           "FAMILIES", "Family", "assemble", "build_library", "BuildEstimate", "estimate_build",
           "METRICS", "BudgetResult", "DEFAULT_GROUP_WIDTHS",
           "BudgetUnreachableError", "DEFAULT_SHARES", "Front", "Round", "Selection",
           "front", "meet_budget", "parse_budget", "select",
           "CompressResult", "compress", "list_sites"]
