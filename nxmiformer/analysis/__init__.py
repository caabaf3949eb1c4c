"""Analysis of search results: the results table of one or several searches, the Pareto front of
compression ratio against accuracy, the selection under the ratio constraint, pictures (front and
plan heatmap) and the export of the chosen plan for full training.

Reads results tables, search.json files and plans only; it imports nothing of ``search`` or
``trials``.
"""

from .export import export_plan, train_command
from .pareto import RATIO_DECIMALS, eligible, format_trials, front_mask, pareto_front, select, trial_table
from .plans import module_position, plan_grid, plan_of, plan_table
from .plots import kind_group, plot_front, plot_pareto, plot_plan, save_png
from .results import (REQUIRED_COLUMNS, check_convention, check_metric, check_target_ratio, load_results, metric_se,
                      search_objective, search_prior_weight, search_targets)

__all__ = [
    "RATIO_DECIMALS",
    "REQUIRED_COLUMNS",
    "check_convention",
    "check_metric",
    "check_target_ratio",
    "eligible",
    "export_plan",
    "format_trials",
    "front_mask",
    "kind_group",
    "load_results",
    "metric_se",
    "module_position",
    "pareto_front",
    "plan_grid",
    "plan_of",
    "plan_table",
    "plot_front",
    "plot_pareto",
    "plot_plan",
    "save_png",
    "search_objective",
    "search_prior_weight",
    "search_targets",
    "select",
    "train_command",
    "trial_table",
]
