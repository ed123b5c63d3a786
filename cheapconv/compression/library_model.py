"""What a candidate library holds (issue 27): the sites of a teacher, the options each can take, and what every
option was measured to cost and to change. Plain data, JSON on disk; built by :mod:`cheapconv.compression.library`,
read by :mod:`cheapconv.compression.selection` (which option per site) and :mod:`cheapconv.compression.assembly` (the
student from the chosen options' fitted weights).

A *site* is one replaceable conv (``kind="conv"``) or one residual pair (``kind="pair"``: two convs whose
inner width nothing else reads). A pair's options replace the pair as a whole (a bottleneck ``B(2)``, and the
inner-width families such as thinner blocks); its convs are sites of their own for conv-level options
(``G(4)`` on one conv, ``LRp(0.5)`` on another). So a pair takes *either* one pair-level option *or* conv-level
options on its convs: :attr:`LibrarySite.convs` names the conv sites a pair-level choice excludes, and the
selection enforces it.

Every site has the option ``keep`` (the teacher's own layers: zero cost change, zero loss). An option records:

- ``rule``: the policy line that builds it (``block1.0.conv1=G(4)``; a pair: ``block1.0=B(2)``), so a chosen
  set of options is an ordinary policy for :func:`cheapconv.cheapen`;
- the exact change of parameters (both conventions) and MACs against the teacher's layers it replaces;
- ``latency_saved_ms``: the teacher's time minus the time with this option, in the library's runtime settings
  (positive: faster), measured on the site's own layers; ``None`` where it could not be measured;
- ``local_error``: the relative output error at the site after fitting, on held-out calibration images
  (the site fed the teacher's own input there: options are independent of each other);
- ``kl`` and ``agreement``: the teacher with only this option swapped in, against the teacher, on held-out
  images (mean KL divergence of the predictions; top-1 agreement);
- ``weights``: the file (inside the library folder) of the fitted modules' state dict.

**Coupled widths** (issue 31 item 2). A library may also hold *group sites* (:class:`LibraryGroup`): channel groups
that shrink together (a stage's residual stream), each with ``keep`` and thinner widths (``Wg(f)``), one width
chosen per group. A site whose convs read or write a group lists it in :attr:`LibrarySite.touches`, and its options
are then priced per *width combination* (one width per touched group): the option's own fields at every group's
``keep``, and :attr:`SiteOption.at_widths` for the other combinations it was priced at (an option with no price
at a combination cannot be chosen with it). The attribution keeps each layer counted once: a group width carries
the change of the group's layers that belong to no site (BatchNorms, the classifier; for latency the adds and
activations of the stream); a conv site's price at a combination is its conv (or option) at those widths against
the teacher's conv; a pair site's is its option at those widths against its two convs kept at those widths (which
the conv sites' ``keep`` prices carry). A library without groups is what it was: nothing else changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bounded import MiB, read_text
from ..store.files import atomic_write

__all__ = ["KEEP", "LIBRARY_FORMAT", "GroupWidth", "Library", "LibraryGroup", "LibrarySite", "SiteOption",
           "WidthPrice"]

KEEP = "keep"
LIBRARY_FORMAT = 1
#: the most bytes of library.json read (a library of a few hundred sites with a dozen options each takes ~1 MiB)
LIBRARY_JSON_LIMIT = 64 * MiB


@dataclass
class WidthPrice:
    """An option's changes (as :class:`SiteOption`'s own fields) when the groups its site touches take ``widths``
    (group site name -> width spec; every touched group named)."""

    widths: dict[str, str]
    params: int = 0
    paper: int = 0
    macs: int = 0
    latency_saved_ms: float | None = 0.0


@dataclass
class SiteOption:
    """One way a site can be built (see the module docstring for each field)."""

    spec: str                              # the block notation, or "keep"
    rule: str | None                       # the policy line; None for keep
    params: int = 0                        # change against the teacher (trainable convention; negative: fewer)
    paper: int = 0                         # change in the paper convention
    macs: int = 0                          # change of MACs for one input
    latency_saved_ms: float | None = 0.0   # teacher's time minus this option's time (positive: faster)
    local_error: float = 0.0
    kl: float = 0.0
    agreement: float = 1.0
    weights: str | None = None             # file name inside the library folder
    family: str = KEEP
    seconds: float = 0.0                   # what fitting and scoring it took
    notes: list[str] = field(default_factory=list)
    #: its prices at the width combinations of the touched groups other than all-keep (see the module docstring)
    at_widths: list[WidthPrice] = field(default_factory=list)

    @property
    def is_keep(self) -> bool:
        return self.spec == KEEP

    def priced(self, widths: dict[str, str]) -> WidthPrice | None:
        """This option's price when the touched groups take ``widths`` (None: not priced there). At every
        group's ``keep`` (or with no groups) it is the option's own fields."""
        if all(w == KEEP for w in widths.values()):
            return WidthPrice(dict(widths), self.params, self.paper, self.macs, self.latency_saved_ms)
        return next((p for p in self.at_widths if p.widths == widths), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteOption:
        data = dict(data)
        data["at_widths"] = [WidthPrice(**p) for p in data.get("at_widths", [])]
        return cls(**data)


@dataclass
class GroupWidth:
    """One width of a group site: ``keep`` or ``Wg(f)``, the channels kept, its changes against the teacher
    (only the layers of the group that belong to no site: see the module docstring), and the loss of the teacher
    with only this group thinned and its readers refitted (``kl``, ``agreement`` as for a site option)."""

    spec: str
    kept: int
    params: int = 0
    paper: int = 0
    macs: int = 0
    latency_saved_ms: float | None = 0.0
    kl: float = 0.0
    agreement: float = 1.0

    @property
    def is_keep(self) -> bool:
        return self.spec == KEEP


@dataclass
class LibraryGroup:
    """A group site: channels that shrink together, and the widths it can take (``widths[0]`` is keep)."""

    name: str
    channels: int
    layers: tuple[str, ...] = ()          # the modules that write or read the group's channels
    widths: list[GroupWidth] = field(default_factory=list)

    def width(self, spec: str) -> GroupWidth:
        for w in self.widths:
            if w.spec == spec:
                return w
        raise KeyError(f"group {self.name} has no width {spec!r}")


@dataclass
class LibrarySite:
    """One site and its options (``options[0]`` is always keep)."""

    name: str                              # the plan's name: a conv's module name, a pair's "block1.0.conv1+conv2"
    kind: str                              # "conv" or "pair"
    convs: tuple[str, ...]                 # the conv(s) it covers
    shape: str = ""                        # human description, e.g. "32→32 3×3 @32×32"
    options: list[SiteOption] = field(default_factory=list)
    touches: tuple[str, ...] = ()          # the group sites whose widths its convs read or write

    def option(self, spec: str) -> SiteOption:
        for opt in self.options:
            if opt.spec == spec:
                return opt
        raise KeyError(f"{self.name} has no option {spec!r}")


@dataclass
class Library:
    """A teacher's candidate library: its sites and options, and the settings they were measured under.

    ``key`` identifies what the figures depend on (the teacher's SHA-256, the calibration data's fingerprint,
    the candidate families and strengths, the runtime settings); a library folder built for another key is not
    reused. ``teacher_latency_ms`` is the whole teacher's time in those settings."""

    key: dict[str, Any]
    sites: list[LibrarySite] = field(default_factory=list)
    teacher_latency_ms: float | None = None
    teacher_params: int = 0
    teacher_paper: int = 0
    teacher_macs: int = 0
    input_shape: tuple[int, ...] = ()
    format: int = LIBRARY_FORMAT
    groups: list[LibraryGroup] = field(default_factory=list)
    #: the folder the library was built in or loaded from (the options' ``weights`` are relative to it); not saved
    directory: Path | None = field(default=None, compare=False, repr=False)

    def site(self, name: str) -> LibrarySite:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["directory"]   # where the library lies is not part of it: the folder may move
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Library:
        sites = [LibrarySite(name=s["name"], kind=s["kind"], convs=tuple(s["convs"]), shape=s.get("shape", ""),
                             options=[SiteOption.from_dict(o) for o in s["options"]],
                             touches=tuple(s.get("touches", ()))) for s in data.get("sites", [])]
        groups = [LibraryGroup(name=g["name"], channels=g["channels"], layers=tuple(g.get("layers", ())),
                               widths=[GroupWidth(**w) for w in g["widths"]]) for g in data.get("groups", [])]
        return cls(key=dict(data["key"]), sites=sites, teacher_latency_ms=data.get("teacher_latency_ms"),
                   teacher_params=data.get("teacher_params", 0), teacher_paper=data.get("teacher_paper", 0),
                   teacher_macs=data.get("teacher_macs", 0), input_shape=tuple(data.get("input_shape", ())),
                   format=data.get("format", LIBRARY_FORMAT), groups=groups)

    def group(self, name: str) -> LibraryGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def save_json(self, path: str | Path) -> None:
        """Write the library as JSON atomically (a kill never leaves half a file: the build resumes from it)."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load_json(cls, path: str | Path) -> Library:
        # read like any file a user names: a regular file of at most LIBRARY_JSON_LIMIT bytes (a FIFO or a huge
        # file given as a library folder's library.json is a UsageError, never a hang or a multi-GiB read)
        text = read_text(path, what="the library file", limit=LIBRARY_JSON_LIMIT,
                         fix="Choose another folder for the library, or delete this one to rebuild it.")
        library = cls.from_dict(json.loads(text))
        library.directory = Path(path).parent
        return library
