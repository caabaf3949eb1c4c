"""The search: warm start -> profile (cached) -> candidates -> parallel short trials on Ray Tune
-> results table in Parquet -> the best plan that meets the constraint.

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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..analysis.pareto import check_prior_weight, select
from ..compression import CONVENTIONS, CompressionPlan, RatioTarget
from ..errors import NxmiError
from ..outputs import atomic_file, write_json
from ..records import HIGHER_IS_BETTER, TrialRecord, records_frame, write_records
from ..trials.config import (
    PRECISION_HELP, DataConfig, DenseConfig, TrialConfig, check_device, check_precision, default_cache_dir,
)
from ..trials.data import get_task
from .cluster import cluster_cpus, node_cpus, ray_session
from .profile import PROXIES, menu_for, parse_menu

EXPERIMENT = "trials"
REFINE_EXPERIMENT = "refine"
LEARN_EXPERIMENT = "learn"
SPACE_FILE = "refine_space.json"
STAGE1_FILE = "stage1.parquet"
# search.json's layout and the trials' Tune configs: a search of another version is not resumed
STATE_VERSION = 2
OBJECTIVES = ("selection_primary", "selection_loss", "selection_loss_calibrated", "selection_kl")
# a trainable -> the trainable Tune runs (e.g. one that injects faults, in tests)
Wrapper = Callable[[Callable[[dict], None]], Callable[[dict], None]]


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class Preset:
    """Named :class:`SearchConfig` field values; fields given explicitly override them."""

    description: str
    fields: dict


PRESETS = {
    # the learning stage but no Optuna stage: with one Optuna sample the demo took 10:42 on a slow 2-core machine
    # (2026-12-02), over its 10-minute bound; add --refine-trials 1 to see it (README: The search)
    "quick": Preset("a search of under 10 minutes on 2 cores (3 candidates and 1 learned plan, x 60 steps)",
                    {"trials": 3, "refine_trials": 0, "learn_trials": 1, "steps": 60, "train_size": 2000, "eval_size": 300,
                     "selection_size": 300, "calib_size": 128, "max_length": 64, "dense_epochs": 1.0,
                     "oneshot_profile": False}),
}


@dataclass(frozen=True)
class SearchConfig:
    """A search for plans with encoder compression >= ``target_ratio`` (under ``convention``).

    Every field is an ``nxmi search`` flag of the same name (``--target-ratio`` ...), with the
    ``help`` of its metadata."""

    out: str = field(metadata=_help("storage path of the search (results, Tune experiments, search.json)"))
    task: str = field(default="sst2", metadata=_help("GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli"))
    target_ratio: float = field(default=0.875, metadata=_help("minimum encoder compression ratio, in (0, 1)"))
    convention: str = field(default="paper", metadata=_help("ratio convention: paper or storage"))
    model: str = field(default="default", metadata=_help("'default' (embedded MiniLM), a directory, or a hub name"))
    data_dir: str | None = field(default=None, metadata=_help(
        "directory of <task>/<split>.parquet (default: $NXMI_GLUE_DIR, else the hub)"))
    max_length: int = field(default=64, metadata=_help("truncation length in tokens"))
    train_size: int | None = field(default=4000, metadata=_help("training rows to draw (None: all)"))
    eval_size: int | None = field(default=500, metadata=_help(
        "rows of each validation split (None: all): evaluated for the record and the report, never to decide"))
    selection_size: int = field(default=500, metadata=_help(
        "training rows held out as selection rows: what ASHA, the stages and the choice of the best plan decide on"))
    # the default by measurement (bench/objectives.py; figures in README: Search quality): over the bench cells
    # that record it, it ranks the trials closer to their validation metric than selection_primary does, and each
    # arm's choice on it falls no further below the arm's best trial (rule set before the fifth cell)
    objective: str = field(default="selection_loss_calibrated", metadata=_help(
        "what the search decides on, on the selection rows: selection_primary, selection_loss, "
        "selection_loss_calibrated or selection_kl"))
    # 1 by measurement since 2026-12-02 (bench/objectives.py, ``calibrated+proxy``; README: Search quality): over
    # the 15 bench cells that record the calibrated loss it ranks the trials closer to their validation metric than
    # the objective alone, and the choices fall no further below the best trial (rule stated before two cells ran)
    prior_weight: float = field(default=1.0, metadata=_help(
        "the choice of the best plan: rank the trials by z(objective) - prior_weight * z(proxy cost of the plan), "
        "z-scores over the completed trials: a prior for the plans the --proxy rates cheaper (0: the objective alone)"))
    seed: int = field(default=0, metadata=_help("seed of the row draws and of Optuna's sampler"))
    trials: int = field(default=8, metadata=_help("candidate plans to train as short trials"))
    steps: int = field(default=200, metadata=_help("optimizer steps per short trial"))
    batch_size: int = field(default=32, metadata=_help("batch size of the trials"))
    lr: float = field(default=1e-4, metadata=_help("learning rate of the trials"))
    kd_alpha: float = field(default=0.0, metadata=_help("weight of distillation from the dense model (0: off)"))
    concurrency: int | None = field(default=None, metadata=_help("concurrent trials (default: CPUs / cpus_per_trial)"))
    cpus_per_trial: int = field(default=1, metadata=_help(
        "CPUs (and torch threads) per trial, at least: a stage with fewer trials than CPU slots gives each trial more"))
    gpus_per_trial: float = field(default=0.0, metadata=_help(
        "GPUs Ray reserves per trial and per profiling task; fractional packs several on one GPU (0.25: 4 each)"))
    precision: str = field(default="fp32", metadata=_help(PRECISION_HELP))  # warm start and trials
    device: str = field(default="auto", metadata=_help(
        "where the warm start, trials and profiles run: auto (CUDA where the process sees a GPU: a trial sees "
        "the GPU Ray assigns it, none without --gpus-per-trial), cpu, or cuda"))
    options: tuple[str, ...] | None = field(default=None, metadata=_help(
        "comma-separated option menu (default: the --menu for the target)"))
    # fine is the default by measurement (bench/search_quality.py; figures in README: Search quality): its plans
    # beat the best uniform/grid plan in most cells at 93.75% and 96.875%, and auto's plans on SST-2 at both targets
    menu: str = field(default="fine", metadata=_help(
        "the option menu when --options is not given: fine (every N:M pattern of 1:8 to 3:4 and dense at 2, 3, 4 "
        "and 8 bits, floats at half density or more, within a factor 2 of the target's bits per weight), auto (the "
        "12 catalogue options nearest the target's bits, on both sides), kernel (2:4 and dense at 8/16 bits: what "
        "sparse GPU kernels accelerate) or classic (11 fixed)"))
    # measured (same runs): rank correlation with the trials' selection loss 0.17 / 0.83 for fisher,
    # 0.04 / 0.77 for oneshot (93.75% / 96.875%)
    proxy: str = field(default="fisher", metadata=_help(
        "the sensitivity the candidates are built on: oneshot (calibration-loss rise of a one-shot projection), "
        "fisher (Fisher-weighted projection error) or probe (selection-loss rise after a short masked-QAT recovery "
        "of each component x layer block x option: costs --probe-steps steps per probe)"))
    oneshot_profile: bool = field(default=True, metadata=_help(
        "also measure the oneshot proxy when --proxy is another (a forward per module x option: nearly all of the "
        "profile's cost; fisher needs none), so that both proxies' rank correlations are stored with the search"))
    probe_steps: int = field(default=16, metadata=_help("--proxy probe: masked-QAT steps of each probe"))
    probe_blocks: int = field(default=2, metadata=_help("--proxy probe: blocks of layers per component type"))
    calib_size: int = field(default=256, metadata=_help("calibration rows held out of the training split"))
    dense_epochs: float = field(default=3.0, metadata=_help(
        "most epochs of the dense warm start (it stops earlier when its selection loss stops improving)"))
    # measured (2,000 training rows, bound 3 epochs): patience 2 stopped SST-2 at step 60 of 189 with validation
    # accuracy 0.802 and MRPC at 90 (combined 0.761, barely above the majority answer); patience 4 trained to
    # steps 180 and 135: 0.839 and 0.786, with lower selection losses (0.320 vs 0.347, 0.535 vs 0.590)
    dense_patience: int = field(default=4, metadata=_help(
        "dense warm start: quarter-epoch checks without a lower selection loss before it stops (0: all epochs)"))
    asha: bool = field(default=True, metadata=_help("stop weak trials early at the hard projection (ASHA)"))
    kinds: tuple[str, ...] = field(default=("optimal", "diverse", "grid", "uniform"), metadata=_help(
        "candidate kinds to train, comma-separated, some of optimal,diverse,anchored,halfway,grid,uniform (anchored: "
        "the knapsack optimum within N/2, N/4 ... 1 modules of the best uniform plan; halfway: within N/2, then N/4, "
        "modules of each of the three best uniform plans; neither is in the default)"))
    min_hamming: int | None = field(default=None, metadata=_help(
        "modules each diverse stage-1 plan must change against the optimum and every diverse plan before it "
        "(default: a twelfth of the modules, 3 of MiniLM's 36)"))
    refine_trials: int = field(default=0, metadata=_help(
        "stage 2: this many Optuna-sampled per-group plans, seeded with the candidates' results"))
    refine_fill: bool = field(default=False, metadata=_help(
        "stage 2: spend budget a sampled plan leaves unused, by the sensitivity model"))
    learn_trials: int = field(default=0, metadata=_help(
        "a stage that learns from the trials: this many plans from the additive model calibrated on the finished "
        "trials (ridge regression of their objective on the proxy and per component x option corrections), "
        "re-solved by the knapsack"))
    refine_layer_groups: int = field(default=2, metadata=_help(
        "stage 2: layer blocks per component type (one Optuna choice per block and component)"))
    profile_workers: int | None = field(default=None, metadata=_help(
        "Ray tasks for profiling (default: cluster CPUs; 0: in-process)"))
    cache_dir: str | None = field(default=None, metadata=_help(
        "cache of warm starts and profiles (default: $NXMI_CACHE_DIR or ~/.cache/nxmiformer; share it on a cluster)"))
    address: str | None = field(default=None, metadata=_help("Ray cluster address (default: $RAY_ADDRESS, else embedded Ray)"))
    fail_fast: bool = field(default=False, metadata=_help(
        "stop the search at the first trial failure instead of restarting the trial (continue with --resume)"))

    def __post_init__(self):
        get_task(self.task)
        self.target  # validates target_ratio and convention
        if self.objective not in OBJECTIVES:
            raise NxmiError(f"unknown objective {self.objective!r}; allowed: {', '.join(OBJECTIVES)}")
        check_prior_weight(self.prior_weight)
        if isinstance(self.selection_size, bool) or not isinstance(self.selection_size, int) or self.selection_size < 1:
            raise NxmiError(f"selection_size must be a positive integer, got {self.selection_size!r}")
        for name in ("trials", "cpus_per_trial", "batch_size", "calib_size", "refine_layer_groups", "probe_steps",
                     "probe_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NxmiError(f"{name} must be a positive integer, got {value!r}")
        for name in ("concurrency", "min_hamming"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise NxmiError(f"{name} must be a positive integer, got {value!r}")
        for name in ("steps", "refine_trials", "learn_trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise NxmiError(f"{name} must be a non-negative integer, got {value!r}")
        check_device(self.device)
        check_precision(self.precision)
        gpus = self.gpus_per_trial
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus < math.inf:
            raise NxmiError(f"gpus_per_trial must be a number >= 0, got {gpus!r}")
        if gpus > 1 and gpus != int(gpus):
            raise NxmiError(f"gpus_per_trial above 1 must be a whole number of GPUs, got {gpus!r}")
        if self.device.startswith("cuda") and not gpus:
            raise NxmiError(f"device {self.device} needs gpus_per_trial > 0: Ray shows no GPU to a trial that reserves none")
        if self.device == "cpu" and gpus:
            raise NxmiError(f"gpus_per_trial {gpus} with device cpu reserves GPUs nothing uses; use device auto or cuda")
        if self.proxy not in PROXIES:
            raise NxmiError(f"unknown proxy {self.proxy!r}; allowed: {', '.join(PROXIES)}")
        options = self.options if self.options is not None else menu_for(self.menu, 32 * (1 - self.target.value))
        object.__setattr__(self, "options", parse_menu(options))
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

    @property
    def target(self) -> RatioTarget:
        return RatioTarget(self.target_ratio, self.convention)

    def data_config(self) -> DataConfig:
        return DataConfig(task=self.task, data_dir=self.data_dir, max_length=self.max_length, train_size=self.train_size,
                          eval_size=self.eval_size, seed=self.seed, holdout_size=self.calib_size,
                          selection_size=self.selection_size)

    def dense_config(self) -> DenseConfig:
        return DenseConfig(model=self.model, epochs=self.dense_epochs, patience=self.dense_patience, device=self.device,
                           precision=self.precision)

    def trial_config(self) -> TrialConfig:
        config = TrialConfig(data=self.data_config(), dense=self.dense_config(), steps=self.steps,
                             batch_size=self.batch_size, lr=self.lr, kd_alpha=self.kd_alpha, eval_every=0,
                             cache_dir=str(self.cache_root()), device=self.device, precision=self.precision)
        # evaluations at the projection, at ASHA's rung and at the end
        return config.replace(eval_at=(self.rung(config.admm_steps),))

    def probe_settings(self):
        """How ``--proxy probe`` trains its probes: like the trials (learning rate, weight decay, batch, seed)."""
        from .probes import ProbeSettings

        return ProbeSettings(steps=self.probe_steps, blocks=self.probe_blocks, lr=self.lr, batch_size=self.batch_size,
                             seed=self.seed, weight_decay=self.trial_config().weight_decay)

    def rung(self, admm_steps: int) -> int:
        """ASHA's one rung: halfway through the masked-QAT recovery after the projection."""
        return admm_steps + max(1, (self.steps - admm_steps) // 2)

    @property
    def mode(self) -> str:
        """``min`` or ``max``: the direction of the objective."""
        return "max" if self.objective in HIGHER_IS_BETTER else "min"

    def cache_root(self) -> Path:
        return Path(self.cache_dir).resolve() if self.cache_dir else default_cache_dir()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"options": list(self.options), "kinds": list(self.kinds)}

    @classmethod
    def preset(cls, name: str | None, **fields) -> "SearchConfig":
        """The configuration of preset ``name`` (None: none) with ``fields`` on top."""
        if name is not None and name not in PRESETS:
            raise NxmiError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
        return cls(**(PRESETS[name].fields if name else {}) | fields)

    @classmethod
    def load(cls, out: str | os.PathLike, **changes) -> "SearchConfig":
        """The configuration stored in ``out/search.json``, with ``changes`` (e.g. the address)."""
        state_file = Path(out) / "search.json"
        if not state_file.is_file():
            raise NxmiError(f"nothing to resume in {out}: no search.json (start a search with this --out first)")
        stored = json.loads(state_file.read_text())
        version = stored.get("state_version", 1)
        if version != STATE_VERSION:
            raise NxmiError(f"the search in {out} was started by another nxmiformer (search state version {version}, "
                            f"this one resumes version {STATE_VERSION}); start a new search with another --out "
                            f"(nxmi pareto/export still read its results.parquet, if it finished)")
        known = {f.name for f in dataclasses.fields(cls)}  # provenance, and keys of older versions, are not fields
        # a search from before --prior-weight chose on its objective alone (weight 0), not today's default
        stored.setdefault("prior_weight", 0.0)
        return cls(**({k: v for k, v in stored.items() if k in known} | changes))


@dataclass
class SearchResult:
    results: pd.DataFrame
    best: pd.Series | None
    out: Path
    wall_time: float


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def select_candidates(candidates: list, budget: int) -> list:
    """Up to ``budget`` candidates: the heterogeneous ones (optimal first) get half the budget,
    the best per-component grid and uniform plans share the rest, so the baselines a user will
    compare against are always trained alongside."""
    from .heuristic import HETEROGENEOUS

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


def stage1_candidates(config: SearchConfig, sensitivity: pd.DataFrame, modules: pd.DataFrame) -> list:
    """The first stage's ``config.trials`` plans: candidates of ``config.kinds`` for ``config.target``,
    shared out by :func:`select_candidates`."""
    from .heuristic import generate_candidates

    candidates = generate_candidates(sensitivity, modules, config.target, n_best=max(2, config.trials),
                                     grid_top=max(4, config.trials),  # enough of each kind for --kinds
                                     min_hamming=config.min_hamming,
                                     n_anchored=config.trials if "anchored" in config.kinds else 0,
                                     n_halfway=config.trials if "halfway" in config.kinds else 0)
    return select_candidates(_of_kinds(candidates, config.kinds), config.trials)


def _of_kinds(candidates: list, kinds: tuple[str, ...]) -> list:
    """The candidates that any of ``kinds`` produced, each labelled with the first such kind (a
    uniform plan is also a grid plan: with ``kinds=("uniform",)`` it counts as uniform)."""
    chosen = []
    for c in candidates:
        mine = [k for k in (c.kinds or (c.kind,)) if k in kinds]
        if mine:
            chosen.append(c if c.kind == mine[0] else dataclasses.replace(c, kind=mine[0]))
    return chosen


def _tune_callback(total: int, progress: bool, objective: str):
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            _say(progress, f"  [{self.done}/{total}] {trial.trial_id} {r.get('phase', '?'):<9} "
                           f"{objective} {r.get(objective, float('nan')):.4f} "
                           f"validation primary {r.get('primary', float('nan')):.4f} retention {r.get('retention', float('nan')):.2%} "
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
    trainable = tune.with_resources(trainable, trial_resources(config, n_trials))
    if restore:
        return tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    scheduler = None
    if config.asha and config.steps >= 4:
        # one rung, after some recovery from the projection (SearchConfig.rung)
        rung = TrialConfig.from_dict(param_space["trial"]).eval_at[0]
        scheduler = ASHAScheduler(time_attr="step", metric=config.objective, mode=config.mode, max_t=config.steps,
                                  grace_period=rung, reduction_factor=2)
    concurrency = config.concurrency or max(1, cluster_cpus() // config.cpus_per_trial)
    fail_fast = "raise" if config.fail_fast else False
    return tune.Tuner(
        trainable,
        param_space=param_space,
        # reusing the trial processes saves a torch/transformers import per trial
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, scheduler=scheduler, reuse_actors=True,
                                    search_alg=search_alg, num_samples=n_trials if search_alg else 1),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=0,
            callbacks=[_tune_callback(n_trials, progress, config.objective)],
            failure_config=tune.FailureConfig(max_failures=0 if fail_fast else 1, fail_fast=fail_fast),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def trial_resources(config: SearchConfig, n_trials: int | None = None) -> dict:
    """What Ray reserves for each trial: ``cpus_per_trial`` CPUs and, when asked, GPUs. A CPU
    stage of ``n_trials`` that would leave CPUs idle (fewer trials than the cluster has room for,
    e.g. a one-trial learning stage on 2 cores) shares them out: each of its trials gets
    ``cluster CPUs // n_trials`` (at most a node's), and as many torch threads. Not with an
    explicit ``concurrency``, nor with GPUs."""
    cpus = config.cpus_per_trial
    if n_trials and not config.gpus_per_trial and config.concurrency is None:
        cpus = max(cpus, min(node_cpus(), cluster_cpus() // n_trials))
    return {"cpu": cpus} | ({"gpu": config.gpus_per_trial} if config.gpus_per_trial else {})


def check_cluster_gpus(config: SearchConfig) -> None:
    """A trial that asks for more GPUs than any node has would wait forever: refuse it."""
    import ray

    if not config.gpus_per_trial:
        return
    most = max((node.get("Resources", {}).get("GPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if most < min(config.gpus_per_trial, 1):
        raise NxmiError(f"gpus_per_trial {config.gpus_per_trial} but no node of the Ray cluster has a GPU "
                        f"(most on one node: {most:g}); drop --gpus-per-trial or join a cluster with GPUs (--address)")
    if config.gpus_per_trial > most:
        raise NxmiError(f"gpus_per_trial {config.gpus_per_trial:g} but the largest node has {most:g} GPUs")


def _fit(tuner, config: SearchConfig):
    try:
        return tuner.fit()
    except Exception as exc:  # fail-fast or a driver-side failure: the experiment state is on disk
        raise NxmiError(f"search interrupted ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        f"run it again with --resume --out {config.out} to continue") from exc


def run_search(config: SearchConfig, resume: bool = False, progress: bool = True,
               wrap_trainable: Wrapper | None = None) -> SearchResult:
    """Run (or with ``resume=True`` continue) a search; see the module docstring.

    ``wrap_trainable`` (optional) wraps each stage's Tune trainable, e.g. to inject faults (a
    resumed search needs the same wrapper). Nothing is written to ``config.out`` until the warm
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
    _say(progress, f"[1/4] dense warm start: {config.model} on {config.task}")
    dense = finetune_dense(data, config.dense_config(), config.cache_root(), progress=progress)
    _say(progress, f"      dense {dense.metrics.get('primary'):.4f} ({'cached' if dense.cached else f'{dense.wall_time:.0f}s'}) at {dense.path}")

    with ray_session(config.address):
        from ray import tune

        from ..trials.trainable import trial_trainable
        from .heuristic import modules_frame
        from .profile import profile_sensitivity

        check_cluster_gpus(config)  # a trial that cannot be placed would wait forever
        oneshot = config.oneshot_profile or config.proxy == "oneshot"
        _say(progress, f"[2/4] sensitivity profile: {len(config.options)} options, {config.calib_size} calibration rows"
                       f"{'' if oneshot else ' (fisher only: no forward per option)'}")
        workers = config.profile_workers if config.profile_workers is not None else cluster_cpus()
        profile = profile_sensitivity(dense.path, data, config.options, config.calib_size, cache_dir=config.cache_root(),
                                      workers=workers, progress=progress, device=config.device,
                                      gpus_per_task=config.gpus_per_trial,
                                      oneshot=oneshot)
        _say(progress, f"      {profile.computed} computed, {profile.cached} from cache ({profile.wall_time:.1f}s)")
        table, probe_cost = profile.table, None
        if config.proxy == "probe":
            table, probe_cost = _with_probes(config, dense.path, data, table, workers, progress)
        sensitivity = table.assign(score=table[PROXIES[config.proxy]])
        if not resume:  # the inputs have loaded: from here on the search has state to resume
            out.mkdir(parents=True, exist_ok=True)
            write_json(state_file, config.to_dict() | {"state_version": STATE_VERSION})
        _record_provenance(state_file, dense)
        if probe_cost is not None:
            _update_state(state_file, probe_cost=probe_cost)

        modules = modules_frame(skeleton(dense.path))
        candidates_file = out / "candidates.parquet"
        if resume and candidates_file.is_file():
            cand_frame = pd.read_parquet(candidates_file)
        else:
            chosen = stage1_candidates(config, sensitivity, modules)
            cand_frame = pd.DataFrame([{
                "kind": c.kind, "score": c.score, "ratio_paper": c.ratio_paper, "ratio_storage": c.ratio_storage,
                "plan_json": c.plan.to_json(indent=None), "plan_summary": c.plan.summary()} for c in chosen])
            with atomic_file(candidates_file) as tmp:
                cand_frame.to_parquet(tmp, index=False)
        _say(progress, f"[3/4] {len(cand_frame)} candidates for target {config.target}: "
                       + ", ".join(f"{k} x{v}" for k, v in cand_frame["kind"].value_counts().items()))

        candidates = [{"plan": json.loads(row["plan_json"]), "kind": row["kind"], "heuristic_score": float(row["score"]),
                       "ratio_paper": float(row["ratio_paper"]), "ratio_storage": float(row["ratio_storage"])}
                      for _, row in cand_frame.iterrows()]
        shared = {"trial": config.trial_config().to_dict(), "dense_path": str(dense.path)}
        restore = resume and tune.Tuner.can_restore(str(out / EXPERIMENT))
        _say(progress, f"[4/4] {'resuming' if restore else 'running'} {len(candidates)} short trials "
                       f"({config.steps} steps each) on Ray Tune" + (" (stage 1 of 2)" if config.refine_trials else ""))
        tuner = _make_tuner(config, wrap(trial_trainable), shared | {"candidate": tune.grid_search(candidates)}, out,
                            EXPERIMENT, len(candidates), progress, restore)
        results = results_table(_fit(tuner, config), config.target, dense.primary, modules,
                                lambda trial: trial.get("candidate"))
        if config.refine_trials:
            write_records(results, out / STAGE1_FILE)  # also what stage 2 reuses for repeated plans
            refined = _refine(config, results, sensitivity, modules, shared, out, resume, dense.primary, progress, wrap)
            results = pd.concat([results, refined], ignore_index=True)
        if config.learn_trials:
            learned = _learn(config, results, sensitivity, modules, shared, out, resume, dense.primary, progress, wrap)
            results = pd.concat([results, learned], ignore_index=True)
        results = results.assign(proxy_cost=plan_costs(results["plan_json"], sensitivity))
        write_records(results, out / "results.parquet")
        correlation = proxy_correlation(results, table, config.objective)
        _update_state(state_file, proxy_spearman=correlation)
        shown = [f"{k} {v:+.2f}" for k, v in correlation.items() if k in PROXIES and not math.isnan(v)]
        _say(progress, "      proxy rank correlation with the trials' " + config.objective + ": "
             + (", ".join(shown) or "none (it needs 3 completed trials that differ)"))

    _say_failures(results, progress)
    _check_reference(dense, results, config, state_file, progress)
    best = best_trial(results, config)
    _check_choice(best, results, config, dense.path, state_file, progress)
    return SearchResult(results, best, out, time.perf_counter() - start)


def _say_failures(results: pd.DataFrame, progress: bool) -> None:
    """One line per distinct error of the trials that failed (e.g. a full disk), which Tune
    otherwise leaves in the trials' logs."""
    failed = results[results["status"] == "error"]
    for error, count in failed["error"].fillna("").value_counts().items():
        _say(progress, f"      {count} of {len(results)} trials failed: {error or 'no error message'}")


def best_trial(results: pd.DataFrame, config: SearchConfig) -> pd.Series | None:
    """The search's choice among ``results``: ``select`` on its objective (with its ``prior_weight``),
    among the completed trials that meet its target (None when none has a value of the objective)."""
    done = results[(results["status"] == "completed") & config.target.is_met(results[config.target.column])]
    if not done[config.objective].notna().any():
        return None
    return select(results, config.target, metric=config.objective, prior_weight=config.prior_weight)


def proxy_correlation(results: pd.DataFrame, profile: pd.DataFrame, objective: str = "selection_loss") -> dict:
    """How well each proxy ranks the trained plans: Spearman's rank correlation between a plan's
    predicted cost (its modules' proxy scores, summed) and its trial's final ``objective``, any
    column of ``results`` (sign flipped for a task metric, ``selection_primary`` or the
    validation ``primary``, so that +1 is a perfect ranking for every objective);
    NaN with fewer than three completed trials, or for a proxy ``profile`` did not measure
    (``probe`` unless the probes were run, ``oneshot`` without ``oneshot_profile``).

    A proxy ranks only the plans it can price: a trial whose plan uses an option the proxy's
    column lacks (NaN or absent, e.g. a one-shot column measured on another menu) is left out of
    that proxy's correlation; ``<proxy>_trials`` counts the trials each one ranked."""
    import numpy as np
    from scipy.stats import spearmanr

    done = results[(results["status"] == "completed") & results[objective].notna()]
    out: dict = {"trials": int(len(done))}
    observed_all = done[objective].to_numpy() * (-1 if objective in HIGHER_IS_BETTER else 1)
    for proxy, column in PROXIES.items():
        if column not in profile.columns:  # a proxy that was not measured (an all-NaN column prices nothing below)
            out[proxy], out[f"{proxy}_trials"] = math.nan, 0
            continue
        predicted = plan_costs(done["plan_json"], profile, column).to_numpy()
        priced = ~np.isnan(predicted)
        predicted, observed = predicted[priced], observed_all[priced]
        ok = len(predicted) >= 3 and len(set(predicted)) > 1 and len(set(observed)) > 1
        out[proxy] = float(spearmanr(predicted, observed).statistic) if ok else math.nan
        out[f"{proxy}_trials"] = int(priced.sum())
    return out


def plan_costs(plans: pd.Series, profile: pd.DataFrame, column: str = "score") -> pd.Series:
    """Each plan's (``CompressionPlan`` JSON) predicted cost: its modules' ``column`` scores in the
    ``profile`` (one row per module x option), summed over the profile's modules; NaN for a plan
    with an option the column does not price. Same index as ``plans``."""
    lookup = dict(zip(zip(profile["module"], profile["option"]), profile[column]))
    modules = profile["module"].unique()

    def cost(plan_json: str) -> float:
        if not isinstance(plan_json, str) or not plan_json:
            return math.nan
        plan = CompressionPlan.from_json(plan_json)
        return float(sum(lookup.get((m, str(plan.spec_for(m))), math.nan) for m in modules))

    return pd.Series([cost(p) for p in plans], index=plans.index, dtype="float64")


def _with_probes(config: SearchConfig, dense_path: Path, data, table: pd.DataFrame, workers: int,
                 progress: bool) -> tuple[pd.DataFrame, dict]:
    """The profile ``table`` with the ``probe`` column (:mod:`.probes`, cached), and their cost."""
    from .probes import probe_sensitivity

    settings = config.probe_settings()
    _say(progress, f"      short-recovery probes: {settings.steps} masked-QAT steps per component x layer block x option")
    probes = probe_sensitivity(dense_path, data, config.options, settings, cache_dir=config.cache_root(),
                               workers=workers, progress=progress, device=config.device,
                               gpus_per_task=config.gpus_per_trial)
    cost = probes.cost()
    _say(progress, f"      {cost['probes']} probes trained over {cost['groups']} groups, {cost['cached_rows']} rows "
                   f"from cache ({cost['wall_s']:.1f}s)")
    merged = table.merge(probes.table[["module", "option", "probe"]], on=["module", "option"], how="left")
    return merged, cost


def _check_reference(dense, results: pd.DataFrame, config: SearchConfig, state_file: Path, progress: bool) -> None:
    """Say so (and note it in search.json) when a compressed trial beats the dense warm start on
    the selection rows by more than two standard errors: the reference of every retention
    figure is then too weak (train it longer: --dense-epochs, --dense-patience)."""
    reference = dense.metrics.get("selection_primary")
    done = results.loc[results["status"] == "completed", "selection_primary"].dropna()
    if reference is None or done.empty:
        return
    p = min(max(float(reference), 0.0), 1.0)  # accuracy-like: the binomial error of a difference
    margin = 2 * math.sqrt(2 * p * (1 - p) / config.selection_size)
    if done.max() - reference > margin:
        message = (f"a compressed trial beats the dense warm start on the selection rows by {done.max() - reference:.4f} "
                   f"(> 2 standard errors, {margin:.4f}): the dense reference is too weak; retention above 100% "
                   f"means little (train it longer with --dense-epochs / --dense-patience)")
        _say(progress, f"warning: {message}")
        _update_state(state_file, warnings=[message])


def choice_margin(best: pd.Series | None, results: pd.DataFrame, config: SearchConfig, labels) -> dict | None:
    """How far the chosen trial ``best`` leads the runner-up on the selection rows, in the task's
    primary metric, with the paired bootstrap standard error of that lead (both trials'
    ``selection_predictions`` on the same ``labels``). The runner-up is the next trial by the
    search's objective (and prior weight) among the completed ones that meet the target, trained on
    another plan.
    None without a runner-up or without the predictions (records written before they were kept)."""
    from ..trials.metrics import paired_difference

    if best is None:
        return None
    done = results[(results["status"] == "completed") & config.target.is_met(results[config.target.column])
                   & (results["plan_json"] != best["plan_json"]) & results[config.objective].notna()]
    if done.empty:
        return None
    runner_up = select(done, config.target, metric=config.objective, prior_weight=config.prior_weight)
    first, second = (row.get("selection_predictions", "") for row in (best, runner_up))
    if not first or not second or not isinstance(first, str) or not isinstance(second, str):
        return None
    lead, se = paired_difference(config.task, json.loads(first), json.loads(second), labels)
    return {"trial_id": best["trial_id"], "runner_up": runner_up["trial_id"], "metric": "selection_primary",
            "lead": lead, "se": se, "rows": len(labels)}


def _selection_labels(config: SearchConfig, dense_path: Path):
    """The labels of the search's selection rows, in the order the trials predict them."""
    import numpy as np

    from ..models import load_tokenizer
    from ..trials.data import prepare_task_data

    data = config.data_config()
    glue = prepare_task_data(data.task, load_tokenizer(str(dense_path)), data_dir=data.data_dir,
                             max_length=data.max_length, train_size=data.train_size, eval_size=1, seed=data.seed,
                             include_train=False, holdout_size=data.holdout_size, selection_size=data.selection_size)
    return np.asarray(glue.selection["labels"])


def _check_choice(best: pd.Series | None, results: pd.DataFrame, config: SearchConfig, dense_path: Path,
                  state_file: Path, progress: bool) -> None:
    """Say by how much the chosen plan leads the runner-up on the selection rows, with its paired
    standard error, and note it in search.json (``choice``): within two standard errors, which of
    the two the search returns is decided by the rows' noise (more --selection-size narrows it)."""
    if best is None or not best.get("selection_predictions"):  # records written before they were kept
        return
    margin = choice_margin(best, results, config, _selection_labels(config, dense_path))
    if margin is None:
        return
    _update_state(state_file, choice=margin)
    verdict = ("more than two standard errors" if abs(margin["lead"]) > 2 * margin["se"] else
               f"within two: the {margin['rows']} selection rows' noise may have decided between the two")
    _say(progress, f"      the chosen trial leads the runner-up ({margin['runner_up']}) in the selection rows' "
                   f"task metric by {margin['lead']:+.4f} +- {margin['se']:.4f} (paired SE; {verdict})")


def _refine(config: SearchConfig, stage1: pd.DataFrame, sensitivity: pd.DataFrame, modules: pd.DataFrame,
            shared: dict, out: Path, resume: bool, dense_primary: float, progress: bool, wrap: Wrapper) -> pd.DataFrame:
    """Stage 2 (``refine_trials`` > 0): Optuna over per-group choices, seeded with stage 1."""
    from ray import tune

    from .heuristic import build_problem
    from .refine import GroupSpace, make_searcher, refine_trainable, seed_points

    space = GroupSpace.build(build_problem(sensitivity, modules), config.target,
                             layer_groups=config.refine_layer_groups, fill_slack=config.refine_fill)
    space_file = space.save(out / SPACE_FILE)
    told, enqueued = seed_points(space, stage1, objective=config.objective, mode=config.mode)
    restore = resume and tune.Tuner.can_restore(str(out / REFINE_EXPERIMENT))
    _say(progress, f"      stage 2: {'resuming ' if restore else ''}{config.refine_trials} Optuna trials over "
                   f"{len(space.groups)} groups ({len(told)} stage-1 results told, {len(enqueued)} seeds enqueued)")
    searcher = None if restore else make_searcher(space, told, enqueued, seed=config.seed, objective=config.objective,
                                                  mode=config.mode)
    tuner = _make_tuner(config, wrap(refine_trainable), shared | {"space": str(space_file), "known": str(out / STAGE1_FILE)},
                        out, REFINE_EXPERIMENT,
                        config.refine_trials, progress, restore, search_alg=searcher)
    return results_table(_fit(tuner, config), config.target, dense_primary, modules, space.candidate)


def _learn(config: SearchConfig, done: pd.DataFrame, sensitivity: pd.DataFrame, modules: pd.DataFrame,
           shared: dict, out: Path, resume: bool, dense_primary: float, progress: bool, wrap: Wrapper) -> pd.DataFrame:
    """The stage that learns from the trials (``learn_trials`` > 0; see :mod:`.calibrate`)."""
    from ray import tune

    from ..trials.trainable import trial_trainable
    from .calibrate import calibrated_candidates, fitted_trials
    from .heuristic import build_problem

    restore = resume and tune.Tuner.can_restore(str(out / LEARN_EXPERIMENT))
    plans = [] if restore else calibrated_candidates(build_problem(sensitivity, modules), config.target, done,
                                                     config.objective, config.learn_trials)
    fitted = len(fitted_trials(done, config.objective))
    _say(progress, f"      learning stage: {'resuming' if restore else f'{len(plans)} plans from the additive model calibrated on {fitted} completed of {len(done)} trials'}")
    if not restore and not plans:
        return done.iloc[0:0]
    candidates = [{"plan": p.to_dict(), "kind": p.meta["kind"], "heuristic_score": p.meta["calibrated_score"]}
                  for p in plans]
    space = shared | ({"candidate": tune.grid_search(candidates)} if candidates else {})  # restored: Tune's own
    tuner = _make_tuner(config, wrap(trial_trainable), space, out, LEARN_EXPERIMENT, len(candidates), progress, restore)
    return results_table(_fit(tuner, config), config.target, dense_primary, modules, lambda trial: trial.get("candidate"))


def check_feasible(config: SearchConfig) -> float:
    """Raise unless the menu can reach the target on this architecture; return the highest ratio.

    Runs before anything is trained or written, on the architecture alone."""
    from ..models import skeleton
    from .heuristic import check_reachable, modules_frame
    from .profile import check_options_fit

    model = skeleton(config.model)
    check_options_fit(model, config.options)
    return check_reachable(modules_frame(model), config.options, config.target)


def _update_state(state_file: Path, **fields) -> None:
    """Add (or replace) top-level ``fields`` of ``search.json``, atomically."""
    write_json(state_file, json.loads(state_file.read_text()) | fields)


def _record_provenance(state_file: Path, dense) -> None:
    """Add the warm start's identity to ``search.json`` (``nxmi export`` copies it into plans)."""
    _update_state(state_file, provenance={"dense_path": str(dense.path), "dense_key": dense.key,
                                          "dense_primary": dense.primary, "model_fingerprint": dense.model_fingerprint})


def results_table(grid, target: RatioTarget, dense_primary: float, modules: pd.DataFrame,
                  candidate_of: Callable[[dict], dict | None]) -> pd.DataFrame:
    """One :class:`TrialRecord` per trial of a Tune ``ResultGrid``, from the trial's last report.
    A trial that failed before its first report keeps the candidate its Tune config gave it
    (``candidate_of(config)``), with the ratios of that plan on ``modules``."""
    from ..trials.trainable import candidate_fields
    from .heuristic import plan_ratio

    records = []
    for result in grid:
        report = result.metrics or {}
        status = "error" if result.error else ("completed" if report.get("phase") == "final" else "stopped")
        fallback = {"dense_primary": dense_primary}
        given = candidate_of(result.config or {}) if "plan_json" not in report else None
        if given:
            plan = CompressionPlan.from_dict(given["plan"])
            fallback |= {f"ratio_{c}": plan_ratio(plan, modules, c) for c in CONVENTIONS} | candidate_fields(given)
        record = TrialRecord.from_report(
            report, trial_id=report.get("trial_id") or Path(result.path).name, status=status,
            error=(str(result.error).strip().splitlines() or [""])[-1] if result.error else "", fallback=fallback)
        records.append(dataclasses.replace(record, meets_target=bool(target.is_met(getattr(record, target.column)))))
    return records_frame(records)
