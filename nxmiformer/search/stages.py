"""The search, stage by stage: warm start -> profile (cached) -> knapsack candidates -> short
trials on Ray Tune (:mod:`.tune`) -> optionally an Optuna stage (:mod:`.refine`) -> results table
in Parquet -> the choice and its report (:mod:`.report`).

Everything lives under one storage path (``SearchConfig.out``): the Tune experiments (so an
interrupted search resumes with ``resume=True`` and loses no finished trial), ``search.json``
(the configuration, written once the warm start and data have loaded), ``candidates.parquet``
and ``results.parquet`` (one :class:`~nxmiformer.records.TrialRecord` per trial, as reported by
the trainable). The best plan is the one :func:`nxmiformer.analysis.select` picks, the same as
``nxmi export``'s. Ray starts embedded unless ``address`` (or ``RAY_ADDRESS``) names a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..compression import RatioTarget
from ..errors import NxmiError
from ..outputs import atomic_file, write_json
from ..records import write_records
from .cluster import cluster_cpus, ray_session
from .config import STATE_VERSION, SearchConfig, update_state
from .profile import PROXIES
from .report import (
    best_trial, check_choice, check_reference, plan_costs, proxy_correlation, say, say_failures, selection_labels,
)
from .tune import Wrapper, check_cluster_gpus, fit_tuner, make_tuner, results_table

EXPERIMENT = "trials"
REFINE_EXPERIMENT = "refine"
SPACE_FILE = "refine_space.json"
STAGE1_FILE = "stage1.parquet"


@dataclass
class SearchResult:
    """What a search returns: every trial's record (``results``, as in ``results.parquet``), the
    chosen trial per target (``choices``; None where no completed trial meets it), ``best`` the
    choice at the lowest target (the only one of a one-target search), and where it lives."""

    results: pd.DataFrame
    best: pd.Series | None
    out: Path
    wall_time: float
    choices: dict = dataclasses.field(default_factory=dict)  # target ratio -> chosen trial (or None), lowest first

    @property
    def plan(self):
        """The chosen trial's :class:`~nxmiformer.compression.CompressionPlan` (None without one)."""
        from ..compression import CompressionPlan

        return None if self.best is None else CompressionPlan.from_json(self.best["plan_json"])


def select_candidates(candidates: list, budget: int) -> list:
    """Up to ``budget`` candidates: the heterogeneous ones (optimal first) get half the budget,
    the best per-component grid and uniform plans share the rest, so the baselines a user will
    compare against are always trained alongside."""
    from .knapsack import HETEROGENEOUS

    pools = {
        "het": [c for c in candidates if c.kind in HETEROGENEOUS],
        "grid": [c for c in candidates if c.kind == "grid"],
        "uniform": [c for c in candidates if c.kind == "uniform"],
    }
    order = ["het", "grid", "uniform", "het"]
    chosen: list = []
    while len(chosen) < budget and any(pools.values()):
        for pool in order:
            if pools[pool] and len(chosen) < budget:
                chosen.append(pools[pool].pop(0))
    return chosen


def stage1_candidates(config: SearchConfig, sensitivity: pd.DataFrame, modules: pd.DataFrame,
                      target=None) -> list:
    """The first stage's ``config.trials`` plans for ``target`` (default: ``config.target``):
    candidates of ``config.kinds`` on the target's own menu, shared out by :func:`select_candidates`."""
    from .knapsack import generate_candidates

    target = target or config.target
    menu = sensitivity[sensitivity["option"].isin(config.options_for(target))]
    candidates = generate_candidates(menu, modules, target, n_best=max(2, config.trials),
                                     grid_top=max(4, config.trials))  # enough of each kind for kinds=
    return select_candidates(_of_kinds(candidates, config.kinds), config.trials)


def target_candidates(config: SearchConfig, sensitivity: pd.DataFrame, modules: pd.DataFrame) -> pd.DataFrame:
    """Every target's candidates (:func:`stage1_candidates`) as one table with a ``target_ratio``
    column. A plan two targets both propose is trained once, for the higher of them."""
    rows = {}
    for target in config.targets:
        for c in stage1_candidates(config, sensitivity, modules, target):
            plan_json = c.plan.to_json(indent=None)
            rows.pop(plan_json, None)  # re-inserted last: the higher target takes it
            rows[plan_json] = {"target_ratio": target.value, "kind": c.kind, "score": c.score,
                               "ratio_paper": c.ratio_paper, "ratio_storage": c.ratio_storage,
                               "plan_json": plan_json, "plan_summary": c.plan.summary()}
    frame = pd.DataFrame(list(rows.values()))
    return frame.sort_values("target_ratio", kind="mergesort", ignore_index=True)


def _of_kinds(candidates: list, kinds: tuple[str, ...]) -> list:
    """The candidates that any of ``kinds`` produced, each labelled with the first such kind (a
    uniform plan is also a grid plan: with ``kinds=("uniform",)`` it counts as uniform)."""
    chosen = []
    for c in candidates:
        mine = [k for k in (c.kinds or (c.kind,)) if k in kinds]
        if mine:
            chosen.append(c if c.kind == mine[0] else dataclasses.replace(c, kind=mine[0]))
    return chosen


def run_search(config: SearchConfig, resume: bool = False, progress: bool = True,
               wrap_trainable: Wrapper | None = None, verbose: bool = False) -> SearchResult:
    """Run (or with ``resume=True`` continue) a search; see the module docstring.

    ``wrap_trainable`` (optional) wraps each stage's Tune trainable, e.g. to inject faults (a
    resumed search needs the same wrapper). ``verbose`` also shows Ray's and Ray Tune's own console
    output (:func:`.tune.tune_console`). Nothing is written to ``config.out`` until the warm
    start, Ray and the sensitivity profile are up: a search that fails before has no state."""
    start = time.perf_counter()
    out = Path(config.out).resolve()
    state_file = out / "search.json"
    if resume:
        config = SearchConfig.load(out, address=config.address, fail_fast=config.fail_fast)
    else:
        check_feasible(config)
        if out.exists() and any(out.iterdir()):
            raise NxmiError(f"output directory {out} already exists and is not empty; use --resume to continue it or choose another --out")
    wrap = wrap_trainable or (lambda trainable: trainable)

    from ..models import skeleton
    from ..trials.dense import finetune_dense

    data = config.data_config()
    say(progress, f"[1/4] dense warm start: {config.model} on {config.task}")
    dense = finetune_dense(data, config.dense_config(), config.cache_root(), progress=progress)
    say(progress, f"      dense {dense.metrics.get('primary'):.4f} ({'cached' if dense.cached else f'{dense.wall_time:.0f}s'}) at {dense.path}")

    with ray_session(config.address, verbose=verbose):
        from ray import tune

        from ..trials.trainable import trial_trainable
        from .knapsack import modules_frame
        from .profile import profile_sensitivity

        check_cluster_gpus(config)  # a trial that cannot be placed would wait forever
        oneshot = config.oneshot_profile or config.proxy == "oneshot"
        say(progress, f"[2/4] sensitivity profile: {len(config.options)} options, {config.calib_size} calibration rows"
                       f"{'' if oneshot else ' (fisher only: no forward per option)'}")
        workers = config.profile_workers if config.profile_workers is not None else cluster_cpus()
        profile = profile_sensitivity(dense.path, data, config.options, config.calib_size, cache_dir=config.cache_root(),
                                      workers=workers, progress=progress, device=config.device,
                                      gpus_per_task=config.gpus_per_trial,
                                      oneshot=oneshot)
        say(progress, f"      {profile.computed} computed, {profile.cached} from cache ({profile.wall_time:.1f}s)")
        table = profile.table
        sensitivity = table.assign(score=table[PROXIES[config.proxy]])
        if not resume:  # the inputs have loaded: from here on the search has state to resume
            out.mkdir(parents=True, exist_ok=True)
            write_json(state_file, config.to_dict() | {"state_version": STATE_VERSION})
        record_provenance(state_file, dense)

        modules = modules_frame(skeleton(dense.path))
        candidates_file = out / "candidates.parquet"
        if resume and candidates_file.is_file():
            cand_frame = pd.read_parquet(candidates_file)
            if "target_ratio" not in cand_frame.columns:  # written before searches of several targets
                cand_frame = cand_frame.assign(target_ratio=config.target.value)
        else:
            cand_frame = target_candidates(config, sensitivity, modules)
            with atomic_file(candidates_file) as tmp:
                cand_frame.to_parquet(tmp, index=False)
        for value, rows in cand_frame.groupby("target_ratio", sort=True):
            say(progress, f"[3/4] {len(rows)} candidates for target {RatioTarget(value, config.convention)}: "
                           + ", ".join(f"{k} x{v}" for k, v in rows["kind"].value_counts().items()))

        candidates = [{"plan": json.loads(row["plan_json"]), "kind": row["kind"], "heuristic_score": float(row["score"]),
                       "ratio_paper": float(row["ratio_paper"]), "ratio_storage": float(row["ratio_storage"]),
                       "target_ratio": float(row["target_ratio"])}
                      for _, row in cand_frame.iterrows()]
        shared = {"trial": config.trial_config().to_dict(), "dense_path": str(dense.path)}
        restore = resume and tune.Tuner.can_restore(str(out / EXPERIMENT))
        say(progress, f"[4/4] {'resuming' if restore else 'running'} {len(candidates)} short trials "
                       f"({config.steps} steps each) on Ray Tune" + (" (stage 1 of 2)" if config.refine_trials else ""))
        tuner = make_tuner(config, wrap(trial_trainable), shared | {"candidate": tune.grid_search(candidates)}, out,
                            EXPERIMENT, len(candidates), progress, restore)
        results = results_table(fit_tuner(tuner, config, verbose), config.targets, dense.primary, modules,
                                lambda trial: trial.get("candidate"))
        if config.refine_trials:
            write_records(results, out / STAGE1_FILE)  # also what stage 2 reuses for repeated plans
            refined = _refine(config, results, sensitivity, modules, shared, out, resume, dense.primary, progress, wrap,
                              verbose)
            results = pd.concat([results, refined], ignore_index=True)
        results = results.assign(proxy_cost=plan_costs(results["plan_json"], sensitivity))
        write_records(results, out / "results.parquet")
        correlation = proxy_correlation(results, table, config.objective)
        update_state(state_file, proxy_spearman=correlation)
        shown = [f"{k} {v:+.2f}" for k, v in correlation.items() if k in PROXIES and not math.isnan(v)]
        say(progress, "      proxy rank correlation with the trials' " + config.objective + ": "
             + (", ".join(shown) or "none (it needs 3 completed trials that differ)"))

    say_failures(results, progress)
    check_reference(dense, results, config, state_file, progress)
    choices = {target.value: best_trial(results, config, target) for target in config.targets}
    update_state(state_file, choices=[{"target_ratio": value, "trial_id": None if row is None else str(row["trial_id"])}
                                      for value, row in choices.items()])
    labels = selection_labels(config, dense.path) if any(row is not None for row in choices.values()) else None
    for target in config.targets:
        check_choice(choices[target.value], results, config, dense.path, state_file, progress, target, labels)
    return SearchResult(results, choices[config.target.value], out, time.perf_counter() - start, choices)


def _refine(config: SearchConfig, stage1: pd.DataFrame, sensitivity: pd.DataFrame, modules: pd.DataFrame,
            shared: dict, out: Path, resume: bool, dense_primary: float, progress: bool, wrap: Wrapper,
            verbose: bool) -> pd.DataFrame:
    """Stage 2 (``refine_trials`` > 0): Optuna over per-group choices, seeded with stage 1."""
    from ray import tune

    from .knapsack import build_problem
    from .refine import GroupSpace, make_searcher, refine_trainable, seed_points

    space = GroupSpace.build(build_problem(sensitivity, modules), config.target,
                             layer_groups=config.refine_layer_groups)
    space_file = space.save(out / SPACE_FILE)
    told, enqueued = seed_points(space, stage1, objective=config.objective, mode=config.mode)
    restore = resume and tune.Tuner.can_restore(str(out / REFINE_EXPERIMENT))
    say(progress, f"      stage 2: {'resuming ' if restore else ''}{config.refine_trials} Optuna "
                   f"{'multi-objective (objective and ratio) ' if len(config.targets) > 1 else ''}trials over "
                   f"{len(space.groups)} groups ({len(told)} stage-1 results told, {len(enqueued)} seeds enqueued)")
    front = len(config.targets) > 1  # ratio as a second objective: plans between and beyond the targets
    searcher = None if restore else make_searcher(space, told, enqueued, seed=config.seed, objective=config.objective,
                                                  mode=config.mode, front=front)
    # ASHA compares the trials of one target; the Optuna stage's plans serve no one target when there are several
    tuner = make_tuner(config, wrap(refine_trainable), shared | {"space": str(space_file), "known": str(out / STAGE1_FILE)},
                        out, REFINE_EXPERIMENT,
                        config.refine_trials, progress, restore, search_alg=searcher, asha=not front)
    return results_table(fit_tuner(tuner, config, verbose), config.targets, dense_primary, modules, space.candidate)


def check_feasible(config: SearchConfig) -> float:
    """Raise unless each target's menu can reach it on this architecture; return the highest ratio
    (the least over the targets' menus).

    Runs before anything is trained or written, on the architecture alone."""
    from ..models import skeleton
    from .knapsack import check_reachable, modules_frame
    from .profile import check_options_fit

    model = skeleton(config.model)
    check_options_fit(model, config.options)
    modules = modules_frame(model)
    return min(check_reachable(modules, config.options_for(target), target) for target in config.targets)


def record_provenance(state_file: Path, dense) -> None:
    """Add the warm start's identity to ``search.json`` (``nxmi export`` copies it into plans)."""
    update_state(state_file, provenance={"dense_path": str(dense.path), "dense_key": dense.key,
                                          "dense_primary": dense.primary, "model_fingerprint": dense.model_fingerprint})
