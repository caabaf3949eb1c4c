"""Pictures: the Pareto front of a search, and a plan as a layers x components heatmap.

Figures are built with :class:`matplotlib.figure.Figure` and saved by the Agg renderer as PNG,
without pyplot, so nothing here changes a session's backend; pass ``ax`` to draw into a figure
of your own (e.g. ``plt.subplots()`` in a notebook).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, PercentFormatter

from ..compression.accounting import parse_targets
from ..errors import NxmiError
from .pareto import eligible, pareto_front, select
from .plans import plan_grid, plan_of, plan_table
from .results import LOWER_IS_BETTER, check_metric, check_results, metric_se, ratio_column

DPI = 100
# kind -> legend group; everything else is a heterogeneous plan ("optimal", "diverse", ...)
KIND_GROUPS = {"uniform": "uniform", "grid": "per-component grid"}
GROUP_STYLE = {
    "heterogeneous": {"marker": "o", "color": "C0"},
    "per-component grid": {"marker": "^", "color": "C2"},
    "uniform": {"marker": "s", "color": "C1"},
}
BITS_RANGE = (0.25, 32.0)  # fixed colour scale, so heatmaps of different plans compare


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def kind_group(kind: pd.Series) -> pd.Series:
    """Legend group of each trial kind: ``uniform``, ``per-component grid`` or ``heterogeneous``."""
    return kind.map(KIND_GROUPS).fillna("heterogeneous")


def _targets(target_ratio) -> tuple[float, ...]:
    """The ratios to mark (none for None): :func:`~nxmiformer.compression.accounting.parse_targets`."""
    return () if target_ratio is None else parse_targets(target_ratio)


def _chosen(results, targets, convention, metric, include_stopped, selected) -> dict:
    """Target -> the chosen trial: ``selected`` (one row, or a mapping target -> row), else what
    :func:`select` picks on ``metric``; targets nothing meets are left out."""
    if isinstance(selected, pd.Series):
        return {targets[0]: selected} if targets else {}
    given = dict(selected or {})
    chosen = {}
    for target in targets:
        if target in given:
            if given[target] is not None:
                chosen[target] = given[target]
            continue
        try:
            chosen[target] = select(results, target, convention, metric, include_stopped)
        except NxmiError:
            pass  # nothing meets the target: its line alone says so
    return chosen


def _mark_targets(ax: Axes, targets, chosen: dict, column: str, metric: str, convention: str) -> None:
    for k, target in enumerate(targets):
        ax.axvline(target, color="red", ls="--", lw=1, label=f"target{'s' if len(targets) > 1 else ''} ({convention})"
                   if k == 0 else None)
    for k, (target, best) in enumerate(chosen.items()):
        label = (f"selected: {best['trial_id']}" if len(targets) == 1 else
                 "chosen at each target" if k == 0 else None)
        ax.scatter([best[column]], [best[metric]], marker="*", s=260, color="gold", edgecolors="black", zorder=6,
                   label=label)


def plot_pareto(results: pd.DataFrame, target_ratio: "float | Sequence[float] | None" = None, convention: str = "paper",
                metric: str = "primary", include_stopped: bool = False, ax: Axes | None = None,
                path: str | os.PathLike | None = None, size: tuple[float, float] = (9.0, 4.5),
                dpi: int = DPI, selected: "pd.Series | Mapping[float, pd.Series] | None" = None) -> Figure:
    """Every trial in the (ratio, metric) plane with the Pareto front highlighted.

    Markers tell uniform baselines, per-component grid plans and heterogeneous plans apart;
    trials not eligible for the front (stopped early by ASHA, unless ``include_stopped``) are
    hollow; failed trials are red crosses on the bottom edge at their ratio (they have no metric).
    A validation metric (primary, retention) carries +-1 standard error
    (:func:`~nxmiformer.analysis.results.metric_se`: binomial over the trial's validation rows).
    With ``target_ratio`` (one ratio or several) each constraint is a vertical line and the trial chosen
    at each a star: ``selected`` (a row of ``results``, or a mapping target -> row, e.g. what
    :func:`select` returned on the search's objective), else the trial :func:`select` picks on ``metric``.
    Written as a PNG of ``size`` inches at ``dpi`` to ``path`` when given.
    """
    column = ratio_column(convention)
    check_metric(metric)
    check_results(results, ("status", "kind", "trial_id", column, metric))
    targets = _targets(target_ratio)
    front = pareto_front(results, convention, metric, include_stopped)
    pool = eligible(results, convention, metric, include_stopped)
    fig, ax = _axes(ax, size)

    shown = eligible(results, convention, metric, include_stopped=True)
    shown = shown.assign(group=kind_group(shown["kind"]), is_eligible=shown.index.isin(pool.index))
    se = metric_se(shown, metric)
    ok = se.notna()
    if ok.any():
        ax.errorbar(shown.loc[ok, column], shown.loc[ok, metric], yerr=se[ok], fmt="none", ecolor="0.55", lw=0.8,
                    capsize=2, zorder=2, label="+-1 SE (binomial, validation rows)")
    for group, style in GROUP_STYLE.items():
        for is_eligible, rows in shown[shown["group"] == group].groupby("is_eligible"):
            ax.scatter(rows[column], rows[metric], s=36, marker=style["marker"], zorder=3,
                       facecolors=style["color"] if is_eligible else "none", edgecolors=style["color"],
                       label=group if is_eligible else f"{group} (stopped early)")
    # the edge of the region the front dominates: flat to the next point's ratio, then down
    ax.step(front[column], front[metric], where="post", color="black", lw=1, zorder=2, label="Pareto front")
    ax.scatter(front[column], front[metric], s=110, facecolors="none", edgecolors="black", lw=1.3, zorder=4)

    failed = results[results["status"].eq("error") & np.isfinite(pd.to_numeric(results[column], errors="coerce"))]
    if len(failed):
        ax.scatter(failed[column], np.zeros(len(failed)), transform=ax.get_xaxis_transform(), marker="x",
                   color="red", s=40, zorder=5, clip_on=False, label=f"failed ({len(failed)})")
    _mark_targets(ax, targets, _chosen(results, targets, convention, metric, include_stopped, selected), column,
                  metric, convention)

    ax.set_xlabel(f"encoder compression ratio ({convention})")
    ax.set_ylabel("validation retention (of dense)" if metric == "retention" else
                  "validation primary metric" if metric == "primary" else metric)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    if metric == "retention":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(_title(results, len(shown), len(front)), fontsize=10)
    if path is not None:
        save_png(fig, path, dpi)
    return fig


def plot_front(results: pd.DataFrame, target_ratio: "float | Sequence[float] | None" = None, convention: str = "paper",
               metric: str = "primary", objective: str = "selection_loss_calibrated", include_stopped: bool = False,
               selected: "pd.Series | Mapping[float, pd.Series] | None" = None, path: str | os.PathLike | None = None,
               dpi: int = DPI) -> Figure:
    """Two panels side by side, the trials against their ratio: on the left the ``objective`` the
    search decided on (its selection rows), on the right the validation ``metric`` with its front and
    standard errors (:func:`plot_pareto`). The plan chosen at each target is a star on both: a choice
    made on the selection rows and read on the validation rows."""
    column = ratio_column(convention)
    check_metric(objective)
    check_results(results, ("status", "kind", "trial_id", column, objective))
    targets = _targets(target_ratio)
    fig = Figure(figsize=(14.0, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.0, 1.25])
    chosen = _chosen(results, targets, convention, objective, include_stopped, selected)
    shown = eligible(results, convention, objective, include_stopped)
    for group, style in GROUP_STYLE.items():
        rows = shown[kind_group(shown["kind"]) == group]
        left.scatter(rows[column], rows[objective], s=36, marker=style["marker"], color=style["color"], zorder=3)
    _mark_targets(left, targets, chosen, column, objective, convention)
    left.set_xlabel(f"encoder compression ratio ({convention})")
    left.set_ylabel(f"{objective} (selection rows; {'lower' if objective in LOWER_IS_BETTER else 'higher'} is better)")
    left.xaxis.set_major_formatter(PercentFormatter(1.0))
    left.grid(True, alpha=0.3)
    left.set_title("what the search decided on", fontsize=10)
    plot_pareto(results, targets or None, convention, metric, include_stopped, ax=right, selected=chosen)
    if path is not None:
        save_png(fig, path, dpi)
    return fig


def _title(results: pd.DataFrame, n_shown: int, n_front: int) -> str:
    tasks = ", ".join(sorted(results["task"].dropna().astype(str).unique())) if "task" in results else ""
    head = f"{tasks}: " if tasks else ""
    return f"{head}{len(results)} trials, {n_shown} with metrics, {n_front} on the Pareto front"


def plot_plan(plan, model=None, num_layers: int | None = None, ax: Axes | None = None,
              path: str | os.PathLike | None = None, title: str | None = None, dpi: int = DPI) -> Figure:
    """A plan as a heatmap: one row per layer, one column per component (query, key, value,
    attn_out, ffn_in, ffn_out; qkv for a fused QKV matrix), each cell labelled with its spec and
    coloured by bits per weight (``density * bits``: 2:4:int8 is 4, dense:int8 is 8, dense fp32 is
    32) on a fixed log scale.

    ``plan``: anything :func:`~nxmiformer.analysis.plans.plan_of` reads (a plan, a results row,
    a plan.json path); ``model`` and ``num_layers`` as in
    :func:`~nxmiformer.analysis.plans.plan_table`. Written as a PNG to ``path`` when given; its
    size grows with the number of layers and components.
    """
    plan = plan_of(plan)
    table = plan_table(plan, model=model, num_layers=num_layers)
    if table.empty:
        raise NxmiError("the plan names no module, so there is no layer to draw; pass the model or num_layers")
    bits, specs = plan_grid(table, "bits_per_weight"), plan_grid(table, "spec")
    n_layers, n_components = bits.shape
    fig, ax = _axes(ax, (1.35 * n_components + 1.9, 0.42 * n_layers + 1.5))

    image = ax.imshow(bits.to_numpy(dtype=float), cmap="viridis", norm=LogNorm(*BITS_RANGE), aspect="auto")
    colours = image.cmap(image.norm(bits.to_numpy(dtype=float)))
    light = (colours[..., :3] @ np.array([0.299, 0.587, 0.114])) > 0.5
    for (i, j), spec in np.ndenumerate(specs.fillna("").to_numpy()):
        ax.text(j, i, spec, ha="center", va="center", fontsize=7, color="black" if light[i, j] else "white")
    ax.set_xticks(range(n_components), list(bits.columns), fontsize=8)
    ax.set_yticks(range(n_layers), [f"layer {layer}" for layer in bits.index], fontsize=8)
    ax.tick_params(length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("bits per weight (density x bits)", fontsize=8)
    bar.ax.yaxis.set_major_locator(FixedLocator([0.5, 1, 2, 4, 8, 16, 32]))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.yaxis.set_minor_locator(FixedLocator([]))
    bar.ax.tick_params(labelsize=7)
    width_chars = int(fig.get_size_inches()[0] * 13)
    ax.set_title(title if title is not None else textwrap.fill(plan.summary(), width_chars), fontsize=9)
    if path is not None:
        save_png(fig, path, dpi)
    return fig
