"""Pictures: the Pareto front of a search, and a plan as a layers x components heatmap.

Figures are built with :class:`matplotlib.figure.Figure` and saved by the Agg renderer as PNG,
without pyplot, so nothing here changes a session's backend; pass ``ax`` to draw into a figure
of your own (e.g. ``plt.subplots()`` in a notebook).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, PercentFormatter

from ..errors import NxmiError
from .pareto import eligible, pareto_front, select
from .plans import plan_grid, plan_of, plan_table
from .results import check_metric, check_results, check_target_ratio, ratio_column

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


def plot_pareto(results: pd.DataFrame, target_ratio: float | None = None, convention: str = "paper",
                metric: str = "primary", include_stopped: bool = False, ax: Axes | None = None,
                path: str | os.PathLike | None = None, size: tuple[float, float] = (9.0, 4.5),
                dpi: int = DPI, selected: pd.Series | None = None) -> Figure:
    """Every trial in the (ratio, metric) plane with the Pareto front highlighted.

    Markers tell uniform baselines, per-component grid plans and heterogeneous plans apart;
    trials not eligible for the front (stopped early by ASHA, unless ``include_stopped``) are
    hollow; failed trials are red crosses on the bottom edge at their ratio (they have no metric).
    With ``target_ratio`` the constraint is a vertical line and the selected trial a star: ``selected``
    (a row of ``results``, e.g. what :func:`select` returned on the search's objective), else the
    trial :func:`select` picks on ``metric``.
    Written as a PNG of ``size`` inches at ``dpi`` to ``path`` when given.
    """
    column = ratio_column(convention)
    check_metric(metric)
    check_results(results, ("status", "kind", "trial_id", column, metric))
    if target_ratio is not None:
        check_target_ratio(target_ratio)
    front = pareto_front(results, convention, metric, include_stopped)
    pool = eligible(results, convention, metric, include_stopped)
    fig, ax = _axes(ax, size)

    shown = eligible(results, convention, metric, include_stopped=True)
    shown = shown.assign(group=kind_group(shown["kind"]), is_eligible=shown.index.isin(pool.index))
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
    if target_ratio is not None:
        ax.axvline(target_ratio, color="red", ls="--", lw=1, label=f"target {target_ratio:.2%} ({convention})")
        try:
            best = selected if selected is not None else select(results, target_ratio, convention, metric,
                                                                include_stopped)
            ax.scatter([best[column]], [best[metric]], marker="*", s=260, color="gold", edgecolors="black",
                       zorder=6, label=f"selected: {best['trial_id']}")
        except NxmiError:
            pass  # nothing meets the target: the line alone says so

    ax.set_xlabel(f"encoder compression ratio ({convention})")
    ax.set_ylabel("retention (of dense)" if metric == "retention" else "primary metric")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    if metric == "retention":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(_title(results, len(shown), len(front)), fontsize=10)
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
