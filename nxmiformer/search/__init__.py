"""The search for heterogeneous per-layer compression plans: sensitivity profiling (cached in
Parquet), candidate generation under the ratio constraint, and the Ray Tune runner."""

from .heuristic import Candidate, generate_candidates, modules_frame, plan_ratio, solve_mckp
from .refine import GroupSpace
from .profile import DEFAULT_MENU, ProfileResult, parse_menu, profile_sensitivity
from .runner import SearchConfig, SearchResult, best_trial, check_feasible, run_search, select_candidates

__all__ = [
    "Candidate",
    "DEFAULT_MENU",
    "GroupSpace",
    "ProfileResult",
    "SearchConfig",
    "SearchResult",
    "best_trial",
    "check_feasible",
    "generate_candidates",
    "modules_frame",
    "parse_menu",
    "plan_ratio",
    "profile_sensitivity",
    "run_search",
    "select_candidates",
    "solve_mckp",
]
