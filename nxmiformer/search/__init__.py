"""The search for heterogeneous per-layer compression plans: sensitivity profiling (cached in
Parquet), knapsack candidates under the ratio constraint, short trials on Ray Tune, and the
report of the choice.

``config`` (what a search is asked), ``stages`` (the sequence), ``tune`` (the Ray Tune plumbing),
``report`` (what it says after the trials), ``knapsack`` (the candidates), ``profile`` (the
sensitivities), ``refine`` (the optional Optuna stage), ``cluster`` (the Ray session).
"""

from .cluster import ray_session
from .config import PRESETS, SearchConfig
from .knapsack import Candidate, check_reachable, generate_candidates, modules_frame, plan_ratio, solve_mckp
from .profile import MENUS, PROXIES, ProfileResult, menu_for, parse_menu, profile_sensitivity
from .refine import GroupSpace
from .report import best_trial, choice_margin, plan_costs, proxy_correlation, selection_labels
from .stages import SearchResult, check_feasible, run_search, select_candidates
from .tune import fit_tuner, make_tuner, results_table, trial_resources

__all__ = [
    "MENUS",
    "PRESETS",
    "PROXIES",
    "Candidate",
    "GroupSpace",
    "ProfileResult",
    "SearchConfig",
    "SearchResult",
    "best_trial",
    "check_feasible",
    "check_reachable",
    "choice_margin",
    "fit_tuner",
    "generate_candidates",
    "make_tuner",
    "menu_for",
    "modules_frame",
    "parse_menu",
    "plan_costs",
    "plan_ratio",
    "profile_sensitivity",
    "proxy_correlation",
    "ray_session",
    "results_table",
    "run_search",
    "select_candidates",
    "selection_labels",
    "solve_mckp",
    "trial_resources",
]
