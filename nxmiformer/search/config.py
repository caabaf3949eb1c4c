"""What a search is asked to do: :class:`SearchConfig` (every field an ``nxmi search`` flag of the
same name), its named presets, and reading it back from a search's ``search.json`` to resume it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.pareto import check_prior_weight
from ..compression import RatioTarget
from ..compression.accounting import parse_targets
from ..errors import NxmiError
from ..outputs import write_json
from ..records import HIGHER_IS_BETTER
from ..trials.config import (
    PRECISION_HELP, TASK_HELP, DataConfig, DenseConfig, TrialConfig, check_device, check_precision, default_cache_dir,
)
from .profile import PROXIES, menu_for, parse_menu

# search.json's layout and the trials' Tune configs: a search of another version is not resumed
# (3: the probe, learning-stage, anchored/halfway and refine-fill options are gone)
STATE_VERSION = 3
OBJECTIVES = ("selection_primary", "selection_loss", "selection_loss_calibrated", "selection_kl")


def _help(text: str) -> dict:
    return {"help": text}


def _of(cls, name: str) -> dict:
    """The metadata (help) of ``cls``'s field ``name``: one text for a flag two configs share."""
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)


@dataclass(frozen=True)
class Preset:
    """Named :class:`SearchConfig` field values; fields given explicitly override them."""

    description: str
    fields: dict


PRESETS = {
    # 3 knapsack-stage trials and nothing else: the learning stage it ran until 2026-12-07 fitted noise with
    # 1-3 trials and cost about 2 minutes of the demo; the Optuna stage took 2:07 of a 10:42 demo (docs/decisions.md)
    "quick": Preset("a search of about 5 minutes on 2 cores (3 candidates a target x 60 steps)",
                    {"trials": 3, "refine_trials": 0, "steps": 60, "train_size": 2000, "eval_size": 300,
                     "selection_size": 300, "calib_size": 128, "max_length": 64, "dense_epochs": 1.0}),
}


@dataclass(frozen=True)
class SearchConfig:
    """A search for plans with encoder compression >= ``target_ratio`` (under ``convention``).

    The fields a user sets every day are ``nxmi search`` flags of the same name (``--target-ratio``
    ...), with the ``help`` of their metadata, in the groups of ``nxmiformer.cli.SEARCH_GROUPS``;
    the rest (``kinds``, ``objective``, ``prior_weight``, ``concurrency``, ...) are set here, in
    Python, and have defaults chosen by measurement (docs/decisions.md)."""

    out: str = field(metadata=_help("storage path of the search (results, Tune experiments, search.json)"))
    task: str | None = field(default=None, metadata=_help(TASK_HELP))
    target_ratio: tuple[float, ...] = field(default=0.875, metadata=_help(
        "minimum encoder compression ratio, in (0, 1); several for a front in one search: a list (0.875,0.9375,0.96875) "
        "or LOW:HIGH:COUNT (0.85:0.97:6), each target with its own candidates and choice"))
    convention: str = field(default="paper", metadata=_help("ratio convention: paper or storage"))
    model: str = field(default="default", metadata=_help("'default' (embedded MiniLM), a directory, or a hub name"))
    finetuned: bool = field(default=False, metadata=_of(DenseConfig, "finetuned"))
    data_dir: str | None = field(default=None, metadata=_help(
        "directory of <task>/<split>.parquet (default: $NXMI_GLUE_DIR, else the hub)"))
    # the user's own data: DataConfig's fields of the same names
    train_file: str | None = field(default=None, metadata=_of(DataConfig, "train_file"))
    validation_file: str | None = field(default=None, metadata=_of(DataConfig, "validation_file"))
    dataset: str | None = field(default=None, metadata=_of(DataConfig, "dataset"))
    train_split: str = field(default="train", metadata=_of(DataConfig, "train_split"))
    validation_split: str = field(default="validation", metadata=_of(DataConfig, "validation_split"))
    text_columns: tuple[str, ...] | None = field(default=None, metadata=_of(DataConfig, "text_columns"))
    label_column: str | None = field(default=None, metadata=_of(DataConfig, "label_column"))
    metric: str | None = field(default=None, metadata=_of(DataConfig, "metric"))
    max_length: int = field(default=64, metadata=_help("truncation length in tokens"))
    train_size: int | None = field(default=4000, metadata=_help("training rows to draw (None: all)"))
    eval_size: int | None = field(default=500, metadata=_help(
        "rows of each validation split (None: all): evaluated for the record and the report, never to decide"))
    selection_size: int = field(default=500, metadata=_help(
        "training rows held out as selection rows: what ASHA, the stages and the choice of the best plan decide on"))
    # the default by measurement (docs/decisions.md): over the bench cells that record it, it ranks the trials
    # closer to their validation metric than selection_primary does, and each arm's choice on it falls no further
    # below the arm's best trial (rule set before the fifth cell)
    objective: str = field(default="selection_loss_calibrated", metadata=_help(
        "what the search decides on, on the selection rows: selection_primary, selection_loss, "
        "selection_loss_calibrated or selection_kl"))
    # 1 by measurement since 2026-12-02 (docs/decisions.md): over the 15 bench cells that record the calibrated
    # loss it ranks the trials closer to their validation metric than the objective alone, and the choices fall no
    # further below the best trial (rule stated before two cells ran)
    prior_weight: float = field(default=1.0, metadata=_help(
        "the choice of the best plan: rank the trials by z(objective) - prior_weight * z(proxy cost of the plan), "
        "z-scores over the completed trials: a prior for the plans the --proxy rates cheaper (0: the objective alone)"))
    seed: int = field(default=0, metadata=_help("seed of the row draws and of Optuna's sampler"))
    trials: int = field(default=8, metadata=_help("candidate plans to train as short trials, per target"))
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
    # fine is the default by measurement (docs/decisions.md): its plans beat the best uniform/grid plan in most
    # cells at 93.75% and 96.875%, and the former auto menu's plans on SST-2 at both targets
    menu: str = field(default="fine", metadata=_help(
        "the option menu when --options is not given: fine (every N:M pattern of 1:8 to 3:4 and dense at 2, 3, 4 "
        "and 8 bits, floats at half density or more, within a factor 2 of the target's bits per weight) or kernel "
        "(2:4 and dense at 8/16 bits: what sparse GPU kernels accelerate)"))
    # measured (same runs): rank correlation with the trials' selection loss 0.17 / 0.83 for fisher,
    # 0.04 / 0.77 for oneshot (93.75% / 96.875%)
    proxy: str = field(default="fisher", metadata=_help(
        "the sensitivity the candidates are built on: fisher (Fisher-weighted projection error) or oneshot "
        "(calibration-loss rise of a one-shot projection: a forward per module x option)"))
    oneshot_profile: bool = field(default=False, metadata=_help(
        "also measure the oneshot proxy when --proxy is fisher (a forward per module x option: nearly all of the "
        "profile's cost), so that both proxies' rank correlations are stored with the search"))
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
        "candidate kinds to train, comma-separated, some of optimal,diverse,grid,uniform"))
    refine_trials: int = field(default=0, metadata=_help(
        "stage 2: this many Optuna-sampled per-group plans, seeded with the candidates' results"))
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
        data = self.data_config()  # validates the task and reads the user's data once
        for name in ("task", "data_dir", "train_file", "validation_file", "dataset", "text_columns"):
            # a user's task named after its data; paths absolute, so trials on other workers, --resume from
            # elsewhere and exported commands read the same files
            object.__setattr__(self, name, getattr(data, name))
        targets = parse_targets(self.target_ratio)
        # one target stays a number (search.json, plans' meta and the API read it so), several a tuple
        object.__setattr__(self, "target_ratio", targets[0] if len(targets) == 1 else targets)
        self.target  # validates the convention
        if self.objective not in OBJECTIVES:
            raise NxmiError(f"unknown objective {self.objective!r}; allowed: {', '.join(OBJECTIVES)}")
        check_prior_weight(self.prior_weight)
        if isinstance(self.selection_size, bool) or not isinstance(self.selection_size, int) or self.selection_size < 1:
            raise NxmiError(f"selection_size must be a positive integer, got {self.selection_size!r}")
        for name in ("trials", "cpus_per_trial", "batch_size", "calib_size", "refine_layer_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NxmiError(f"{name} must be a positive integer, got {value!r}")
        value = self.concurrency
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise NxmiError(f"concurrency must be a positive integer, got {value!r}")
        for name in ("steps", "refine_trials"):
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
        # each target's menu; the profile covers their union (``options``). Explicit --options serve every target
        menus = {t.value: parse_menu(self.options) if self.options is not None else menu_for(self.menu, 32 * (1 - t.value))
                 for t in self.targets}
        object.__setattr__(self, "_options_given", self.options is not None)
        object.__setattr__(self, "_menus", menus)
        object.__setattr__(self, "options", tuple(dict.fromkeys(o for menu in menus.values() for o in menu)))
        from .knapsack import KINDS

        raw = self.kinds.split(",") if isinstance(self.kinds, str) else self.kinds
        kinds = tuple(dict.fromkeys(str(k).strip() for k in raw if str(k).strip()))
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise NxmiError(f"unknown candidate kind(s) {bad or list(kinds)}; allowed: {', '.join(KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        if self.model != "default" and Path(self.model).expanduser().exists():
            object.__setattr__(self, "model", str(Path(self.model).expanduser().resolve()))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", str(Path(self.cache_dir).expanduser().resolve()))
        self.trial_config()

    @property
    def targets(self) -> tuple[RatioTarget, ...]:
        """Every target of the search, lowest first."""
        values = self.target_ratio if isinstance(self.target_ratio, tuple) else (self.target_ratio,)
        return tuple(RatioTarget(v, self.convention) for v in values)

    @property
    def target(self) -> RatioTarget:
        """The lowest target: the constraint of the Optuna stage, and every trial meets it."""
        return self.targets[0]

    def options_for(self, target: RatioTarget) -> tuple[str, ...]:
        """The option menu of one target (``--options`` if given, else the ``--menu`` for its bits per weight)."""
        return self._menus[target.value]

    def data_config(self) -> DataConfig:
        shared = {f.name for f in dataclasses.fields(DataConfig)} & {f.name for f in dataclasses.fields(self)}
        return DataConfig(**{name: getattr(self, name) for name in shared}, holdout_size=self.calib_size)

    def dense_config(self) -> DenseConfig:
        return DenseConfig(model=self.model, finetuned=self.finetuned, epochs=self.dense_epochs,
                           patience=self.dense_patience, device=self.device, precision=self.precision)

    def trial_config(self) -> TrialConfig:
        config = TrialConfig(data=self.data_config(), dense=self.dense_config(), steps=self.steps,
                             batch_size=self.batch_size, lr=self.lr, kd_alpha=self.kd_alpha, eval_every=0,
                             cache_dir=str(self.cache_root()), device=self.device, precision=self.precision)
        # evaluations at the projection, at ASHA's rung and at the end
        return config.replace(eval_at=(self.rung(config.admm_steps),))

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
        """The configuration as search.json stores it, with the task's description (``task_info``:
        columns, label names, metric, sources) beside it, the task record that travels with the work."""
        ratio = list(self.target_ratio) if isinstance(self.target_ratio, tuple) else self.target_ratio
        # options derived from --menu are stored as None, so that a resumed search derives each target's menu again
        return dataclasses.asdict(self) | {"target_ratio": ratio, "options": list(self.options) if self._options_given else None,
                                           "profiled_options": list(self.options), "kinds": list(self.kinds),
                                           "text_columns": list(self.text_columns) if self.text_columns else None,
                                           "task_info": self.data_config().task_info.to_dict()}

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


def update_state(state_file: Path, **fields) -> None:
    """Add (or replace) top-level ``fields`` of ``search.json``, atomically."""
    write_json(state_file, json.loads(state_file.read_text()) | fields)
