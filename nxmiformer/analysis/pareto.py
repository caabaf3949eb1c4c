"""The Pareto front of compression ratio against accuracy, and the selection under the constraint.

Both axes are maximised: the encoder compression ratio under one accounting convention
(``ratio_paper`` or ``ratio_storage``) and a metric (``primary``, the task's main metric, or
``retention``, primary / dense primary).

Eligible trials: ``status == "completed"`` with a finite ratio and a finite metric. Trials that
ASHA ``stopped`` early carry the metric of an intermediate evaluation (before the masked QAT
phase recovered), which understates them; they are left out unless ``include_stopped=True``.
Failed trials (``error``) are never eligible.

Dominance: trial ``q`` dominates ``p`` when ``q`` is at least as good on both axes and strictly
better on one. The front is every eligible trial that no eligible trial dominates; exact
duplicates of a front point do not dominate each other, so all of them are on the front. Ratios
are compared after rounding to :data:`RATIO_DECIMALS` decimals, so two plans of the same size
whose bit counts were summed in a different order tie instead of one dominating by float noise;
metrics are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..compression.accounting import RatioTarget
from ..errors import NxmiError
from .results import LOWER_IS_BETTER, check_metric, check_results, ratio_column

RATIO_DECIMALS = 9
DISPLAY_COLUMNS = ("trial_id", "kind", "ratio_paper", "ratio_storage", "primary", "retention", "plan_summary")


def eligible(results: pd.DataFrame, convention: str = "paper", metric: str = "primary",
             include_stopped: bool = False) -> pd.DataFrame:
    """The rows of ``results`` that may sit on the front or be selected (see the module docstring)."""
    column = ratio_column(convention)
    check_metric(metric)
    check_results(results, ("status", column, metric))
    statuses = ["completed", "stopped"] if include_stopped else ["completed"]
    values = results[[column, metric]].apply(pd.to_numeric, errors="coerce")
    finite = np.isfinite(values.to_numpy(dtype=float)).all(axis=1)
    return results[results["status"].isin(statuses).to_numpy() & finite]


def _check_comparable(frame: pd.DataFrame, metric: str) -> None:
    """Primary metrics of different tasks (accuracy vs MCC vs Pearson) are not one axis."""
    if metric == "primary" and "task" in frame.columns:
        tasks = sorted(frame["task"].dropna().astype(str).unique())
        if len(tasks) > 1:
            raise NxmiError(f"the results span tasks {', '.join(tasks)} whose primary metrics are not comparable; "
                            f"use metric='retention' (--metric retention) or load one task's searches")


def front_mask(ratio: pd.Series, metric: pd.Series) -> pd.Series:
    """True for the points that no other point dominates (both axes maximised, no NaN allowed).

    A point is on the front iff its metric is the highest among points of its (rounded) ratio
    and strictly higher than every metric at a strictly higher ratio.
    """
    x = ratio.round(RATIO_DECIMALS)
    best_at = metric.groupby(x).max().sort_index(ascending=False)
    best_above = best_at.cummax().shift(1, fill_value=-np.inf)  # best metric at strictly higher ratios
    return metric.eq(x.map(best_at)) & metric.gt(x.map(best_above))


def pareto_front(results: pd.DataFrame, convention: str = "paper", metric: str = "primary",
                 include_stopped: bool = False) -> pd.DataFrame:
    """The rows of ``results`` on the Pareto front of (``ratio_<convention>``, ``metric``).

    See the module docstring for eligibility, dominance and ties. The rows keep their index in
    ``results`` and come sorted by ratio ascending (so metric descending), then trial id; the
    frame is empty when no trial is eligible.

    Raises:
        NxmiError: an empty or malformed table, an unknown convention or metric, or
            ``metric="primary"`` over the searches of several tasks.
    """
    pool = eligible(results, convention, metric, include_stopped)
    _check_comparable(pool, metric)
    column = ratio_column(convention)
    front = pool[front_mask(pool[column].astype(float), _better(pool, metric))]
    return front.sort_values([column, metric, "trial_id"], ascending=[True, metric in LOWER_IS_BETTER, True],
                             kind="mergesort")


def _better(frame: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` as a float that is higher when better (a loss or KL negated)."""
    values = frame[metric].astype(float)
    return -values if metric in LOWER_IS_BETTER else values


def check_prior_weight(prior_weight: float) -> float:
    """``prior_weight`` as a float if it is a finite number >= 0, else an error."""
    if isinstance(prior_weight, bool) or not isinstance(prior_weight, (int, float)) \
            or not 0 <= prior_weight < np.inf:
        raise NxmiError(f"prior_weight must be a finite number >= 0 (0: the metric alone), got {prior_weight!r}")
    return float(prior_weight)


def _zscore(values: pd.Series) -> pd.Series:
    """(values - mean) / standard deviation (population); 0 where every value is the same."""
    spread = values.std(ddof=0)
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


def selection_score(pool: pd.DataFrame, metric: str, prior_weight: float) -> pd.Series:
    """What :func:`select` ranks ``pool`` by, higher is better: ``metric`` (negated for a loss or
    KL), or with ``prior_weight`` > 0, ``z(metric) - prior_weight * z(proxy_cost)``, both z-scores
    over ``pool``. A trial without a ``proxy_cost`` sits at the mean cost (z 0)."""
    better = _better(pool, metric)
    if not prior_weight:
        return better
    if "proxy_cost" not in pool.columns or not pool["proxy_cost"].notna().any():
        raise NxmiError(f"prior_weight {prior_weight:g} needs the plans' proxy_cost, which these results lack "
                        f"(trial records before version 6); use prior_weight 0")
    return _zscore(better) - prior_weight * _zscore(pool["proxy_cost"].astype(float)).fillna(0.0)


def select(results: pd.DataFrame, target_ratio: "RatioTarget | float", convention: str = "paper",
           metric: str = "primary", include_stopped: bool = False, prior_weight: float = 0.0) -> pd.Series:
    """The best eligible trial whose ``ratio_<convention>`` meets the target (a
    :class:`~nxmiformer.compression.RatioTarget`, or a ratio under ``convention``). The one
    selection rule: ``nxmi search`` reports and ``nxmi export`` writes the trial it returns.

    Best means: the highest ``metric`` (the lowest for a loss or KL); ties go to the higher ratio, then to the first by
    ``search`` (when present) and ``trial_id``. The chosen trial is then always on the Pareto front.

    With ``prior_weight`` > 0 the trials are ranked instead by ``z(metric) - prior_weight *
    z(proxy_cost)`` (:func:`selection_score`; z-scores over the eligible trials meeting the target,
    lower cost better):
    a plan the search's proxy rates cheaper may win over one a little better on the metric, so the
    choice may then sit off the front of (ratio, metric). Same ties.

    Raises:
        NxmiError: an empty table, an unknown convention or metric, a ratio outside (0, 1), no
            eligible trial, or no eligible trial meeting the target (the message names the highest
            ratio reached); a negative ``prior_weight``, or one > 0 on results without ``proxy_cost``.
    """
    target = RatioTarget.of(target_ratio, convention)
    convention, column = target.convention, target.column
    check_metric(metric)
    prior_weight = check_prior_weight(prior_weight)
    check_results(results, ("status", "trial_id", column, metric))
    pool = eligible(results, convention, metric, include_stopped)
    _check_comparable(pool, metric)
    if pool.empty:
        counts = ", ".join(f"{n} {status}" for status, n in results["status"].value_counts().items())
        allowed = "completed or stopped" if include_stopped else "completed"
        raise NxmiError(f"no {allowed} trial with a finite {column} and {metric} in the results ({counts})")
    meets = pool[target.is_met(pool[column])]
    if meets.empty:
        raise NxmiError(f"no eligible trial meets the target ratio {target}: "
                        f"the highest reached is {pool[column].max():.4f}")
    # the z-scores over the trials that compete (those meeting the target), so that the trials of a
    # search's other targets do not change the choice at this one
    meets = meets.assign(_score=selection_score(meets, metric, prior_weight))
    keys = ["_score", column] + [c for c in ("search", "trial_id") if c in meets.columns]
    ranked = meets.sort_values(keys, ascending=[False, False] + [True] * (len(keys) - 2), kind="mergesort")
    return ranked.iloc[0].drop("_score")


def trial_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads (``search`` first when the rows come from several searches)."""
    columns = [c for c in DISPLAY_COLUMNS if c in frame.columns]
    if "search" in frame.columns and frame["search"].nunique() > 1:
        columns = ["search", *columns]
    return frame[columns]


def format_trials(frame: pd.DataFrame, max_colwidth: int = 70) -> str:
    """:func:`trial_table` as text: ratios as percentages, metrics to four decimals."""
    table = trial_table(frame)
    formatters = {c: "{:.4%}".format for c in ("ratio_paper", "ratio_storage", "retention") if c in table}
    formatters |= {"primary": "{:.4f}".format} if "primary" in table else {}
    with pd.option_context("display.width", 250, "display.max_colwidth", max_colwidth):
        return table.to_string(index=False, formatters=formatters, na_rep="-")
