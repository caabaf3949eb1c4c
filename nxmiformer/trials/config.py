"""Configuration of dense warm starts and compression trials."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NxmiError
from .data import TaskInfo, describe_task

CACHE_ENV = "NXMI_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$NXMI_CACHE_DIR``, else ``~/.cache/nxmiformer``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nxmiformer")


def _positive_int(name: str, value, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a non-negative" if allow_zero else "a positive"
        raise NxmiError(f"{name} must be {what} integer{' or None' if allow_none else ''}, got {value!r}")


def _positive_float(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise NxmiError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = ("fp32, or bf16: the training forward under bf16 autocast (matmuls in bf16; weights, fake-quant, "
                  "losses, ADMM and optimizer in fp32); evaluation stays fp32")


def check_precision(precision) -> None:
    if precision not in PRECISIONS:
        raise NxmiError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def check_device(device) -> None:
    """A device name nxmiformer accepts: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    ok = isinstance(device, str) and (device in ("cpu", "cuda", "auto") or
                                      (device.startswith("cuda:") and device[5:].isdigit()))
    if not ok:
        raise NxmiError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}")


TASK_HELP = ("a GLUE task (cola sst2 mrpc qqp stsb mnli qnli rte wnli), or a name for your own data (default: sst2 "
             "without --train-file or --dataset; with them, named after the data)")


@dataclass(frozen=True)
class DataConfig:
    """Which data a run sees. Shared by the dense warm start and the trials.

    The task is a GLUE preset (``task``, its files under ``data_dir`` or from the hub) or the
    user's own data (``train_file`` and ``validation_file``, or ``dataset``, with their columns and
    ``metric``): :attr:`task_info` is its description (:func:`~nxmiformer.trials.data.describe_task`),
    read from the data once and checked when the config is made, so bad data fails at once."""

    task: str | None = field(default=None, metadata={"help": TASK_HELP})
    data_dir: str | None = field(default=None, metadata={"help": "GLUE parquet directory (else $NXMI_GLUE_DIR, else the hub)"})
    train_file: str | None = field(default=None, metadata={
        "help": "your training rows: a CSV, TSV, JSON Lines or Parquet file (with --validation-file)"})
    validation_file: str | None = field(default=None, metadata={
        "help": "your validation rows, in the training file's format: reported, never decided on"})
    dataset: str | None = field(default=None, metadata={
        "help": "your data through datasets.load_dataset: NAME[:CONFIG], a hub name or a local folder"})
    train_split: str = field(default="train", metadata={"help": "--dataset: its training split"})
    validation_split: str = field(default="validation", metadata={"help": "--dataset: its validation split"})
    text_columns: tuple[str, ...] | None = field(default=None, metadata={
        "help": "your data: the text column, or a pair A,B (default: text, sentence or sentence1,sentence2)"})
    label_column: str | None = field(default=None, metadata={
        "help": "your data: the column of labels (strings or integers: classes; floats: a regression) (default: label)"})
    metric: str | None = field(default=None, metadata={
        "help": "the primary metric: accuracy, f1 (two classes), macro_f1 or mcc; pearson or spearman for a "
                "regression (default: accuracy, pearson; a GLUE task's own)"})
    max_length: int = field(default=128, metadata={"help": "truncation length in tokens"})
    train_size: int | None = field(default=None, metadata={"help": "training rows to draw (None: all)"})
    eval_size: int | None = field(default=None, metadata={"help": "rows of each validation split (None: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the row draws"})
    holdout_size: int = field(default=0, metadata={"help": "training rows set aside (e.g. the search's calibration rows)"})
    selection_size: int = field(default=0, metadata={
        "help": "training rows set aside after those for selection: the rows a search decides on (0: none)"})

    def __post_init__(self):
        for name in ("train_file", "validation_file"):  # absolute: trials on other workers read the same files
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(Path(getattr(self, name)).expanduser().resolve()))
        if self.dataset is not None and Path(self.dataset.partition(":")[0]).expanduser().exists():
            object.__setattr__(self, "dataset", str(Path(self.dataset).expanduser().resolve()))
        if isinstance(self.text_columns, (str, list)):
            object.__setattr__(self, "text_columns", tuple(c.strip() for c in (
                self.text_columns.split(",") if isinstance(self.text_columns, str) else self.text_columns)))
        own = self.train_file is not None or self.validation_file is not None or self.dataset is not None
        if self.task is None and not own:
            object.__setattr__(self, "task", "sst2")
        object.__setattr__(self, "task", self.task_info.name)  # a user's task: named after its data
        _positive_int("holdout_size", self.holdout_size, allow_zero=True)
        _positive_int("selection_size", self.selection_size, allow_zero=True)
        _positive_int("max_length", self.max_length)
        _positive_int("train_size", self.train_size, allow_none=True)
        _positive_int("eval_size", self.eval_size, allow_none=True)
        if self.data_dir is not None:
            # absolute, so Ray workers (whose working directory differs) find the same files
            object.__setattr__(self, "data_dir", str(Path(self.data_dir).expanduser().resolve()))

    @property
    def task_info(self) -> TaskInfo:
        """The task's description (cached by the data's paths and modification times)."""
        return describe_task(self.task, train_file=self.train_file, validation_file=self.validation_file,
                             dataset=self.dataset, train_split=self.train_split,
                             validation_split=self.validation_split, text_columns=self.text_columns,
                             label_column=self.label_column, metric=self.metric)


@dataclass(frozen=True)
class DenseConfig:
    """Hyper-parameters of the dense task fine-tune that every trial starts from."""

    model: str = field(default="default", metadata={"help": "'default' (embedded MiniLM), a directory, or a hub name"})
    finetuned: bool = field(default=False, metadata={
        "help": "the model is already fine-tuned for this task: it is the warm start and the reference of every "
                "retention figure as it is (no dense fine-tune); its head must fit the task's labels"})
    epochs: float = field(default=1.0, metadata={"help": "epochs over the training rows"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps; overrides epochs when given"})
    batch_size: int = field(default=32, metadata={"help": "batch size"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (linear warm-up and decay)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "share of the steps spent warming up the learning rate"})
    patience: int = field(default=0, metadata={"help": (
        "with selection rows: evaluations (4 per epoch) without a lower selection loss before stopping early, "
        "keeping the best; epochs/steps is then the bound (0: train them all)")})
    device: str = field(default="auto", metadata={
        "help": "cpu, cuda[:N] or auto (CUDA where this process sees a GPU); not part of the cache key"})
    precision: str = field(default="fp32", metadata={"help": PRECISION_HELP})

    def __post_init__(self):
        if self.model != "default" and Path(self.model).expanduser().exists():
            object.__setattr__(self, "model", str(Path(self.model).expanduser().resolve()))
        _positive_float("epochs", self.epochs)
        _positive_int("steps", self.steps, allow_none=True, allow_zero=True)
        _positive_int("batch_size", self.batch_size)
        _positive_float("lr", self.lr)
        _positive_int("patience", self.patience, allow_zero=True)
        check_device(self.device)
        check_precision(self.precision)


# per ADMM mode: what None means for TrialConfig's rho, rho_max, rho_growth and admm_interval
ADMM_DEFAULTS = {
    "penalty": {"rho": 1e-3, "rho_max": 1.0, "rho_growth": 1.3, "interval": 20},
    "decoupled": {"rho": 1e-4, "rho_max": 0.7, "rho_growth": None, "interval": None},
}


@dataclass(frozen=True)
class TrialConfig:
    """One compression fine-tune: ADMM phase, hard projection, masked QAT phase.

    ``steps`` optimizer steps in all; the first ``round(admm_fraction * steps)`` run ADMM with
    STE fake-quantization, then the weights are hardened (masks frozen) and the rest run masked
    QAT. ``steps=0`` is one-shot projection; ``admm_fraction=0`` is masked QAT without ADMM.
    """

    data: DataConfig = field(default_factory=DataConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    steps: int = field(default=600, metadata={"help": "optimizer steps in all (ADMM phase + masked QAT)"})
    batch_size: int = field(default=32, metadata={"help": "batch size"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    admm_fraction: float = field(default=0.5, metadata={"help": "share of the steps spent in the ADMM phase"})
    # ADMM (compression/admm.py). Measured on bench/recovery.py (SST-2, 600 steps): the penalty form
    # (penalty in the loss, Adam-normalised: W stays near the dense weights, so the ADMM phase is a
    # soft-mask STE phase) recovers best at every ratio, although it does not reach the set; the
    # decoupled form reaches it (distance ~1e-4, masks 100%) but retained 0.9-3.4 points less.
    admm_mode: str = field(default="penalty", metadata={"help": "penalty (in the loss) or decoupled (proximal step after the optimizer, reaches the set)"})
    rho: float | None = field(default=None, metadata={"help": "initial rho (None: 1e-3 penalty, 1e-4 decoupled)"})
    rho_max: float | None = field(default=None, metadata={"help": "cap on rho (None: 1.0 penalty, 0.7 decoupled)"})
    rho_growth: float | None = field(default=None, metadata={"help": "rho factor per Z-step (None: 1.3 penalty; decoupled: geometric from rho to rho_max)"})
    admm_interval: int | None = field(default=None, metadata={"help": "steps between Z-steps (None: 20 penalty; decoupled: from admm_updates)"})
    admm_updates: int = field(default=10, metadata={"help": "decoupled: Z-steps in the ADMM phase (fewer when it is shorter)"})
    # measured by bench/recovery.py on SST-2: KD did not help (87.5%: 99.21% vs 99.74%; 93.75%: 98.81% vs 98.94%)
    kd_alpha: float = field(default=0.0, metadata={"help": "weight of the distillation loss from the dense model (0: off)"})
    kd_temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the distillation loss"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0: at phase ends only)"})
    eval_at: tuple[int, ...] = field(default=(), metadata={"help": "comma-separated steps to evaluate at as well (e.g. ASHA's rung)"})
    threads: int | None = field(default=None, metadata={"help": "torch threads (None: leave as is)"})
    cache_dir: str | None = field(default=None, metadata={"help": "where dense warm starts are cached"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda[:N] or auto (CUDA where this process sees a GPU)"})
    precision: str = field(default="fp32", metadata={"help": PRECISION_HELP})
    seed: int | None = field(default=None, metadata={"help": "the trial's batch order and init (None: the data seed)"})

    def __post_init__(self):
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", DataConfig(**self.data))
        if isinstance(self.dense, dict):
            object.__setattr__(self, "dense", DenseConfig(**self.dense))
        _positive_int("steps", self.steps, allow_zero=True)
        _positive_int("batch_size", self.batch_size)
        _positive_float("lr", self.lr)
        _positive_float("weight_decay", self.weight_decay, allow_zero=True)
        if not (isinstance(self.admm_fraction, (int, float)) and 0 <= self.admm_fraction <= 1):
            raise NxmiError(f"admm_fraction must be in [0, 1], got {self.admm_fraction!r}")
        _positive_int("admm_interval", self.admm_interval, allow_none=True)
        _positive_int("admm_updates", self.admm_updates)
        if self.admm_mode not in ADMM_DEFAULTS:
            raise NxmiError(f"admm_mode must be one of {', '.join(ADMM_DEFAULTS)}, got {self.admm_mode!r}")
        admm = self.admm_settings()
        _positive_float("rho", admm["rho"])
        _positive_float("rho_max", admm["rho_max"])
        if admm["rho_growth"] is not None and not admm["rho_growth"] >= 1:
            raise NxmiError(f"rho_growth must be >= 1, got {admm['rho_growth']!r}")
        if not admm["rho_max"] >= admm["rho"]:
            raise NxmiError(f"rho_max must be >= rho ({admm['rho']}), got {admm['rho_max']!r}")
        if self.admm_mode == "decoupled" and admm["rho_max"] > 1:
            raise NxmiError(f"rho_max must be <= 1 with admm_mode=decoupled (a fraction per step), got {admm['rho_max']!r}")
        check_device(self.device)
        check_precision(self.precision)
        if not (isinstance(self.kd_alpha, (int, float)) and 0 <= self.kd_alpha <= 1):
            raise NxmiError(f"kd_alpha must be in [0, 1], got {self.kd_alpha!r}")
        _positive_float("kd_temperature", self.kd_temperature)
        _positive_int("eval_every", self.eval_every, allow_zero=True)
        raw = self.eval_at.split(",") if isinstance(self.eval_at, str) else self.eval_at
        try:
            eval_at = tuple(sorted({int(s) for s in raw if str(s).strip()}))
        except ValueError:
            raise NxmiError(f"eval_at must be step numbers, got {self.eval_at!r}") from None
        object.__setattr__(self, "eval_at", eval_at)
        _positive_int("threads", self.threads, allow_none=True)

    def admm_settings(self) -> dict[str, Any]:
        """``rho``, ``rho_max``, ``rho_growth`` and ``interval`` with the mode's defaults filled in
        (``rho_growth``/``interval`` stay ``None`` in decoupled mode unless given: the phase
        schedule of :meth:`ADMM.for_phase` then sets them)."""
        defaults = ADMM_DEFAULTS[self.admm_mode]
        given = {"rho": self.rho, "rho_max": self.rho_max, "rho_growth": self.rho_growth, "interval": self.admm_interval}
        return {k: (v if v is not None else defaults[k]) for k, v in given.items()}

    @property
    def admm_steps(self) -> int:
        return int(round(self.admm_fraction * self.steps))

    def replace(self, **changes) -> "TrialConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NxmiError(f"unknown trial config key(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**data)
