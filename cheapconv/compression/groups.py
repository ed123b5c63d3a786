"""Coupled widths as compress candidates (issue 31 item 2): the groups a library may thin, and how the selection
chooses one width per group. The design is below, and all of it is built: the group sites (here), the library's
data for them (:class:`~.library_model.LibraryGroup`, :attr:`~.library_model.SiteOption.at_widths`), the integer
program (:mod:`.selection`), exact pricing (:mod:`.group_pricing`), scoring, timing and the thinned teacher
(:mod:`.group_library`), and assembly (:func:`.assembly.assemble` with ``widths``); ``compress(groups=...)`` and
``cheapconv compress --groups`` use them. One difference from the design: a site's ``keep`` carries no latency at
thinned widths; the group width's own time (the whole teacher against the teacher with that group thinned) holds it.

**What is built.** :func:`find_group_sites` lists a teacher's *group sites*: the channel groups
(:func:`cheapconv.fx.channel_groups`) that can be thinned and are not a residual pair's inner width (those are the
``thin`` family's ``W(f)``, a pair-level option). In a WRN these are the stem's outputs and each stage's residual
stream; in a ResNet the four streams. Each group site offers ``keep`` and ``Wg(f)`` for each strength f (default
0.75 and 0.5): the group at ``kept_channels(f, C)`` channels, the most important ones
(:func:`cheapconv.surgery.top_channels`), with the exact change of parameters (both conventions) and MACs of the
teacher with only that group thinned, and :attr:`GroupSite.touches`: the convs of the group, so the library sites
whose convs read or write it (every site whose price depends on the group's width).

**The selection** (one more kind of variable in the same integer program; built as designed here):

* Variables. Per group site g and width w ∈ {keep, Wg(f)...}: a binary y[g,w], and Σ_w y[g,w] = 1. A library site
  s whose convs touch groups G_s (at most two: the group its first conv reads, the group its last conv writes; one
  group when both are the same stream) gets one binary z[s,o,c] per option o and *width combination* c (a width of
  each group in G_s), replacing today's z[s,o]. Sites that touch no group keep z[s,o].
* Coupling rows (exact linearisation of "the site's option is priced at the group's width"): for each g ∈ G_s and
  each width w, Σ_{o, c with c_g = w} z[s,o,c] = y[g,w]. With each y one-hot, these marginals force all of s's
  choice onto the one combination the groups chose. Today's rows stay: one option per site (implied by the
  marginals), and a pair's non-keep options exclude non-keep conv options on its convs (summed over combinations).
* Costs (params, paper, MACs, latency) are attributed so that each layer is counted once and every term is a
  difference of the same layers: y[g,w] carries Δ_g(w), the change of the group's layers that belong to no library
  site (the stem conv, BatchNorms, the classifier; for latency the stream's adds and activations), measured with the
  other groups at full width; a conv site's z[s,o,c] carries its conv at (o, c) against the teacher's conv; a pair
  site's z[s,o,c] carries its option at c against *keep at c* of its two convs (which the conv sites' keep already
  carries). For params and MACs this is exact (a conv's cost is bilinear in its two widths, and the conv sites hold
  both); for latency it is the library's additive model, every (option, combination) timed side by side with the
  layers it replaces, at those widths, and the measured-budget loop corrects the sum as it does today.
* Loss: Σ kl[s,o] z[s,o,c] + Σ kl_g(w) y[g,w], with kl_g(w) the KL of the teacher with only g thinned and its
  readers refitted (:func:`cheapconv.reconstruction.refit_readers`), and a site option's kl taken at full width for
  every combination (the independence the library already assumes; fitting every combination would multiply the
  library's fits by up to 9).
* Size: WRN-16-2 has 4 group sites and ~18 library sites; with 3 widths, ≤ 9 combinations per site, ~10 options per
  site: about a thousand binaries, well within HiGHS's reach in a second.
* Assembly: thin the chosen groups on the teacher (:func:`cheapconv.surgery.thin_groups`), refit their readers, and
  use that model as the *intermediate teacher*: cheapen it with the chosen sites' policy (specs are ratios, so
  ``G(4)``/``B(2)``/``W(f)`` apply at the thinned widths, priced as above) and reconstruct against it (its site
  outputs have the student's channel counts; the original teacher's do not); distillation then reads the original
  teacher (logits and attention maps do not depend on channel counts). Options at reduced width have no fitted
  weights in the library, so assembly fits them then.
* Library and files: group sites would be stored beside the sites (a ``groups`` list, so the key of a library built
  without them is unchanged; a non-default family ``coupled`` names them). The student file needs nothing new: the
  safe format describes the thinned layers as they are (a save/load round trip is exact, tested), though its
  recipe should name the chosen widths so the selection can be read back.
* Pricing in the builder (:mod:`.group_pricing`, :mod:`.group_library`): for each combination c a site needs
  (the widths of the groups it touches, the others kept), build the intermediate teacher T_c
  (:func:`cheapconv.surgery.thin_groups`; only shapes matter) and price every option there with
  :func:`.candidates.find_sites` (changes against T_c's layers, i.e. against keep at c). A conv site's
  ``at_widths`` price is that plus its conv's change from the teacher to T_c; a pair site's is that alone, its
  keep carrying only the change of its convs that are not conv sites. A group width's own price is the whole
  change (:func:`cheapconv.surgery.thinned_counts`, only that group thinned) less the keep prices at that width of
  every site touching it: what is left is the layers of no site (BatchNorms, the stem conv, the classifier), which
  is exact as long as no layer outside the sites touches two groups (a conv bridging two streams that no family
  replaces): such a pair of groups cannot be priced additively, so the later group is left out, with a note.
  Latency per combination: each option's block timed side by side with the thinned teacher's layers it replaces
  (what it saves beyond the widths); a group width's own time is the whole teacher against the teacher with only
  that group thinned, side by side, so the touching sites' keep at that width saves nothing of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..blocks.thin import kept_channels
from ..errors import UsageError
from ..fx import ChannelGroup, analyse, channel_groups, trace
from ..models.inputs import example_input_for
from ..surgery import thinned_counts
from .library_model import KEEP

__all__ = ["GroupOption", "GroupSite", "find_group_sites", "group_fraction"]

#: the strengths a group site offers unless others are named
DEFAULT_STRENGTHS = ("Wg(0.75)", "Wg(0.5)")


def group_fraction(spec: str) -> float:
    """The kept fraction f of a group width ``Wg(f)`` (0 < f <= 1), e.g. ``group_fraction("Wg(0.5)") == 0.5``."""
    match = re.fullmatch(r"\s*Wg\(\s*([0-9]+(?:\.[0-9]+)?)\s*\)\s*", str(spec))
    value = float(match.group(1)) if match else -1.0
    if not 0 < value <= 1:
        raise UsageError(f"{spec!r} is not a group width: write Wg(f) with 0 < f <= 1, e.g. Wg(0.5).")
    return value


@dataclass
class GroupOption:
    """One width of a group site: its spec, channels kept, and exact changes against the teacher (only this group
    thinned): parameters (trainable and paper convention) and MACs for one input."""

    spec: str
    kept: int
    params: int = 0
    paper: int = 0
    macs: int = 0


@dataclass
class GroupSite:
    """A channel group the selection may thin (``options[0]`` is ``keep``)."""

    name: str
    group: ChannelGroup
    options: list[GroupOption] = field(default_factory=list)

    def option(self, spec: str) -> GroupOption:
        """The option of width ``spec`` (a KeyError where the group has none)."""
        for o in self.options:
            if o.spec == spec:
                return o
        raise KeyError(f"group {self.name} has no width {spec!r}")

    @property
    def touches(self) -> tuple[str, ...]:
        """The layers whose input or output width is this group's (its writers, then its readers: convs and the
        classifier): every library site among them is priced at the group's width."""
        return self.group.writers + self.group.readers


def find_group_sites(teacher: nn.Module, input_shape: tuple[int, ...],
                     strengths: Sequence[str] = DEFAULT_STRENGTHS) -> list[GroupSite]:
    """The group sites of ``teacher`` at ``input_shape`` (C, H, W), each with ``keep`` and the options of
    ``strengths`` (``Wg(f)``) priced exactly; a strength that keeps every channel of a group, or the same count as
    an earlier one, is no option there. ``teacher`` is not changed."""
    fractions = [(str(s).strip(), group_fraction(s)) for s in strengths]
    gm = trace(teacher)
    example = example_input_for(teacher, tuple(input_shape), device="meta")
    inner = {((p.a.name,), (p.b.name,)) for p in analyse(gm, example, graph_mode=True).pairs}
    shape = (1, *input_shape)
    sites = []
    for group in channel_groups(gm):
        if group.fixed is not None or (group.writers, group.readers) in inner:
            continue
        site = GroupSite(group.label, group, [GroupOption(KEEP, group.channels)])
        for spec, fraction in fractions:
            kept = kept_channels(fraction, group.channels)
            if kept == group.channels or any(o.kept == kept for o in site.options):
                continue
            params, macs = thinned_counts(teacher, [(group, kept)], shape)
            paper, _ = thinned_counts(teacher, [(group, kept)], shape, "paper")
            site.options.append(GroupOption(spec, kept, params, paper, macs))
        if len(site.options) > 1:
            sites.append(site)
    if sites:
        base_params, base_macs = thinned_counts(teacher, [], shape)
        base_paper, _ = thinned_counts(teacher, [], shape, "paper")
        for site in sites:
            for option in site.options[1:]:
                option.params -= base_params
                option.paper -= base_paper
                option.macs -= base_macs
    return sites
