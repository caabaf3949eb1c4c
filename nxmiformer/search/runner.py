"""The search: warm start -> profile (cached) -> candidates -> parallel short trials on Ray Tune
-> results table in Parquet -> the best plan that meets the constraint.

Everything lives under one storage path (``SearchConfig.out``): the Tune experiment (so an
interrupted search resumes with ``resume=True`` and loses no finished trial), ``search.json``
(the configuration), ``candidates.parquet`` and ``results.parquet``. Ray starts embedded unless
``address`` (or ``RAY_ADDRESS``) names a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..compression import CONVENTIONS, CompressionPlan
from ..errors import NxmiError
from ..trials.config import DataConfig, DenseConfig, TrialConfig, default_cache_dir
from ..trials.data import get_task
from .profile import DEFAULT_MENU, parse_menu

EXPERIMENT = "trials"
REFINE_EXPERIMENT = "refine"
RESULT_COLUMNS = [
    "trial_id", "status", "error", "kind", "heuristic_score", "plan_json", "plan_summary", "ratio_paper",
    "ratio_storage", "meets_target", "primary", "retention", "dense_primary", "metrics_json", "steps",
    "wall_time", "node_id", "admm_distance", "admm_mask_agreement",
]


@dataclass(frozen=True)
class SearchConfig:
    """A search for plans with encoder compression >= ``target_ratio`` (under ``convention``)."""

    out: str
    task: str = "sst2"
    target_ratio: float = 0.875
    convention: str = "paper"
    model: str = "default"
    data_dir: str | None = None
    max_length: int = 64
    train_size: int | None = 4000
    eval_size: int | None = 500
    seed: int = 0
    trials: int = field(default=8, metadata={"help": "candidate plans to train as short trials"})
    steps: int = field(default=200, metadata={"help": "optimizer steps per short trial"})
    batch_size: int = 32
    lr: float = 1e-4
    kd_alpha: float = 0.0
    concurrency: int | None = field(default=None, metadata={"help": "concurrent trials (default: CPUs / cpus_per_trial)"})
    cpus_per_trial: int = 1
    options: tuple[str, ...] = DEFAULT_MENU
    calib_size: int = 256
    dense_epochs: float = 1.0
    asha: bool = True
    kinds: tuple[str, ...] = field(default=("optimal", "diverse", "grid", "uniform"),
                                   metadata={"help": "candidate kinds to train (see search.heuristic.KINDS)"})
    refine_trials: int = field(default=0, metadata={"help": "stage 2: Optuna-sampled per-group plans after the candidates"})
    refine_fill: bool = field(default=False, metadata={"help": "stage 2: fill unused budget by the additive model"})
    refine_layer_groups: int = field(default=2, metadata={"help": "stage 2: layer blocks per component type (groups)"})
    profile_workers: int | None = field(default=None, metadata={"help": "Ray tasks for profiling (None: cluster CPUs; 0: in-process)"})
    cache_dir: str | None = None
    address: str | None = None
    inject_failure: dict | None = field(default=None, metadata={"help": "testing: fault injection passed to the trainable (see trials.trainable)"})

    def __post_init__(self):
        get_task(self.task)
        if not (isinstance(self.target_ratio, (int, float)) and 0 < self.target_ratio < 1):
            raise NxmiError(f"target ratio must be in (0, 1), got {self.target_ratio!r}")
        if self.convention not in CONVENTIONS:
            raise NxmiError(f"unknown ratio convention {self.convention!r}; allowed: {', '.join(CONVENTIONS)}")
        for name in ("trials", "cpus_per_trial", "batch_size", "calib_size", "refine_layer_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NxmiError(f"{name} must be a positive integer, got {value!r}")
        if self.concurrency is not None and (isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1):
            raise NxmiError(f"concurrency must be a positive integer, got {self.concurrency!r}")
        for name in ("steps", "refine_trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise NxmiError(f"{name} must be a non-negative integer, got {value!r}")
        object.__setattr__(self, "options", parse_menu(self.options))
        from .heuristic import KINDS

        raw = self.kinds.split(",") if isinstance(self.kinds, str) else self.kinds
        kinds = tuple(dict.fromkeys(str(k).strip() for k in raw if str(k).strip()))
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise NxmiError(f"unknown candidate kind(s) {bad or list(kinds)}; allowed: {', '.join(KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        if self.model != "default" and Path(self.model).expanduser().exists():
            object.__setattr__(self, "model", str(Path(self.model).expanduser().resolve()))
        # absolute, so trials on other workers, --resume from elsewhere and exported commands work;
        # data_config() and trial_config() also validate their fields
        object.__setattr__(self, "data_dir", self.data_config().data_dir)
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", str(Path(self.cache_dir).expanduser().resolve()))
        self.trial_config()

    def data_config(self) -> DataConfig:
        return DataConfig(task=self.task, data_dir=self.data_dir, max_length=self.max_length, train_size=self.train_size,
                          eval_size=self.eval_size, seed=self.seed, holdout_size=self.calib_size)

    def dense_config(self) -> DenseConfig:
        return DenseConfig(model=self.model, epochs=self.dense_epochs)

    def trial_config(self) -> TrialConfig:
        return TrialConfig(data=self.data_config(), dense=self.dense_config(), steps=self.steps,
                           batch_size=self.batch_size, lr=self.lr, kd_alpha=self.kd_alpha,
                           # evaluations at the hard projection (ASHA's rung) and at the end only
                           eval_every=0,
                           cache_dir=str(self.cache_root()))

    def cache_root(self) -> Path:
        return Path(self.cache_dir).resolve() if self.cache_dir else default_cache_dir()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"options": list(self.options), "kinds": list(self.kinds)}


@dataclass
class SearchResult:
    results: pd.DataFrame
    best: pd.Series | None
    out: Path
    wall_time: float


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def _connect_ray(config: SearchConfig):
    import ray

    if ray.is_initialized():
        return False
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return True


def select_candidates(candidates: list, budget: int) -> list:
    """Up to ``budget`` candidates: the heterogeneous ones (optimal first) get half the budget,
    the best per-component grid and uniform plans share the rest, so the baselines a user will
    compare against are always trained alongside."""
    pools = {
        "het": [c for c in candidates if c.kind in ("optimal", "diverse")],
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


def _of_kinds(candidates: list, kinds: tuple[str, ...]) -> list:
    """The candidates that any of ``kinds`` produced, each labelled with the first such kind (a
    uniform plan is also a grid plan: with ``kinds=("uniform",)`` it counts as uniform)."""
    chosen = []
    for c in candidates:
        mine = [k for k in (c.kinds or (c.kind,)) if k in kinds]
        if mine:
            chosen.append(c if c.kind == mine[0] else dataclasses.replace(c, kind=mine[0]))
    return chosen


def _tune_callback(total: int, progress: bool):
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            _say(progress, f"  [{self.done}/{total}] {trial.trial_id} {r.get('phase', '?'):<9} "
                           f"primary {r.get('primary', float('nan')):.4f} retention {r.get('retention', float('nan')):.2%} "
                           f"ratio {r.get('ratio_paper', float('nan')):.4f}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            _say(progress, f"  [{self.done}/{total}] {trial.trial_id} failed")

    return Progress()


def _make_tuner(config: SearchConfig, trainable, param_space: dict, storage: Path, name: str, n_trials: int,
                progress: bool, restore: bool, search_alg=None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # one checkpoint per evaluation is by design; Tune's warning about it is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(trainable, {"cpu": config.cpus_per_trial})
    if restore:
        return tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    scheduler = None
    if config.asha and config.steps >= 4:
        scheduler = ASHAScheduler(time_attr="step", metric="primary", mode="max", max_t=config.steps,
                                  grace_period=max(1, config.steps // 2), reduction_factor=2)  # the rung is the projection
    concurrency = config.concurrency
    if concurrency is None:
        import ray

        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1) // config.cpus_per_trial))
    fail_fast = "raise" if (config.inject_failure or {}).get("marker") else False
    return tune.Tuner(
        trainable,
        param_space=param_space,
        # reusing the trial processes saves a torch/transformers import per trial
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, scheduler=scheduler, reuse_actors=True,
                                    search_alg=search_alg, num_samples=n_trials if search_alg else 1),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=0,
            callbacks=[_tune_callback(n_trials, progress)],
            failure_config=tune.FailureConfig(max_failures=0 if fail_fast else 1, fail_fast=fail_fast),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def _fit(tuner, config: SearchConfig):
    try:
        return tuner.fit()
    except Exception as exc:  # fail-fast or a driver-side failure: the experiment state is on disk
        raise NxmiError(f"search interrupted ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        f"run it again with --resume --out {config.out} to continue") from exc


def run_search(config: SearchConfig, resume: bool = False, progress: bool = True) -> SearchResult:
    """Run (or with ``resume=True`` continue) a search; see the module docstring."""
    start = time.perf_counter()
    out = Path(config.out).resolve()
    state_file = out / "search.json"
    if resume:
        if not state_file.is_file():
            raise NxmiError(f"nothing to resume in {out}: no search.json (start a search with this --out first)")
        stored = json.loads(state_file.read_text())
        stored.pop("provenance", None)
        config = SearchConfig(**(stored | {"address": config.address, "inject_failure": None}))
    else:
        check_feasible(config)
        if out.exists() and any(out.iterdir()):
            raise NxmiError(f"output directory {out} already exists and is not empty; use --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    started_ray = _connect_ray(config)
    try:
        from ray import tune

        from ..trials.dense import finetune_dense
        from ..trials.trainable import trial_trainable
        from .heuristic import generate_candidates, modules_frame
        from .profile import _skeleton, profile_sensitivity

        import ray

        data = config.data_config()
        _say(progress, f"[1/4] dense warm start: {config.model} on {config.task}")
        dense = finetune_dense(data, config.dense_config(), config.cache_root(), progress=progress)
        _record_provenance(state_file, dense)
        _say(progress, f"      dense {dense.metrics.get('primary'):.4f} ({'cached' if dense.cached else f'{dense.wall_time:.0f}s'}) at {dense.path}")

        _say(progress, f"[2/4] sensitivity profile: {len(config.options)} options, {config.calib_size} calibration rows")
        workers = config.profile_workers
        if workers is None:
            workers = int(ray.cluster_resources().get("CPU", 1))
        profile = profile_sensitivity(dense.path, data, config.options, config.calib_size, cache_dir=config.cache_root(),
                                      workers=workers, progress=progress)
        _say(progress, f"      {profile.computed} computed, {profile.cached} from cache ({profile.wall_time:.1f}s)")

        modules = modules_frame(_skeleton(dense.path))
        candidates_file = out / "candidates.parquet"
        if resume and candidates_file.is_file():
            cand_frame = pd.read_parquet(candidates_file)
        else:
            candidates = generate_candidates(profile.table, modules, config.target_ratio, config.convention,
                                             n_best=max(2, config.trials))
            chosen = select_candidates(_of_kinds(candidates, config.kinds), config.trials)
            cand_frame = pd.DataFrame([{
                "kind": c.kind, "score": c.score, "ratio_paper": c.ratio_paper, "ratio_storage": c.ratio_storage,
                "plan_json": c.plan.to_json(indent=None), "plan_summary": c.plan.summary()} for c in chosen])
            cand_frame.to_parquet(candidates_file, index=False)
        _say(progress, f"[3/4] {len(cand_frame)} candidates for target {config.target_ratio} ({config.convention}): "
                       + ", ".join(f"{k} x{v}" for k, v in cand_frame["kind"].value_counts().items()))

        plans = []
        for i, row in cand_frame.iterrows():
            plan = CompressionPlan.from_json(row["plan_json"])
            plan.meta.update({"kind": row["kind"], "heuristic_score": float(row["score"]), "candidate_index": int(i)})
            plans.append(plan.to_dict())
        param_space = {"plan": tune.grid_search(plans), "trial": config.trial_config().to_dict(),
                       "dense_path": str(dense.path)}
        if config.inject_failure:
            param_space["inject_failure"] = config.inject_failure
        restore = resume and tune.Tuner.can_restore(str(out / EXPERIMENT))
        _say(progress, f"[4/4] {'resuming' if restore else 'running'} {len(plans)} short trials "
                       f"({config.steps} steps each) on Ray Tune" + (" (stage 1 of 2)" if config.refine_trials else ""))
        tuner = _make_tuner(config, trial_trainable, param_space, out, EXPERIMENT, len(plans), progress, restore)
        results = results_table(_fit(tuner, config), config, dense.primary)
        if config.refine_trials:
            _write_parquet(results, out / "stage1.parquet")
            refined = _refine(config, results, profile.table, modules, param_space, out, resume, dense.primary, progress)
            results = pd.concat([results, refined], ignore_index=True)
        _write_parquet(results, out / "results.parquet")
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    best = best_trial(results, config.target_ratio, config.convention)
    return SearchResult(results, best, out, time.perf_counter() - start)


def _refine(config: SearchConfig, stage1: pd.DataFrame, sensitivity: pd.DataFrame, modules: pd.DataFrame,
            param_space: dict, out: Path, resume: bool, dense_primary: float, progress: bool) -> pd.DataFrame:
    """Stage 2 (``refine_trials`` > 0): Optuna over per-group choices, seeded with stage 1."""
    from ray import tune

    from .heuristic import build_problem
    from .refine import GroupSpace, make_searcher, refine_trainable, seed_points

    space = GroupSpace.build(build_problem(sensitivity, modules), config.target_ratio, config.convention,
                             config.refine_layer_groups, fill_slack=config.refine_fill)
    told, enqueued = seed_points(space, stage1)
    restore = resume and tune.Tuner.can_restore(str(out / REFINE_EXPERIMENT))
    _say(progress, f"      stage 2: {'resuming ' if restore else ''}{config.refine_trials} Optuna trials over "
                   f"{len(space.groups)} groups ({len(told)} stage-1 results told, {len(enqueued)} seeds enqueued)")
    searcher = None if restore else make_searcher(space, told, enqueued, seed=config.seed)
    stage2_space = {k: v for k, v in param_space.items() if k != "plan"} | {"space": space.to_dict()}
    tuner = _make_tuner(config, refine_trainable, stage2_space, out, REFINE_EXPERIMENT, config.refine_trials,
                        progress, restore, search_alg=searcher)
    return results_table(_fit(tuner, config), config, dense_primary)


def check_feasible(config: SearchConfig) -> float:
    """Raise unless the menu can reach the target on this architecture; return the highest ratio.

    Runs before anything is trained or written, on the architecture alone."""
    from ..models import resolve_model_path
    from .heuristic import cost_matrix, modules_frame
    from .profile import _skeleton, check_options_fit

    skeleton = _skeleton(Path(resolve_model_path(config.model)))
    check_options_fit(skeleton, config.options)
    modules = modules_frame(skeleton)
    dense = float((32 * modules["out_features"] * modules["in_features"]).sum())
    best = 1 - float(cost_matrix(modules, config.options, config.convention).min(axis=1).sum()) / dense
    if best < config.target_ratio - 1e-9:
        raise NxmiError(f"target ratio {config.target_ratio} ({config.convention}) is infeasible with this menu: "
                        f"the highest reachable is {best:.4f} (every module at its cheapest option)")
    return best


def _record_provenance(state_file: Path, dense) -> None:
    """Add the warm start's identity to ``search.json`` (``nxmi export`` copies it into plans)."""
    state = json.loads(state_file.read_text())
    state["provenance"] = {"dense_path": str(dense.path), "dense_key": dense.key, "dense_primary": dense.primary,
                           "model_fingerprint": dense.model_fingerprint}
    tmp = state_file.with_name(f".{state_file.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, state_file)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _num(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value


def results_table(grid, config: SearchConfig, dense_primary: float) -> pd.DataFrame:
    """One row per trial of a Tune ``ResultGrid``: status (completed / stopped / error), plan,
    ratios, metrics, retention, steps, wall time."""
    rows = []
    for result in grid:
        plan_dict = _plan_of(result.config or {})
        plan = CompressionPlan.from_dict(plan_dict) if plan_dict else CompressionPlan()
        metrics = result.metrics or {}
        status = "error" if result.error else ("completed" if metrics.get("phase") == "final" else "stopped")
        task_metrics = {k: v for k, v in metrics.items()
                        if k in ("accuracy", "f1", "mcc", "pearson", "spearmanr", "combined", "eval_loss")
                        or k.startswith("validation_")}
        ratio_paper = metrics.get("ratio_paper")
        ratio_storage = metrics.get("ratio_storage")
        if ratio_paper is None:  # a trial that failed before reporting: compute from the plan
            ratio_paper, ratio_storage = _plan_ratios(plan, config)
        ratio = ratio_paper if config.convention == "paper" else ratio_storage
        rows.append({
            "trial_id": metrics.get("trial_id") or Path(result.path).name,
            "status": status,
            "error": (str(result.error).strip().splitlines() or [""])[-1] if result.error else "",
            "kind": plan.meta.get("kind", ""),
            "heuristic_score": _num(plan.meta.get("heuristic_score")),
            "plan_json": json.dumps(plan_dict),
            "plan_summary": plan.summary(),
            "ratio_paper": _num(ratio_paper),
            "ratio_storage": _num(ratio_storage),
            "meets_target": bool(_num(ratio) >= config.target_ratio - 1e-9),
            "primary": _num(metrics.get("primary")),
            "retention": _num(metrics.get("retention")),
            "dense_primary": dense_primary,
            "metrics_json": json.dumps(task_metrics),
            "steps": int(metrics.get("step", 0) or 0),
            "wall_time": _num(metrics.get("time_total_s")),
            "node_id": str(metrics.get("node_id", "")),
            # ||W - proj(W)|| / ||W|| and mask agreement at the hard projection (last report if earlier)
            "admm_distance": _num(metrics.get("admm_distance")),
            "admm_mask_agreement": _num(metrics.get("admm_mask_agreement")),
        })
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _plan_of(trial_config: dict) -> dict:
    """The plan dict of a trial: given (stage 1) or rebuilt from its sampled groups (stage 2)."""
    if "plan" in trial_config:
        return trial_config["plan"]
    if "space" in trial_config:
        from .refine import GroupSpace

        space = GroupSpace.from_dict(trial_config["space"])
        if all(group in trial_config for group in space.groups):
            return space.plan_for({group: trial_config[group] for group in space.groups}).to_dict()
    return {}


def _plan_ratios(plan: CompressionPlan, config: SearchConfig) -> tuple[float, float]:
    from ..compression import compression_ratio
    from ..models import resolve_model_path
    from .profile import _skeleton

    try:
        model = _skeleton(Path(resolve_model_path(config.model)))
        return compression_ratio(model, plan, "paper"), compression_ratio(model, plan, "storage")
    except Exception:
        return float("nan"), float("nan")


def best_trial(results: pd.DataFrame, target_ratio: float, convention: str = "paper") -> pd.Series | None:
    """The completed trial with the highest primary metric among those meeting the target."""
    column = f"ratio_{convention}"
    ok = results[(results["status"] == "completed") & (results[column] >= target_ratio - 1e-9)]
    if ok.empty:
        return None
    return ok.sort_values(["primary", column], ascending=False).iloc[0]
