"""The candidates the trials start from: an exact multiple-choice knapsack over the profile.

Given one cost per (module, option) from the sensitivity profile (by default the ``fisher``
proxy: the Fisher-weighted error of projecting that module alone with that option), we pick one
option per module so that the encoder meets a target compression ratio and the summed cost is
least. Summing costs assumes the modules' damages add up; that is only roughly true, which is why
the trials get a *set* of good plans, with the baselines a user would try by hand beside them:

======== ====================================================================================
kind     what it is
======== ====================================================================================
optimal  the exact optimum of the multiple-choice knapsack (one option per module, total bits
         within budget, least summed cost), solved as a small MILP with HiGHS
diverse  the next-best plans, each forced by no-good cuts to differ from every plan before it
         in at least a twelfth of the modules, so trials do not spend time on near-copies
grid     one option per component type (query, key, ... ffn_out) shared by all layers: the
         coarse, per-component plans a person would try by hand; all combinations are scored
uniform  the same option everywhere: the baselines the heterogeneous plans must beat
======== ====================================================================================

The budget is ``sum(module_bits) <= RatioTarget.budget_bits(modules)``, that is
``(1 - target) * sum(32 * numel)`` under the target's convention (``paper`` or ``storage``) plus
the target's one tolerance, so exact hits (uniform 2:4:int8 at 0.875 paper) count as meeting it
(docs/design.md, "Accounting" and "The knapsack").
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from nxmiformer.compression import (
    COMPONENTS,
    CONVENTIONS,
    CompressionPlan,
    LayerSpec,
    RatioTarget,
    compressible_modules,
    dense_bits,
    module_bits,
)
from nxmiformer.compression.accounting import check_convention
from nxmiformer.errors import NxmiError

__all__ = [
    "HETEROGENEOUS",
    "KINDS",
    "MODULE_COLUMNS",
    "SENSITIVITY_COLUMNS",
    "Candidate",
    "CandidateProblem",
    "check_reachable",
    "cost_matrix",
    "generate_candidates",
    "modules_frame",
    "plan_ratio",
    "solve_mckp",
]

KINDS = ("optimal", "diverse", "grid", "uniform")
HETEROGENEOUS = KINDS[:2]  # the kinds that give each module its own option
MODULE_COLUMNS = ("module", "layer", "component", "out_features", "in_features")
SENSITIVITY_COLUMNS = ("module", "option", "score")

# The grid is enumerated in chunks of at most this many combinations (11**6 fits in one).
_GRID_CHUNK = 1 << 21
# HiGHS stops at an absolute objective gap of 1e-6; scaling the scores' total range to this
# makes that gap negligible (1e-12 of the range) so "optimal" means optimal.
_SCORE_SCALE = 1e6
# A rounding-tolerance violation of the budget by HiGHS is excluded with a cut and re-solved;
# it is rare, so a few retries are plenty.
_MAX_RESOLVES = 20


@dataclass(frozen=True)
class Candidate:
    """One plan proposed to the trials.

    Attributes:
        plan: the plan; modules whose option is plain ``dense`` are left out (plans treat unnamed
            modules as dense). ``plan.meta`` repeats kind, kinds, score, ratios and target.
        kind: the first generator (in :data:`KINDS` order) that produced the plan.
        kinds: every generator that produced this same plan (e.g. ``("grid", "uniform")``).
        score: summed sensitivity of the plan (lower is better).
        ratio: compression ratio under ``convention``, the one the constraint was checked in.
        ratio_paper, ratio_storage: the ratio under each convention, always reported side by side.
        convention: the convention of ``ratio`` and of the constraint.
    """

    plan: CompressionPlan
    kind: str
    score: float
    ratio: float
    ratio_paper: float
    ratio_storage: float
    convention: str
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class CandidateProblem:
    """The validated inputs as arrays: row ``i`` is ``modules.iloc[i]``, column ``k`` is
    ``menu[k]``. ``costs[convention]`` holds bits and ``scores`` sensitivities; ``inf`` in either
    marks an option that a module cannot take (its input width is not a multiple of ``m``, or
    the profiler scored it ``inf``)."""

    modules: pd.DataFrame
    menu: tuple[LayerSpec, ...]
    scores: np.ndarray
    costs: dict
    dense_bits: float

    @property
    def labels(self) -> list[str]:
        return [str(spec) for spec in self.menu]

    def ratio(self, choice: np.ndarray, convention: str) -> float:
        """Compression ratio of a choice vector (one menu index per module)."""
        rows = np.arange(len(choice))
        return float(1.0 - self.costs[convention][rows, choice].sum() / self.dense_bits)

    def score(self, choice: np.ndarray) -> float:
        return float(self.scores[np.arange(len(choice)), choice].sum())

    def plan(self, choice: np.ndarray, meta: dict | None = None) -> CompressionPlan:
        specs = {
            name: self.menu[k] for name, k in zip(self.modules["module"], choice) if not self.menu[k].is_identity
        }
        return CompressionPlan(specs, meta=meta)


def modules_frame(model: nn.Module) -> pd.DataFrame:
    """The compressible linears of ``model`` as a table with :data:`MODULE_COLUMNS`, in block
    order: the ``modules`` input of :func:`generate_candidates`."""
    rows = [
        {
            "module": cm.name,
            "layer": cm.layer,
            "component": cm.component,
            "out_features": cm.out_features,
            "in_features": cm.in_features,
        }
        for cm in compressible_modules(model)
    ]
    return pd.DataFrame(rows, columns=list(MODULE_COLUMNS))


def cost_matrix(modules: pd.DataFrame, menu: Sequence["str | LayerSpec"], convention: str = "paper") -> np.ndarray:
    """Bits of every module (rows) under every menu option (columns), via ``module_bits``.

    ``inf`` where the option cannot be applied: the module's input width is not a multiple of
    the option's ``m``.
    """
    check_convention(convention)
    modules = _check_modules(modules)
    specs = [LayerSpec.parse(option) for option in menu]
    out = np.empty((len(modules), len(specs)))
    for i, (n_out, n_in) in enumerate(zip(modules["out_features"], modules["in_features"])):
        for k, spec in enumerate(specs):
            fits = int(n_in) % spec.m == 0
            out[i, k] = module_bits(spec, int(n_out), int(n_in), convention) if fits else np.inf
    return out


def plan_ratio(plan: CompressionPlan, modules: pd.DataFrame, convention: str = "paper") -> float:
    """Compression ratio of ``plan`` over the modules of the table (unnamed modules are dense).

    The table-based twin of ``compression_ratio(model, plan)``, for when no model is at hand.
    """
    check_convention(convention)
    modules = _check_modules(modules)
    unknown = sorted(set(plan) - set(modules["module"]))
    if unknown:
        raise NxmiError(f"plan names module(s) not in the modules table: {', '.join(unknown[:5])}")
    compressed = sum(module_bits(plan.spec_for(name), int(n_out), int(n_in), convention)
                     for name, n_out, n_in in zip(modules["module"], modules["out_features"], modules["in_features"]))
    return float(1.0 - compressed / dense_bits(modules))


def solve_mckp(
    costs: np.ndarray,
    scores: np.ndarray,
    budget: float,
    forbidden: Iterable[Sequence[int]] = (),
    min_hamming: int = 1,
) -> np.ndarray | None:
    """Exact multiple-choice knapsack: one option per row, total cost within budget, least score.

    Solved as a binary MILP with ``scipy.optimize.milp`` (HiGHS): ``x[i, j] = 1`` when row ``i``
    takes option ``j``; each row sums to 1; ``sum(costs * x) <= budget``; minimise
    ``sum(scores * x)``. Each vector ``p`` in ``forbidden`` is excluded with a no-good cut
    ``sum_i x[i, p[i]] <= N - min_hamming``: a solution must differ from ``p`` in at least
    ``min_hamming`` rows, which is how successive calls enumerate next-best, distinct plans.

    Args:
        costs, scores: ``[N, K]`` arrays; ``inf`` in either marks an option a row may not take.
        budget: the cost cap (any tolerance is the caller's, e.g. :meth:`RatioTarget.budget_bits`).
        forbidden: earlier choice vectors (length ``N``, option index per row) to exclude.
        min_hamming: how many rows must differ from each forbidden vector (>= 1).

    Returns:
        The chosen option index per row (``int`` array of length ``N``), or ``None`` when no
        choice meets the budget and the cuts.
    """
    costs = np.asarray(costs, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if costs.ndim != 2 or costs.shape != scores.shape or costs.size == 0:
        raise NxmiError(
            f"costs and scores must be non-empty [N, K] arrays of one shape, got {costs.shape} and {scores.shape}"
        )
    if np.isnan(costs).any() or np.isnan(scores).any() or (costs == -np.inf).any() or (scores == -np.inf).any():
        raise NxmiError("costs and scores must be finite or +inf (option not allowed); got NaN or -inf")
    if not isinstance(min_hamming, numbers.Integral) or isinstance(min_hamming, bool) or min_hamming < 1:
        raise NxmiError(f"min_hamming must be an integer >= 1, got {min_hamming!r}")
    n_rows, n_opts = costs.shape
    forbidden = [np.asarray(p, dtype=int) for p in forbidden]
    for p in forbidden:
        if p.shape != (n_rows,) or (p < 0).any() or (p >= n_opts).any():
            raise NxmiError(
                f"a forbidden choice must hold {n_rows} option indices in 0..{n_opts - 1}, got {p.tolist()}"
            )

    allowed = np.isfinite(costs) & np.isfinite(scores)
    if not allowed.any(axis=1).all():
        return None
    if np.where(allowed, costs, np.inf).min(axis=1).sum() > budget:
        return None
    if forbidden and min_hamming > n_rows:
        return None

    rows, cols = np.nonzero(allowed)
    n_vars = len(rows)
    # Conditioning: costs in bits run to millions; scores are shifted per row (which changes no
    # argmin, as each row takes exactly one option) and scaled so HiGHS's absolute gap is moot.
    cost_scale = max(np.abs(costs[allowed]).max(), abs(budget), np.finfo(float).tiny)
    row_min = np.where(allowed, scores, np.inf).min(axis=1)
    shifted = scores[rows, cols] - row_min[rows]
    spread = float(np.where(allowed, scores - row_min[:, None], 0.0).max(axis=1).sum())
    objective = shifted * (_SCORE_SCALE / spread if spread > 0 else 1.0)

    one_per_row = sparse.csr_array((np.ones(n_vars), (rows, np.arange(n_vars))), shape=(n_rows, n_vars))
    base = [
        LinearConstraint(one_per_row, 1, 1),
        LinearConstraint(costs[rows, cols][None, :] / cost_scale, -np.inf, budget / cost_scale),
    ]
    var_index = {(int(i), int(j)): v for v, (i, j) in enumerate(zip(rows, cols))}

    def same_as(p: np.ndarray) -> np.ndarray:
        """Coefficients counting the rows whose choice equals ``p``'s."""
        row = np.zeros(n_vars)
        for i, j in enumerate(p):
            v = var_index.get((i, int(j)))
            if v is not None:  # an option the row cannot take already differs from p there
                row[v] = 1.0
        return row[None, :]

    def cut(p: np.ndarray, hamming: int) -> LinearConstraint:
        return LinearConstraint(same_as(p), -np.inf, n_rows - hamming)

    cuts = [cut(p, min_hamming) for p in forbidden]
    for _ in range(_MAX_RESOLVES):
        res = milp(
            objective,
            integrality=np.ones(n_vars),
            bounds=Bounds(0, 1),
            constraints=base + cuts,
            options={"mip_rel_gap": 0.0},
        )
        if res.status == 2:
            return None
        if res.status != 0 or res.x is None:
            raise RuntimeError(f"HiGHS did not solve the knapsack: {res.message}")
        x = np.zeros((n_rows, n_opts))
        x[rows, cols] = res.x
        choice = np.argmax(x, axis=1)
        if costs[np.arange(n_rows), choice].sum() <= budget:
            return choice
        # HiGHS accepted a choice over budget within its own feasibility tolerance: exclude
        # exactly that vector (Hamming 1) and ask again, which keeps the answer exact.
        cuts.append(cut(choice, 1))
    raise RuntimeError("HiGHS kept returning choices outside the cost bounds; the cost scale is ill-conditioned")


def generate_candidates(
    sensitivity: pd.DataFrame,
    modules: pd.DataFrame,
    target_ratio: "RatioTarget | float",
    convention: str = "paper",
    n_best: int = 8,
    include_uniform: bool = True,
    include_grid: bool = True,
    grid_top: int = 4,
) -> list[Candidate]:
    """Plans that meet ``target_ratio`` under ``convention``, best summed sensitivity first per kind.

    Args:
        sensitivity: columns :data:`SENSITIVITY_COLUMNS`; the menu is its distinct options (spec
            strings, in order of first appearance). Every module needs a score for every option
            it can take; an option whose ``m`` does not divide a module's input width is
            simply not offered to that module.
        modules: columns :data:`MODULE_COLUMNS`, e.g. from :func:`modules_frame`.
        target_ratio: a :class:`RatioTarget`, or the least compression ratio in ``(0, 1)``
            under ``convention``: ``paper`` or ``storage`` (docs/design.md,
            "Accounting"); ``convention`` is ignored when a target is given.
        n_best: how many knapsack plans: the optimum plus up to ``n_best - 1`` diverse ones
            (fewer when the cuts leave no feasible plan).
        include_uniform, include_grid: add the uniform baselines / per-component grid plans.
        grid_top: how many of the best feasible grid plans to add.

    Returns:
        Candidates grouped by kind in the order ``optimal, diverse, grid, uniform``; within a
        group, best score first. A plan produced by several generators appears once, under the
        first kind, and lists them all in ``kinds``.

    Raises:
        NxmiError: bad target, convention or tables, missing (module, option) scores, or a target
            the menu cannot reach (the message names the highest reachable ratio).
    """
    target = RatioTarget.of(target_ratio, convention)
    convention = target.convention
    for name, value, least in (("n_best", n_best, 1), ("grid_top", grid_top, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
            raise NxmiError(f"{name} must be an integer >= {least}, got {value!r}")
    problem = build_problem(sensitivity, modules)
    n_modules = len(problem.modules)
    # about one layer's worth of a BERT-base's 72 modules (a more diverse arm, 12 of MiniLM's 36, was measured no
    # better: docs/decisions.md)
    min_hamming = max(1, n_modules // 12)

    costs = problem.costs[convention]
    budget = target.budget_bits(problem.dense_bits)
    check_reachable(problem.modules, problem.menu, target, problem.scores)

    found: dict[tuple[int, ...], list[str]] = {}

    def add(choice: np.ndarray, kind: str) -> None:
        found.setdefault(_key(choice), []).append(kind)

    optimum = solve_mckp(costs, problem.scores, budget)
    if optimum is None:  # check_reachable ruled this out
        raise RuntimeError("the knapsack is infeasible although the cheapest plan meets the budget")
    add(optimum, "optimal")
    previous = [optimum]
    for _ in range(n_best - 1):
        choice = solve_mckp(costs, problem.scores, budget, forbidden=previous, min_hamming=min_hamming)
        if choice is None:
            break
        add(choice, "diverse")
        previous.append(choice)
    if include_grid and grid_top > 0:
        for choice in _grid_choices(problem, costs, budget, grid_top):
            add(choice, "grid")
    if include_uniform:
        for choice in _uniform_choices(problem, costs, budget):
            add(choice, "uniform")

    candidates = []
    for key, kinds in found.items():
        choice = np.asarray(key)
        total = costs[np.arange(n_modules), choice].sum()
        if not total <= budget:
            raise AssertionError(f"{kinds[0]} candidate uses {total} bits, over the budget of {budget}")
        ratios = {conv: problem.ratio(choice, conv) for conv in CONVENTIONS}
        score = problem.score(choice)
        meta = {
            "kind": kinds[0],
            "kinds": list(kinds),
            "score": score,
            "convention": convention,
            "target_ratio": target.value,
            "ratio_paper": ratios["paper"],
            "ratio_storage": ratios["storage"],
        }
        candidates.append(
            Candidate(
                plan=problem.plan(choice, meta),
                kind=kinds[0],
                kinds=tuple(kinds),
                score=score,
                ratio=ratios[convention],
                ratio_paper=ratios["paper"],
                ratio_storage=ratios["storage"],
                convention=convention,
            )
        )
    candidates.sort(key=lambda c: (KINDS.index(c.kind), c.score))
    return candidates


def build_problem(sensitivity: pd.DataFrame, modules: pd.DataFrame) -> CandidateProblem:
    """Validate the two tables and lay them out as arrays (see :class:`CandidateProblem`)."""
    modules = _check_modules(modules)
    if not isinstance(sensitivity, pd.DataFrame):
        raise NxmiError(f"sensitivity must be a pandas DataFrame, got {type(sensitivity).__name__}")
    missing_cols = [c for c in SENSITIVITY_COLUMNS if c not in sensitivity.columns]
    if missing_cols:
        raise NxmiError(
            f"sensitivity table lacks column(s) {missing_cols}; expected columns {list(SENSITIVITY_COLUMNS)}"
        )
    if sensitivity.empty:
        raise NxmiError("sensitivity table is empty: it needs one score per (module, option)")

    # Canonical spec strings, so that "dense:fp32" and "dense" are one option.
    canonical = {}
    for raw in pd.unique(sensitivity["option"]):
        try:
            canonical[raw] = str(LayerSpec.parse(raw))
        except NxmiError as exc:
            raise NxmiError(f"sensitivity option {raw!r} is not a valid spec: {exc}") from None
    table = pd.DataFrame(
        {
            "module": sensitivity["module"].astype(str).to_numpy(),
            "option": sensitivity["option"].map(canonical).to_numpy(),
            "score": pd.to_numeric(sensitivity["score"], errors="coerce").to_numpy(dtype=float),
        }
    )
    labels = list(dict.fromkeys(table["option"]))
    menu = tuple(LayerSpec.parse(label) for label in labels)

    unknown = sorted(set(table["module"]) - set(modules["module"]))
    if unknown:
        raise NxmiError(
            f"sensitivity names {len(unknown)} module(s) not in the modules table: {_some(unknown)}"
        )
    dups = table[table.duplicated(["module", "option"], keep=False)]
    if not dups.empty:
        pairs = sorted(set(zip(dups["module"], dups["option"])))
        raise NxmiError(f"sensitivity has several scores for (module, option) pair(s): {_some(pairs)}")
    bad = table[np.isnan(table["score"]) | (table["score"] == -np.inf)]
    if not bad.empty:
        pairs = list(zip(bad["module"], bad["option"]))
        raise NxmiError(f"sensitivity scores must be numbers (+inf = not allowed); NaN or -inf at {_some(pairs)}")

    costs = {conv: cost_matrix(modules, menu, conv) for conv in CONVENTIONS}
    row = {name: i for i, name in enumerate(modules["module"])}
    col = {label: k for k, label in enumerate(labels)}
    scores = np.full((len(modules), len(menu)), np.nan)
    scores[table["module"].map(row).to_numpy(), table["option"].map(col).to_numpy()] = table["score"].to_numpy()
    fits = np.isfinite(costs["paper"])
    missing = np.argwhere(np.isnan(scores) & fits)
    if len(missing):
        pairs = [(modules["module"].iloc[i], labels[k]) for i, k in missing]
        raise NxmiError(
            f"sensitivity is missing {len(pairs)} (module, option) pair(s): {_some(pairs)}; every module needs "
            f"a score for every option of the menu ({', '.join(labels)})"
        )
    scores[~fits] = np.inf
    return CandidateProblem(modules=modules, menu=menu, scores=scores, costs=costs, dense_bits=dense_bits(modules))


def _key(choice: np.ndarray) -> tuple[int, ...]:
    """A choice vector as a hashable key (one option index per module)."""
    return tuple(int(k) for k in choice)


def _uniform_choices(problem: CandidateProblem, costs: np.ndarray, budget: float) -> list[np.ndarray]:
    n_modules = len(problem.modules)
    totals = costs.sum(axis=0)
    scores = problem.scores.sum(axis=0)
    ok = [k for k in range(len(problem.menu)) if np.isfinite(scores[k]) and totals[k] <= budget]
    ok.sort(key=lambda k: scores[k])
    return [np.full(n_modules, k) for k in ok]


def _grid_choices(problem: CandidateProblem, costs: np.ndarray, budget: float, top: int) -> list[np.ndarray]:
    """The ``top`` best feasible plans with one option per component type, found by scoring
    every combination (``K ** C`` of them) with numpy, in chunks of at most ``_GRID_CHUNK``."""
    components = problem.modules["component"].to_numpy()
    # COMPONENTS first, then any others (e.g. "other") so the enumeration order is stable
    types = [c for c in COMPONENTS if c in set(components)]
    types += sorted(set(components) - set(types))
    members = [components == t for t in types]
    # inf propagates: a type whose modules cannot all take an option cannot take it
    type_cost = np.stack([costs[m].sum(axis=0) for m in members])  # [C, K]
    type_score = np.stack([problem.scores[m].sum(axis=0) for m in members])
    n_types, n_opts = type_cost.shape

    n_trailing = n_types
    while n_trailing > 1 and n_opts**n_trailing > _GRID_CHUNK:
        n_trailing -= 1
    n_leading = n_types - n_trailing

    def outer_sum(rows: np.ndarray) -> np.ndarray:
        total = np.zeros(1)
        for r in rows:
            total = np.add.outer(total, r).ravel()
        return total

    trail_cost = outer_sum(type_cost[n_leading:])
    trail_score = outer_sum(type_score[n_leading:])
    best: list[tuple[float, tuple[int, ...]]] = []
    for lead in itertools.product(range(n_opts), repeat=n_leading):
        lead_cost = sum(type_cost[t, k] for t, k in enumerate(lead))
        lead_score = sum(type_score[t, k] for t, k in enumerate(lead))
        feasible = np.flatnonzero((lead_cost + trail_cost <= budget) & np.isfinite(trail_score))
        if not np.isfinite(lead_score) or not len(feasible):
            continue
        score = lead_score + trail_score[feasible]
        # stable sort: ties go to the earlier combination, so results are deterministic
        keep = feasible[np.argsort(score, kind="stable")[:top]]
        trailing = np.unravel_index(keep, (n_opts,) * n_trailing)
        for j, flat in enumerate(keep):
            best.append((lead_score + trail_score[flat], lead + tuple(int(t[j]) for t in trailing)))
        best = sorted(best, key=lambda item: item[0])[:top]

    type_of_module = np.array([types.index(c) for c in components])
    return [np.asarray(combo)[type_of_module] for _, combo in best]


def check_reachable(modules: pd.DataFrame, menu: Sequence["str | LayerSpec"], target: RatioTarget,
                    scores: np.ndarray | None = None) -> float:
    """The highest ratio the menu reaches on the modules (every module at its cheapest option it
    can take; with ``scores``, options scored ``inf`` are not offered); an error naming it and
    those options when it misses ``target``. The one feasibility check of a search."""
    modules = _check_modules(modules)
    labels = [str(LayerSpec.parse(option)) for option in menu]
    costs = cost_matrix(modules, menu, target.convention)
    allowed = np.isfinite(costs) & (np.isfinite(scores) if scores is not None else True)
    if not allowed.any(axis=1).all():
        stuck = modules["module"][~allowed.any(axis=1)].tolist()
        raise NxmiError(f"no option of the menu ({', '.join(labels)}) applies to module(s) {_some(stuck)}")
    cheapest_cost = np.where(allowed, costs, np.inf)
    cheapest = cheapest_cost.argmin(axis=1)
    options = ", ".join(labels[k] for k in dict.fromkeys(cheapest.tolist()))
    return target.check_reachable(1.0 - cheapest_cost.min(axis=1).sum() / dense_bits(modules),
                                  f"every module at its cheapest option: {options}")


def _check_modules(modules: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(modules, pd.DataFrame):
        raise NxmiError(f"modules must be a pandas DataFrame, got {type(modules).__name__}")
    missing = [c for c in MODULE_COLUMNS if c not in modules.columns]
    if missing:
        raise NxmiError(f"modules table lacks column(s) {missing}; expected columns {list(MODULE_COLUMNS)}")
    if modules.empty:
        raise NxmiError("modules table is empty: no compressible linear layers")
    dups = modules["module"][modules["module"].duplicated()].tolist()
    if dups:
        raise NxmiError(f"modules table lists module(s) more than once: {_some(dups)}")
    for col in ("out_features", "in_features"):
        values = pd.to_numeric(modules[col], errors="coerce")
        if values.isna().any() or (values <= 0).any() or (values != values.round()).any():
            raise NxmiError(f"modules column {col!r} must hold positive integers, got {modules[col].tolist()[:5]}...")
    out = modules.reset_index(drop=True).copy()
    out["module"] = out["module"].astype(str)
    out["out_features"] = out["out_features"].astype("int64")
    out["in_features"] = out["in_features"].astype("int64")
    return out


def _some(items: Sequence, limit: int = 5) -> str:
    """The first few items for an error message; (module, option) pairs print as such."""
    shown = ", ".join(f"({item[0]}, {item[1]})" if isinstance(item, tuple) else str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
