"""GLUE data: the task registry, loading, tokenisation, subsampling and data loaders.

Every GLUE task is named by its ``glue`` config name (``cola``, ``sst2``, ...). Data comes
either from a local directory laid out as ``<data_dir>/<task>/<split>.parquet`` in the schema of
the Hugging Face ``glue`` dataset (text column(s), ``label``, ``idx``), or from the hub when no
directory is given. Both paths return the same :class:`datasets.DatasetDict`, so everything
downstream is identical.

Typical use::

    data = prepare_task_data("mrpc", tokenizer, data_dir="path/to/glue", train_size=2000)
    train_loader = make_dataloader(data.train, tokenizer, batch_size=32, shuffle=True, seed=0)
    for split, ds in data.eval.items():
        loader = make_dataloader(ds, tokenizer, batch_size=64)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import datasets
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from nxmiformer.errors import NxmiError
from nxmiformer.models import first_line, hub_errors, quiet_hub

__all__ = [
    "GLUE_DIR_ENV",
    "HUB_DATASET",
    "TASKS",
    "GlueData",
    "TaskInfo",
    "get_task",
    "load_glue",
    "make_dataloader",
    "prepare_task_data",
    "subsample",
    "tokenize_dataset",
]

#: Environment variable read by :func:`load_glue` when no ``data_dir`` is passed.
GLUE_DIR_ENV = "NXMI_GLUE_DIR"
#: Hub dataset used when neither ``data_dir`` nor :data:`GLUE_DIR_ENV` is set.
HUB_DATASET = "nyu-mll/glue"

_LABEL_COLUMN = "label"
_INDEX_COLUMN = "idx"


@dataclass(frozen=True)
class TaskInfo:
    """What the rest of the code needs to know about one GLUE task.

    All GLUE metrics are "higher is better".
    """

    name: str = field(metadata={"help": "The `glue` config name, e.g. 'mrpc'."})
    text_columns: tuple[str, ...] = field(
        metadata={"help": "One column (single sentence) or two (sentence pair), in order."}
    )
    num_labels: int = field(metadata={"help": "Classifier outputs; 1 for regression (stsb)."})
    validation_splits: tuple[str, ...] = field(
        metadata={"help": "Labelled evaluation split(s); mnli has matched and mismatched."}
    )
    metric_names: tuple[str, ...] = field(
        metadata={"help": "Keys that `compute_metrics` returns for this task (besides 'primary')."}
    )
    primary_metric: str = field(
        metadata={"help": "The metric that ranks models; one of `metric_names`."}
    )

    def __post_init__(self) -> None:
        if len(self.text_columns) not in (1, 2):
            raise NxmiError(
                f"task {self.name!r}: text_columns must hold 1 or 2 names, "
                f"got {self.text_columns!r}"
            )
        if self.num_labels < 1:
            raise NxmiError(f"task {self.name!r}: num_labels must be >= 1, got {self.num_labels}")
        if not self.validation_splits:
            raise NxmiError(f"task {self.name!r}: validation_splits must not be empty")
        if self.primary_metric not in self.metric_names:
            raise NxmiError(
                f"task {self.name!r}: primary_metric {self.primary_metric!r} is not one of "
                f"{self.metric_names!r}"
            )

    @property
    def is_regression(self) -> bool:
        """True for stsb: one float output, float labels, MSE loss."""
        return self.num_labels == 1

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a split file must hold (``idx`` is optional)."""
        return (*self.text_columns, _LABEL_COLUMN)


_ACCURACY = ("accuracy",)
# GLUE leaderboard convention: the task score of mrpc/qqp is the mean of F1 and accuracy, of stsb
# the mean of Pearson and Spearman; "combined" is that mean and ranks models for those tasks.
_ACC_F1 = ("accuracy", "f1", "combined")
_CORRELATIONS = ("pearson", "spearmanr", "combined")
_VAL = ("validation",)

_REGISTRY: dict[str, TaskInfo] = {
    info.name: info
    for info in (
        TaskInfo("cola", ("sentence",), 2, _VAL, ("mcc",), "mcc"),
        TaskInfo("sst2", ("sentence",), 2, _VAL, _ACCURACY, "accuracy"),
        TaskInfo("mrpc", ("sentence1", "sentence2"), 2, _VAL, _ACC_F1, "combined"),
        TaskInfo("qqp", ("question1", "question2"), 2, _VAL, _ACC_F1, "combined"),
        TaskInfo("stsb", ("sentence1", "sentence2"), 1, _VAL, _CORRELATIONS, "combined"),
        TaskInfo(
            "mnli",
            ("premise", "hypothesis"),
            3,
            ("validation_matched", "validation_mismatched"),
            _ACCURACY,
            "accuracy",
        ),
        TaskInfo("qnli", ("question", "sentence"), 2, _VAL, _ACCURACY, "accuracy"),
        TaskInfo("rte", ("sentence1", "sentence2"), 2, _VAL, _ACCURACY, "accuracy"),
        TaskInfo("wnli", ("sentence1", "sentence2"), 2, _VAL, _ACCURACY, "accuracy"),
    )
}

#: All GLUE task names, in the GLUE benchmark's order.
TASKS: tuple[str, ...] = tuple(_REGISTRY)


def get_task(task: str | TaskInfo) -> TaskInfo:
    """Return the :class:`TaskInfo` for a GLUE config name (a ``TaskInfo`` passes through).

    Raises:
        NxmiError: the name is not a GLUE task; the message lists the tasks.
    """
    if isinstance(task, TaskInfo):
        return task
    try:
        return _REGISTRY[task]
    except (KeyError, TypeError):
        raise NxmiError(
            f"unknown GLUE task {task!r}; choose one of: {', '.join(TASKS)}"
        ) from None


def _resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    if data_dir is None:
        data_dir = os.environ.get(GLUE_DIR_ENV) or None
    return None if data_dir is None else Path(data_dir)


def _hub_unavailable(info: TaskInfo, exc: BaseException) -> NxmiError:
    """The one-line error for a GLUE task the hub cannot serve: what was tried and the fixes."""
    offline = bool(datasets.config.HF_HUB_OFFLINE)  # HF_DATASETS_OFFLINE, else HF_HUB_OFFLINE
    if offline:
        state = "offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) and it is not in the Hugging Face cache"
    else:
        state = f"no network or hub unreachable at {datasets.config.HF_ENDPOINT}"
    return NxmiError(
        f"cannot load GLUE {info.name} from the Hugging Face hub ({HUB_DATASET}; {state}: {first_line(exc)}); "
        f"pass --data-dir DIR with {info.name}/<split>.parquet files, or set ${GLUE_DIR_ENV}, or fill the "
        f"Hugging Face cache once online and use it with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"
    )


def load_glue(
    task: str | TaskInfo,
    data_dir: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Load raw (untokenised) splits of a GLUE task.

    Args:
        task: A GLUE config name (see :data:`TASKS`) or a :class:`TaskInfo`.
        data_dir: Directory holding ``<task>/<split>.parquet`` files in the hub's ``glue`` schema.
            Falls back to the ``NXMI_GLUE_DIR`` environment variable; when neither is set the
            task is loaded from the hub (``nyu-mll/glue``), which needs network access.
        splits: Split names to load. Default: ``"train"`` plus the task's validation split(s).

    Returns:
        A ``DatasetDict`` keyed by split name, columns as in the hub's ``glue`` dataset.

    Raises:
        NxmiError: unknown task; the task directory or a split file is missing (the message names
            the path); a split file lacks required columns (the message names them and the file);
            the hub cannot serve the task (no network, unreachable endpoint, offline mode without
            a cached copy): one line naming the task and ``--data-dir`` / ``$NXMI_GLUE_DIR``.
    """
    info = get_task(task)
    splits = ("train", *info.validation_splits) if splits is None else tuple(splits)
    if not splits:
        raise NxmiError("splits must name at least one split, got an empty sequence")
    root = _resolve_data_dir(data_dir)
    if root is None:
        try:
            with quiet_hub():
                hub = datasets.load_dataset(HUB_DATASET, info.name)
        except hub_errors() as exc:
            raise _hub_unavailable(info, exc) from exc
        return datasets.DatasetDict({split: hub[split] for split in splits})

    task_dir = root / info.name
    if not task_dir.is_dir():
        raise NxmiError(
            f"GLUE task directory {str(task_dir)!r} does not exist; expected "
            f"<data_dir>/{info.name}/<split>.parquet files under data_dir={str(root)!r}"
        )
    data_files = {}
    for split in splits:
        path = task_dir / f"{split}.parquet"
        if not path.is_file():
            present = sorted(p.stem for p in task_dir.glob("*.parquet"))
            raise NxmiError(
                f"GLUE split file {str(path)!r} does not exist; splits present for "
                f"{info.name!r}: {present}"
            )
        # Check the schema before `datasets` converts the file, so a wrong file fails fast and
        # with a message that says what is wrong with it.
        present_columns = set(pq.read_schema(path).names)
        missing = [c for c in info.columns if c not in present_columns]
        if missing:
            raise NxmiError(
                f"GLUE split file {str(path)!r} lacks column(s) {missing} needed by task "
                f"{info.name!r} (it has {sorted(present_columns)})"
            )
        data_files[split] = str(path)
    return datasets.load_dataset("parquet", data_files=data_files)


def tokenize_dataset(
    ds: datasets.Dataset | datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    task: str | TaskInfo,
    max_length: int = 128,
) -> datasets.Dataset | datasets.DatasetDict:
    """Tokenise a GLUE split (or all splits of a ``DatasetDict``) for a sequence classifier.

    Text column(s) go through ``tokenizer`` (as a pair for two-sentence tasks) with truncation to
    ``max_length`` and *no* padding: :func:`make_dataloader` pads each batch to its own longest
    row. ``label`` becomes ``labels`` (float32 for stsb, int64 otherwise); text columns and ``idx``
    are dropped, so the result holds only tokenizer outputs and ``labels``.
    """
    info = get_task(task)
    if not isinstance(max_length, int) or max_length < 2:
        raise NxmiError(f"max_length must be an int >= 2, got {max_length!r}")
    label_dtype = "float32" if info.is_regression else "int64"

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[column] for column in info.text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        encoded["labels"] = batch[_LABEL_COLUMN]
        return encoded

    if isinstance(ds, datasets.DatasetDict):
        return datasets.DatasetDict(
            {split: tokenize_dataset(d, tokenizer, info, max_length) for split, d in ds.items()}
        )
    drop = [c for c in (*info.text_columns, _LABEL_COLUMN, _INDEX_COLUMN) if c in ds.column_names]
    tokenized = ds.map(encode, batched=True, remove_columns=drop, desc=f"tokenize {info.name}")
    return tokenized.cast_column("labels", datasets.Value(label_dtype))


def subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """Return ``n`` rows of ``ds`` drawn without replacement; the same seed gives the same rows.

    ``n=None`` or ``n >= len(ds)`` returns ``ds`` unchanged.
    """
    if n is None:
        return ds
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise NxmiError(f"subsample size must be a positive int or None, got {n!r}")
    if n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n)).flatten_indices()


def make_dataloader(
    tokenized_ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over a :func:`tokenize_dataset` result with per-batch dynamic padding.

    Each batch is padded (by ``transformers.DataCollatorWithPadding``) to the longest row in that
    batch and returned as tensors. With ``shuffle=True`` the order comes from a
    ``torch.Generator`` seeded with ``seed``, so two loaders built alike iterate alike.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NxmiError(f"batch_size must be a positive int, got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        tokenized_ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=DataCollatorWithPadding(tokenizer, return_tensors="pt"),
    )


@dataclass(frozen=True)
class GlueData:
    """Tokenised splits of one GLUE task, ready for :func:`make_dataloader`.

    ``eval`` maps each validation split name to its data, in the task's order: one entry
    (``"validation"``) for most tasks, two for mnli (``"validation_matched"``,
    ``"validation_mismatched"``); metrics are computed per entry.
    """

    task: TaskInfo
    train: datasets.Dataset | None
    eval: Mapping[str, datasets.Dataset]
    holdout: datasets.Dataset | None = None
    selection: datasets.Dataset | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval", MappingProxyType(dict(self.eval)))


def prepare_task_data(
    task: str | TaskInfo,
    tokenizer: PreTrainedTokenizerBase,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    max_length: int = 128,
    train_size: int | None = None,
    eval_size: int | None = None,
    seed: int = 0,
    include_train: bool = True,
    holdout_size: int = 0,
    selection_size: int = 0,
) -> GlueData:
    """Load, subsample and tokenise a GLUE task's train and validation split(s).

    Args:
        task: A GLUE config name or :class:`TaskInfo`.
        tokenizer: The model's tokenizer.
        data_dir: See :func:`load_glue` (falls back to ``NXMI_GLUE_DIR``, then the hub).
        max_length: Truncation length in tokens.
        train_size: Rows of train to keep (``None``: all), drawn with ``seed``.
        eval_size: Rows of *each* validation split to keep (``None``: all), drawn with ``seed``.
        seed: Seed for the subsets.
        include_train: ``False`` loads only the validation split(s); ``train`` is then ``None``
            (e.g. for sensitivity profiling, which only evaluates).
        holdout_size: rows of the training split set aside (drawn first with ``seed``) as
            ``holdout``, e.g. the search's calibration rows; ``train`` is then drawn from the
            remaining rows, so the two never overlap. ``0`` changes nothing.
        selection_size: rows of the training split after the holdout rows (same shuffle) set
            aside as ``selection``: the rows a search decides on. Disjoint from ``holdout`` and
            ``train``; the holdout rows do not depend on it.

    Subsampling happens before tokenisation, so a small subset of a large split is cheap.
    """
    info = get_task(task)
    for name, value in (("holdout_size", holdout_size), ("selection_size", selection_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise NxmiError(f"{name} must be a non-negative int, got {value!r}")
    need_train = include_train or holdout_size > 0 or selection_size > 0
    splits = (("train",) if need_train else ()) + info.validation_splits
    raw = load_glue(info, data_dir=data_dir, splits=splits)
    tokenized = {
        split: tokenize_dataset(subsample(raw[split], eval_size, seed), tokenizer, info, max_length)
        for split in info.validation_splits
    }
    train = holdout = selection = None
    if need_train:
        full = raw["train"]
        held = holdout_size + selection_size
        if held:
            if held >= len(full):
                raise NxmiError(f"holdout_size {holdout_size} + selection_size {selection_size} leave no training rows: "
                                f"the split has {len(full)}")
            shuffled = full.shuffle(seed=seed)

            def rows(start: int, stop: int) -> datasets.Dataset:
                return tokenize_dataset(shuffled.select(range(start, stop)).flatten_indices(), tokenizer, info, max_length)

            holdout = rows(0, holdout_size) if holdout_size else None
            selection = rows(holdout_size, held) if selection_size else None
            rest = len(full) - held
            n = rest if train_size is None else min(train_size, rest)
            full = shuffled.select(range(held, held + n)).flatten_indices()
            train_size = None
        if include_train:
            train = tokenize_dataset(subsample(full, train_size, seed), tokenizer, info, max_length)
    return GlueData(
        task=info,
        train=train,
        eval={split: tokenized[split] for split in info.validation_splits},
        holdout=holdout,
        selection=selection,
    )
