"""A student assembled from a candidate library: one option per site, each with the weights it was fitted to.

:func:`assemble` builds the student with one policy (the chosen options' rules, ``cheapen(..., init="teacher")``)
and loads every chosen option's fitted block from the library folder, with no refit. Since a library option's
fit changed nothing outside its block (the build checks it), a student of one chosen option *is* that option's
single-swap model, and a choice of several puts each block exactly where it was fitted; only the inputs the
blocks read differ from the ones they were fitted on (the next step, a reconstruction pass in order, deals with
that).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..blocks import BlockSpec, parse_block
from ..errors import CheapconvError, UsageError
from ..surgery import cheapen
from .calibration import state_sha256
from .group_library import thin_teacher
from .library_model import KEEP, Library, LibrarySite, SiteOption

__all__ = ["assemble", "chosen_options"]

_KEEPS = {KEEP, "S"}


def _spec_text(spec: str | BlockSpec | None) -> str:
    if spec is None:
        return KEEP
    text = str(spec).strip()
    if text in _KEEPS:
        return KEEP
    try:
        return str(parse_block(text))
    except CheapconvError:
        return text   # not a spec: reported as an option the site does not have


def chosen_options(library: Library, choice: Mapping[str, str | BlockSpec | None]
                   ) -> list[tuple[LibrarySite, SiteOption]]:
    """The (site, option) pairs ``choice`` picks, ``keep`` left out, in the library's site order; an unknown site,
    an option the site does not have, or a pair-level option chosen together with a conv-level one on a conv of
    that pair is a :class:`~cheapconv.errors.UsageError`."""
    names = {s.name for s in library.sites}
    unknown = [name for name in choice if name not in names]
    if unknown:
        listed = ", ".join(s.name for s in library.sites[:8])
        listed += f", ... ({len(library.sites)} in all)" if len(library.sites) > 8 else ""
        raise UsageError(f"The library has no site {', '.join(map(repr, unknown[:3]))}. Its sites are: {listed}.")
    picked: list[tuple[LibrarySite, SiteOption]] = []
    for site in library.sites:
        spec = _spec_text(choice.get(site.name))
        if spec == KEEP:
            continue
        option = next((o for o in site.options if o.spec == spec), None)
        if option is None:
            raise UsageError(f"{site.name} has no option {choice[site.name]!s}; its options are "
                             f"{', '.join(o.spec for o in site.options)}.")
        picked.append((site, option))
    by_conv = {site.convs[0]: (site, option) for site, option in picked if site.kind == "conv"}
    for site, option in picked:
        if site.kind != "pair":
            continue
        clash = [f"{c}={by_conv[c][1].spec}" for c in site.convs if c in by_conv]
        if clash:
            raise UsageError(f"{site.name}={option.spec} replaces the whole pair, so its convs cannot take options of "
                             f"their own too ({', '.join(clash)}). Choose either the pair's option or its convs' "
                             "options (keep for the other).")
    return picked


def _weights(library: Library, option: SiteOption, site: LibrarySite) -> dict[str, torch.Tensor]:
    if library.directory is None or option.weights is None:
        raise UsageError(f"The library holds no fitted weights for {site.name}={option.spec} (it was not built into "
                         "a folder, or that option was never fitted). Load the library from its folder "
                         "(Library.load_json(DIR/library.json)) or finish building it (build_library with the same "
                         "directory resumes).")
    path = Path(library.directory) / option.weights
    if not path.is_file():
        raise UsageError(f"The fitted weights of {site.name}={option.spec} are missing ({path}). Rebuild the library "
                         "into its folder: build_library with the same settings refits the missing options.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UsageError(f"{path} is not a library option's weights (a dict of tensors). Rebuild the library.")
    return state


def assemble(teacher: nn.Module, library: Library, choice: Mapping[str, str | BlockSpec | None], *,
             widths: Mapping[str, str] | None = None, base: nn.Module | None = None) -> nn.Module:
    """The student that takes, at each site named in ``choice`` (site name -> spec; ``keep``, ``S``, None or a site
    left out: the teacher's own layers), that option of ``library``, with the weights it was fitted to.

    With ``widths`` (:attr:`Selection.widths`) thinning groups of the library, the student is built on ``base``,
    the teacher with those groups thinned (:func:`~.group_library.thin_teacher`; built here without refitting
    where not given): a site touching a thinned group has no fitted weights at those widths, so its block starts
    from ``base``'s layers (``init="teacher"``) and the reconstruction pass after assembly fits it.

    The student is built with one policy, ``cheapen(teacher, rules, init="teacher")`` at the library's input shape,
    checked to replace exactly the chosen sites, and every chosen block's fitted tensors are loaded (every key and
    shape checked; nothing is refitted). ``teacher`` must be the library's teacher (its SHA-256 is in
    ``library.key``) and is never changed. A keep-only choice gives the teacher's exact outputs.

    Example::

        library = build_library(teacher, "fashion-mnist", directory="lib")
        student = assemble(teacher, library, {"block1.0.conv1+conv2": "B(2)", "block3.0.conv2": "G(4)"})
    """
    picked = chosen_options(library, choice)
    if library.key.get("teacher") not in (None, state_sha256(teacher)):
        raise UsageError("The teacher is not the one the library was built for (its weights' SHA-256 differs from "
                         "the library's key). Pass the library's teacher, or build a library for this one.")
    thinned = {g for g, w in (widths or {}).items() if w != KEEP}
    if thinned and base is None:
        base = thin_teacher(teacher, library, widths)
    policy = "; ".join(option.rule for _, option in picked) or KEEP
    shape = tuple(library.input_shape) or None
    student = cheapen(base if thinned else teacher, policy, init="teacher", input_size=shape)
    expected = {site.name: option.spec for site, option in picked}
    done = {e.layer: e.block for e in student.cheapconv_plan.replaced}
    if done != expected:
        raise RuntimeError(f"cheapconv bug: the policy {policy!r} replaced {sorted(done.items())}, not the chosen "
                           f"{sorted(expected.items())}")
    own = student.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for site, option in picked:
        if thinned & set(site.touches):      # fitted at the teacher's widths, not these
            continue
        block = site.convs[0] + "."          # the student's block sits at the first conv it replaced
        state = _weights(library, option, site)
        wanted = {k for k in own if k.startswith(block)}
        problems = sorted(set(state) ^ wanted)[:4] + [
            f"{k} {tuple(v.shape)} saved, {tuple(own[k].shape)} in the student"
            for k, v in state.items() if k in own and own[k].shape != v.shape][:4]
        if problems:
            raise UsageError(f"The fitted weights of {site.name}={option.spec} do not fit the block the library's "
                             f"rule builds ({', '.join(map(str, problems))}). The library was built by another "
                             "version of cheapconv or for another teacher; rebuild it.")
        loaded.update(state)
    if loaded:
        missing, unexpected = student.load_state_dict(loaded, strict=False)
        if unexpected:
            raise RuntimeError(f"cheapconv bug: library weights not in the student: {unexpected[:4]}")
    return student
