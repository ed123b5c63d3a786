"""The exact selection (issue 27): one option per site of a candidate library, the most accurate student the
library predicts under a budget, solved as an integer program.

**The predicted loss** of a student is the sum over its sites of the chosen options' ``kl``: the mean KL
divergence to the teacher of the teacher with only that option swapped in (``keep`` adds 0). Summing treats the
sites as independent. The issue's probe (WRN-16-2 on Fashion-MNIST, 90 one-site students, eager torch) found that
this sum overestimates the assembled student's KL 2-3× but ranks students correctly (Spearman 0.94), which is
what choosing between them needs; summed top-1 drops were too noisy to select on.

**The predicted cost** is the teacher's figure plus the chosen options' changes: the latency is
``teacher_latency_ms`` less the options' ``latency_saved_ms`` (an additive model: fusion and session overheads
make the whole student differ, which :func:`cheapconv.compression.meet_budget` corrects by measuring it); params
(paper convention) and MACs add the options' exact changes. See :mod:`cheapconv.compression.budgets`.

**The program** is a multiple-choice knapsack with exclusions, solved exactly by ``scipy.optimize.milp`` (HiGHS):
a binary variable per (site, option); each site takes exactly one option; a residual pair's pair-level option
excludes conv-level options on its convs (``LibrarySite.convs``, where those are sites of the library: a pair is
built either as one block or conv by conv); the predicted figure in the budget's metric is within the budget and
the optional caps hold; the summed ``kl`` is minimised. The solver's status, objective and optimality gap are
reported in the :class:`Selection`.

**Coupled widths** (issue 31 item 2). Where the library holds group sites (:class:`LibraryGroup`), each group
takes one width: a binary per (group, width), exactly one per group. A site touching groups gets one binary per
(option, width combination) it was priced at, instead of one per option, and *marginal rows* tie it to the groups:
for each touched group g and width w, the site's binaries whose combination gives g the width w sum to g's binary
for w. With every group's choice one-hot, these force the site's choice onto the one combination the groups chose,
so its price is the option's price at those widths: exact for parameters and MACs, the library's additive model for
latency (corrected by measuring, as without groups). The loss adds each group width's ``kl`` to the options'.
A library without groups gives the program above, variable for variable.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from ..errors import UsageError
from ..formatting import human, render_plain
from .budgets import check_metric, format_value, option_change, parse_budget, teacher_value
from .library_model import KEEP, GroupWidth, Library, SiteOption, WidthPrice

__all__ = ["BudgetUnreachableError", "Selection", "select"]

#: how long one solve may run; a multiple-choice knapsack of a few hundred options solves in well under a second
TIME_LIMIT_S = 60.0


class BudgetUnreachableError(UsageError):
    """A budget below every student the library can build. ``reachable`` is the (lowest, highest) predicted
    figure in the budget's metric: the fastest student and the teacher."""

    def __init__(self, message: str, reachable: tuple[float, float]):
        super().__init__(message)
        self.reachable = reachable


@dataclass
class Selection:
    """The chosen option per site and what the library predicts for the student they make.

    ``choices`` maps every site (library order) to its chosen spec (``keep`` included), ``options`` to the
    chosen :class:`SiteOption`. ``budget`` is in ``metric``'s unit (ms, paper-convention parameters or MACs).
    ``status`` is the solver's message (``optimal`` when ``optimal``), ``objective`` its objective (the predicted
    loss) and ``mip_gap`` its relative optimality gap (0 when proven optimal)."""

    metric: str
    budget: float
    choices: dict[str, str]
    options: dict[str, SiteOption]
    predicted_latency_ms: float | None
    predicted_params: int
    predicted_paper: int
    predicted_macs: int
    predicted_loss: float
    status: str
    optimal: bool
    objective: float
    mip_gap: float | None
    teacher_latency_ms: float | None = None
    teacher_paper: int = 0
    teacher_macs: int = 0
    notes: list[str] = field(default_factory=list)
    #: the width chosen per group site of the library (group name -> ``keep`` or ``Wg(f)``); empty without groups
    widths: dict[str, str] = field(default_factory=dict)
    #: what each chosen group width and each site's option at the chosen widths costs (the figures the prediction
    #: adds up); for a site touching no thinned group, its option's own figures
    prices: dict[str, WidthPrice | GroupWidth] = field(default_factory=dict)

    @property
    def thinned(self) -> dict[str, str]:
        """The groups thinned (not kept), and their widths."""
        return {name: spec for name, spec in self.widths.items() if spec != KEEP}

    @property
    def chosen(self) -> dict[str, SiteOption]:
        """The sites that do not keep the teacher's layers, and their options."""
        return {name: opt for name, opt in self.options.items() if not opt.is_keep}

    def predicted(self, metric: str | None = None) -> float | None:
        """The predicted figure in ``metric`` (default: the budget's)."""
        metric = check_metric(metric or self.metric)
        if metric == "latency":
            return self.predicted_latency_ms
        return float(self.predicted_paper if metric == "params" else self.predicted_macs)

    def teacher(self, metric: str | None = None) -> float | None:
        """The teacher's figure in ``metric`` (default: the budget's)."""
        metric = check_metric(metric or self.metric)
        if metric == "latency":
            return self.teacher_latency_ms
        return float(self.teacher_paper if metric == "params" else self.teacher_macs)

    def policy(self) -> str:
        """The policy that builds this student with :func:`cheapconv.cheapen`: the chosen options' rules, one per
        line, and nothing else, so every layer no rule names keeps the teacher's (``keep`` when all do).

        Each rule names its layer literally (``block1.0.conv1=G(4)``; a pair by its block, ``block1.0=B(2)``).
        Where groups are :attr:`thinned`, the policy is for the teacher with those groups thinned (its layers keep
        their names; the specs are ratios, so they apply at the thinned widths)."""
        rules = [opt.rule for opt in self.chosen.values() if opt.rule]
        return "\n".join(rules) if rules else KEEP

    def table(self) -> Table:
        """The non-keep choices, one row each (``str(selection)`` adds :meth:`summary` and the notes)."""
        groups = f", {len(self.thinned)} of {len(self.widths)} groups thinner" if self.widths else ""
        t = Table(title=f"Selection under {format_value(self.budget, self.metric)} ({self.metric}): "
                        f"{len(self.chosen)} of {len(self.choices)} sites changed{groups}", title_justify="left")
        for col, just in (("site", "left"), ("option", "left"), ("saved ms", "right"), ("params", "right"),
                          ("MACs", "right"), ("KL", "right")):
            t.add_column(col, justify=just)
        rows = [(name, opt.spec, self.prices.get(name, opt), opt.kl) for name, opt in self.chosen.items()]
        rows += [(f"group {name}", spec, self.prices[f"group {name}"], self.prices[f"group {name}"].kl)
                 for name, spec in self.thinned.items() if f"group {name}" in self.prices]
        # a site that keeps its layers still costs something where its groups are thinner
        rows += [(name, f"keep at {_widths_text(price.widths)}", price, 0.0) for name, price in self.prices.items()
                 if name in self.choices and self.options[name].is_keep and isinstance(price, WidthPrice)
                 and (price.paper or price.macs or price.latency_saved_ms)]
        for name, spec, price, kl in rows:
            saved = "?" if price.latency_saved_ms is None else f"{price.latency_saved_ms:+.3f}"
            t.add_row(name, spec, saved, _signed(price.paper), _signed(price.macs), f"{kl:.4f}")
        return t

    def summary(self) -> str:
        """Two lines: the predicted figures against the teacher's, and the solver's verdict."""
        return (f"predicted: {_against(self.predicted_latency_ms, self.teacher_latency_ms, 'latency')}, "
                f"{_against(self.predicted_paper, self.teacher_paper, 'params')}, "
                f"{_against(self.predicted_macs, self.teacher_macs, 'macs')}; loss {self.predicted_loss:.4f} "
                f"(summed per-site KL)\nsolver: {self.status}, objective {self.objective:.6g}, "
                f"gap {_gap(self.mip_gap)}")

    def __str__(self) -> str:
        text = render_plain(self.table()) + self.summary() + "\n"
        return text + "".join(f"note: {n}\n" for n in self.notes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _widths_text(widths: dict[str, str]) -> str:
    return ", ".join(f"{g}={w}" for g, w in widths.items() if w != KEEP)


def _signed(n: int) -> str:
    return ("+" if n > 0 else "") + human(n) if n else "0"


def _against(value: float | None, teacher: float | None, metric: str) -> str:
    share = f" ({value / teacher:.0%} of the teacher)" if value is not None and teacher else ""
    return format_value(value, metric) + share


def _gap(gap: float | None) -> str:
    return "?" if gap is None else f"{gap:.2%}"


# ------------------------------------------------------------------------------------------------- the program

@dataclass(frozen=True)
class _Var:
    """One binary of the program: a site's option at a width combination (``widths``: (group, width) per touched
    group, empty where the site touches none), or a group's width (``site`` None)."""

    site: int | None
    index: int                                  # the option's index in its site, or the width's in its group
    widths: tuple[tuple[str, str], ...] = ()
    group: int | None = None


@dataclass
class _Program:
    """The variables and the rows every solve shares."""

    library: Library
    metric: str
    variables: list[_Var]
    prices: list[WidthPrice | GroupWidth]        # what each variable costs
    rows: list[tuple[list[float], float, float]]  # (coefficients, lower, upper): one choice per site and group, ...
    notes: list[str]

    def coefficients(self, metric: str) -> list[float]:
        """Each variable's change of ``metric`` (0 for a latency not measured: such options are not variables
        when the budget is a latency, and a cap never bounds latency)."""
        return [option_change(p, metric) or 0.0 for p in self.prices]

    def option(self, var: _Var) -> SiteOption:
        return self.library.sites[var.site].options[var.index]

    def losses(self) -> list[float]:
        """Each variable's predicted loss: its option's or its group width's ``kl``."""
        return [self.library.groups[v.group].widths[v.index].kl if v.site is None else self.option(v).kl
                for v in self.variables]


def _combinations(library: Library, touches: tuple[str, ...]) -> list[tuple[tuple[str, str], ...]]:
    """Every width combination of the groups ``touches`` names (all-keep first; one empty one without groups)."""
    groups = [library.group(name) for name in touches]
    return [tuple(zip(touches, specs, strict=True))
            for specs in itertools.product(*[[w.spec for w in g.widths] for g in groups])]


def _check_groups(library: Library) -> None:
    names = [g.name for g in library.groups]
    if len(set(names)) != len(names):
        raise UsageError("The library names a group site twice; rebuild it (its file is not one the builder wrote).")
    for g in library.groups:
        if not g.widths or not g.widths[0].is_keep:
            raise UsageError(f"Group {g.name} of the library has no 'keep' width first; rebuild the library.")
    for site in library.sites:
        unknown = [t for t in site.touches if t not in names]
        if unknown or len(set(site.touches)) != len(site.touches):
            raise UsageError(f"Site {site.name} of the library touches {', '.join(unknown) or 'a group twice'}, "
                             "which the library does not list as one group each; rebuild the library.")


def _program(library: Library, metric: str) -> _Program:
    """The structural rows: exactly one choice per site and per group, the marginal rows tying each site's width
    combination to its groups' widths, and at most one of a pair's pair-level options and the conv-level options
    on each of its convs that are sites (a pair is built as one block or conv by conv)."""
    index = {site.name: i for i, site in enumerate(library.sites)}
    if len(index) != len(library.sites):
        raise UsageError("The library names a site twice; rebuild it (its file is not one the builder wrote).")
    _check_groups(library)
    variables: list[_Var] = []
    prices: list[WidthPrice | GroupWidth] = []
    unpriced: list[str] = []
    missing = 0
    for i, site in enumerate(library.sites):
        if not site.options or not site.options[0].is_keep:
            raise UsageError(f"Site {site.name} of the library has no 'keep' option first; rebuild the library.")
        for j, opt in enumerate(site.options):
            if not opt.is_keep and not opt.rule:
                raise UsageError(f"Option {opt.spec} of site {site.name} has no policy rule; rebuild the library.")
            for combo in _combinations(library, site.touches):
                price = opt.priced(dict(combo))
                if price is None:
                    missing += 1
                    continue
                if metric == "latency" and price.latency_saved_ms is None:
                    if not combo or all(w == KEEP for _, w in combo):
                        unpriced.append(f"{site.name}={opt.spec}")
                    else:
                        missing += 1
                    continue
                variables.append(_Var(i, j, combo))
                prices.append(price)
    for g, group in enumerate(library.groups):
        for w, width in enumerate(group.widths):
            if metric == "latency" and width.latency_saved_ms is None:
                missing += 1
                continue
            variables.append(_Var(None, w, group=g))
            prices.append(width)
    n = len(variables)
    rows = []
    for i in range(len(library.sites)):
        rows.append(([1.0 if v.site == i else 0.0 for v in variables], 1.0, 1.0))
    for g in range(len(library.groups)):
        rows.append(([1.0 if v.site is None and v.group == g else 0.0 for v in variables], 1.0, 1.0))
    for i, site in enumerate(library.sites):
        for name in site.touches:
            g = next(k for k, group in enumerate(library.groups) if group.name == name)
            for w, width in enumerate(library.groups[g].widths):
                row = [0.0] * n
                for k, v in enumerate(variables):
                    if v.site == i and dict(v.widths)[name] == width.spec:
                        row[k] = 1.0
                    elif v.site is None and v.group == g and v.index == w:
                        row[k] = -1.0
                rows.append((row, 0.0, 0.0))
    for i, site in enumerate(library.sites):
        if site.kind != "pair":
            continue
        for conv in site.convs:
            j = index.get(conv)
            if j is None or j == i:
                continue
            row = [0.0] * n
            for k, v in enumerate(variables):
                if v.site in (i, j) and not library.sites[v.site].options[v.index].is_keep:
                    row[k] = 1.0
            rows.append((row, 0.0, 1.0))
    notes = []
    if unpriced:
        notes.append(f"{len(unpriced)} option(s) have no measured latency and cannot be priced for a latency "
                     f"budget, so they were left out: {', '.join(unpriced[:6])}{', ...' if len(unpriced) > 6 else ''}")
    if missing:
        notes.append(f"{missing} option or group width(s) at some width combination have no price "
                     f"{'(measured latency) ' if metric == 'latency' else ''}in the library, so they cannot be "
                     "chosen together")
    return _Program(library, metric, variables, prices, rows, notes)


@dataclass
class _Solved:
    x: list[int] | None       # 0/1 per variable; None when no solution was found
    status: str
    optimal: bool
    infeasible: bool
    objective: float | None
    mip_gap: float | None


def _solve(program: _Program, objective: list[float], bounds: list[tuple[list[float], float]]) -> _Solved:
    """Minimise ``objective`` over the program's rows and ``bounds`` (``coefficients · x <= limit`` each).

    A bound row is scaled to coefficients of order one (MACs run to 1e9, against the solver's absolute
    tolerances), and the rounded solution is checked against it exactly: where the tolerance let it over, the
    row is tightened by the excess and solved again."""
    try:  # scipy is the compress extra: the solver is needed only here
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError as exc:
        raise UsageError("The exact selection needs scipy (HiGHS through scipy.optimize.milp). Install it with "
                         "pip install 'cheapconv[compress]'.") from exc
    n = len(program.variables)
    # HiGHS stops within an absolute gap of 1e-6 (not settable through scipy), which per-site KLs of 1e-3 are
    # close to: scaling the objective to a largest coefficient of 1e4 makes that gap 1e-10 of it
    largest = max([abs(c) for c in objective] + [0.0])
    scaled = [c * 1e4 / largest for c in objective] if largest else list(objective)
    wanted = [limit for _, limit in bounds]
    limits = list(wanted)
    for _ in range(3):
        matrix = [row for row, _, _ in program.rows]
        lower = [lo for _, lo, _ in program.rows]
        upper = [hi for _, _, hi in program.rows]
        for (coeffs, _), limit in zip(bounds, limits, strict=True):
            scale = max([abs(c) for c in coeffs] + [abs(limit), 1e-12])
            matrix.append([c / scale for c in coeffs])
            lower.append(-float("inf"))
            upper.append(limit / scale)
        res = milp(scaled, integrality=[1] * n, bounds=Bounds(0, 1),
                   constraints=LinearConstraint(matrix, lower, upper),
                   options={"disp": False, "mip_rel_gap": 0.0, "time_limit": TIME_LIMIT_S})
        gap = None if getattr(res, "mip_gap", None) is None else float(res.mip_gap)
        if res.x is None:
            return _Solved(None, res.message, False, res.status == 2, None, gap)
        x = [round(float(v)) for v in res.x]
        over = [sum(c * xi for c, xi in zip(coeffs, x, strict=True)) - limit for (coeffs, _), limit
                in zip(bounds, wanted, strict=True)]
        if all(o <= 1e-12 * max(1.0, abs(limit)) for o, limit in zip(over, wanted, strict=True)):
            value = sum(c * xi for c, xi in zip(objective, x, strict=True))
            return _Solved(x, "optimal" if res.status == 0 else res.message, res.status == 0, False, value, gap)
        limits = [lim - max(o, 0.0) - 1e-9 * max(1.0, abs(lim)) for lim, o in zip(limits, over, strict=True)]
    return _Solved(None, "the solution kept exceeding a bound by more than the solver's tolerance", False, False,
                   None, None)


def _minimum(program: _Program, metric: str, caps: list[tuple[str, float]]) -> float | None:
    """The smallest predicted figure in ``metric`` any student obeys ``caps`` with (None: the caps exclude all)."""
    solved = _solve(program, program.coefficients(metric), _cap_rows(program, caps))
    if solved.x is None:
        return None
    return teacher_value(program.library, metric) + solved.objective


def _cap_rows(program: _Program, caps: list[tuple[str, float]]) -> list[tuple[list[float], float]]:
    return [(program.coefficients(m), limit - teacher_value(program.library, m)) for m, limit in caps]


# ------------------------------------------------------------------------------------------------- select

def select(library: Library, budget: str | float, *, metric: str = "latency", max_params: str | float | None = None,
           max_macs: str | float | None = None) -> Selection:
    """The student the library predicts most accurate within ``budget``: one option per site.

    ``budget`` is text (``"50%"``, ``"2ms"``, ``"300k"``: :func:`~cheapconv.compression.parse_budget`) or a number
    in ``metric``'s unit: ``latency`` (ms, predicted as the teacher's time less the options' time saved),
    ``params`` (paper convention) or ``macs``. ``max_params`` and ``max_macs`` cap the others the same way.
    The loss minimised is the summed per-site KL to the teacher (see the module docstring: it overestimates the
    assembled student's KL 2-3× but ranks students correctly, Spearman 0.94 in the issue's probe). Options with no
    measured latency are left out of a latency budget (said in ``notes``). A budget no student reaches is a
    :class:`UsageError` giving the reachable range.

    >>> sel = select(library, "50%")                           # doctest: +SKIP
    >>> print(sel); student = cheapconv.cheapen(teacher, sel.policy())   # doctest: +SKIP
    """
    check_metric(metric)
    if metric == "latency" and library.teacher_latency_ms is None:
        raise UsageError("This library has no measured teacher latency, so it cannot select under a latency "
                         "budget. Build it with a runtime to measure in, or use the params or macs metric.")
    if not library.sites:
        raise UsageError("The library has no sites: its teacher has no conv a candidate block can replace.")
    limit = parse_budget(budget, library, metric)
    caps = [(m, parse_budget(v, library, m)) for m, v in (("params", max_params), ("macs", max_macs))
            if v is not None]
    program = _program(library, metric)
    bounds = [(program.coefficients(metric), limit - teacher_value(library, metric)), *_cap_rows(program, caps)]
    solved = _solve(program, program.losses(), bounds)
    if solved.x is None:
        if solved.infeasible:
            raise _unreachable(program, limit, caps)
        raise UsageError(f"The solver found no selection ({solved.status}). Try again with a looser budget, or "
                         "report it with the library file.")
    return _selection(program, limit, solved)


def _selection(program: _Program, budget: float, solved: _Solved) -> Selection:
    lib = program.library
    options = {site.name: site.options[0] for site in lib.sites}
    widths = {group.name: group.widths[0].spec for group in lib.groups}
    picked = [price for price, chosen in zip(program.prices, solved.x, strict=True) if chosen]
    prices: dict[str, WidthPrice | GroupWidth] = {}
    for var, price, chosen in zip(program.variables, program.prices, solved.x, strict=True):
        if not chosen:
            continue
        if var.site is None:
            widths[lib.groups[var.group].name] = lib.groups[var.group].widths[var.index].spec
            prices[f"group {lib.groups[var.group].name}"] = price
        else:
            options[lib.sites[var.site].name] = program.option(var)
            prices[lib.sites[var.site].name] = price
    saved = [p.latency_saved_ms for p in picked]
    latency = (None if lib.teacher_latency_ms is None or None in saved
               else lib.teacher_latency_ms - sum(saved))
    loss = sum(c for c, chosen in zip(program.losses(), solved.x, strict=True) if chosen)
    notes = list(program.notes)
    if not solved.optimal:
        notes.append(f"the solver stopped before proving optimality ({solved.status}); the gap says how far off the "
                     "selection may be")
    return Selection(
        metric=program.metric, budget=budget, choices={n: o.spec for n, o in options.items()}, options=options,
        predicted_latency_ms=latency, predicted_params=lib.teacher_params + sum(p.params for p in picked),
        predicted_paper=lib.teacher_paper + sum(p.paper for p in picked),
        predicted_macs=lib.teacher_macs + sum(p.macs for p in picked),
        predicted_loss=loss, status=solved.status, optimal=solved.optimal,
        objective=solved.objective, mip_gap=solved.mip_gap, teacher_latency_ms=lib.teacher_latency_ms,
        teacher_paper=lib.teacher_paper, teacher_macs=lib.teacher_macs, notes=notes, widths=widths, prices=prices)


def _unreachable(program: _Program, budget: float, caps: list[tuple[str, float]]) -> UsageError:
    """The error for a budget (and caps) no student meets, with the range that is reachable."""
    metric, lib = program.metric, program.library
    low_word, high_word = ("fastest", "slowest") if metric == "latency" else ("smallest", "largest")
    fastest = _minimum(program, metric, caps)
    capped = " and ".join(f"a cap of {format_value(v, m)}" for m, v in caps)
    if fastest is None:
        lows = [f"the cap of {format_value(v, m)} is below the {format_value(_minimum(program, m, []), m)} of the "
                "smallest student" for m, v in caps if (_minimum(program, m, []) or 0) > v]
        why = "; ".join(lows) if lows else f"no student meets {capped} together"
        return UsageError(f"The caps are out of reach: {why}. Loosen them, or build the library with stronger "
                          "candidate blocks.")
    teacher = teacher_value(lib, metric)
    under = f" under {capped}" if caps else ""
    return BudgetUnreachableError(
        f"The budget {format_value(budget, metric)} ({budget / teacher:.0%} of the teacher) is out of reach: the "
        f"{low_word} student this library can build{under} is predicted at {format_value(fastest, metric)} "
        f"({fastest / teacher:.0%}), the {high_word} (the teacher) at {format_value(teacher, metric)}. Give a budget "
        "between them, or build the library with stronger candidate blocks.", (fastest, teacher))
