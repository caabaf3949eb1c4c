"""The search for heterogeneous per-layer compression plans: sensitivity profiling (cached in
Parquet), candidate generation under the ratio constraint, and the Ray Tune runner."""

from .heuristic import Candidate, check_reachable, generate_candidates, modules_frame, plan_ratio, solve_mckp
from .refine import GroupSpace
from .profile import DEFAULT_MENU, ProfileResult, parse_menu, profile_sensitivity
from .cluster import ray_session
from .runner import SearchConfig, SearchResult, check_feasible, run_search, select_candidates

__all__ = [
    "Candidate",
    "DEFAULT_MENU",
    "GroupSpace",
    "ProfileResult",
    "SearchConfig",
    "SearchResult",
    "ray_session",
    "check_feasible",
    "check_reachable",
    "generate_candidates",
    "modules_frame",
    "parse_menu",
    "plan_ratio",
    "profile_sensitivity",
    "run_search",
    "select_candidates",
    "solve_mckp",
]
