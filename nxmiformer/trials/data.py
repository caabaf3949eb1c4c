"""Task data: the task description, loading, tokenisation, subsampling and data loaders.

A task is a :class:`TaskInfo`: where the rows come from, the text column(s), the label column,
the label names (or a regression), and the primary metric. The GLUE tasks are built-in
descriptions named by their ``glue`` config name (``cola``, ``sst2``, ...), read from a local
directory laid out as ``<data_dir>/<task>/<split>.parquet`` in the schema of the Hugging Face
``glue`` dataset, or from the hub when no directory is given. A user's task is described by
:func:`describe_task` from a training and a validation file (CSV, TSV, JSON Lines or Parquet) or
from anything ``datasets.load_dataset`` reads. Every description loads into the same
:class:`datasets.DatasetDict`, so everything downstream is identical.

Typical use::

    info = describe_task(train_file="reviews/train.csv", validation_file="reviews/validation.csv")
    data = prepare_task_data(info, tokenizer, train_size=2000)
    train_loader = make_dataloader(data.train, tokenizer, batch_size=32, shuffle=True, seed=0)
    for split, ds in data.eval.items():
        loader = make_dataloader(ds, tokenizer, batch_size=64)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from nxmiformer.errors import NxmiError
from nxmiformer.models import first_line, hub_errors, quiet_hub

__all__ = [
    "CLASSIFICATION_METRICS",
    "GLUE_DIR_ENV",
    "REGRESSION_METRICS",
    "HUB_DATASET",
    "TASKS",
    "GlueData",
    "TaskInfo",
    "describe_task",
    "get_task",
    "load_glue",
    "load_task",
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


@dataclass(frozen=True)
class TaskInfo:
    """What the rest of the code needs to know about one task: a GLUE preset or a user's data.

    All metrics are "higher is better". A user's classification task lists its ``label_names``
    (the training file's label set, sorted): class id ``i`` is ``label_names[i]``, and saved
    models carry them as ``id2label``. GLUE presets leave them unset: their labels are ids.
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
    label_column: str = field(default=_LABEL_COLUMN, metadata={"help": "The column of labels or scores."})
    label_names: tuple[str, ...] | None = field(default=None, metadata={
        "help": "A user's class names, sorted (class id i is label_names[i]); None: labels are ids, or a regression."})
    source: str = field(default="glue", metadata={"help": "Where the rows come from: glue, files or dataset."})
    train_file: str | None = field(default=None, metadata={"help": "source files: the training file (absolute)."})
    validation_file: str | None = field(default=None, metadata={"help": "source files: the validation file."})
    dataset: str | None = field(default=None, metadata={
        "help": "source dataset: what datasets.load_dataset reads, NAME or NAME:CONFIG (a hub name or a folder)."})
    train_split: str = field(default="train", metadata={"help": "source dataset: its training split."})
    validation_split: str = field(default="validation", metadata={"help": "source dataset: its validation split."})

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
        return (*self.text_columns, self.label_column)

    @property
    def id2label(self) -> dict[int, str] | None:
        """The class names a saved model's config carries (None: GLUE ids, or a regression)."""
        return None if self.label_names is None else dict(enumerate(self.label_names))

    def to_dict(self) -> dict:
        """The description as JSON-ready values (the task record of ``search.json`` and plans)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "TaskInfo":
        names = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        return cls(**values)


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
            f"unknown GLUE task {task!r}; choose one of: {', '.join(TASKS)} (or give your own data: "
            f"--train-file and --validation-file, or --dataset)"
        ) from None


#: ``--metric`` choices of a user's task, by problem type (the first is the default).
CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")
# a file's extension -> the datasets builder that reads it, and its arguments
_READERS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\\t"}), ".jsonl": ("json", {}),
            ".json": ("json", {}), ".parquet": ("parquet", {})}
# default text columns, tried in order: one text, or a pair
_TEXT_DEFAULTS = (("text",), ("sentence",), ("sentence1", "sentence2"))


def _columns(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(c.strip() for c in (value.split(",") if isinstance(value, str) else value) if str(c).strip())
    if len(names) not in (1, 2):
        raise NxmiError(f"text columns must be one column or a pair, got {value!r}")
    return names


def _task_name(train_file: str | None, dataset: str | None) -> str:
    """A user's task is named after its data: the training file's stem (its folder's name when the
    stem says no more than 'train'), or the dataset's last path component and config."""
    if train_file:
        path = Path(train_file)
        return path.parent.name if path.stem.lower() in ("train", "training") and path.parent.name else path.stem
    name, _, config = str(dataset).partition(":")
    return Path(name).name + (f"-{config}" if config else "")


def _read_files(train_file: str | None, validation_file: str | None) -> datasets.DatasetDict:
    """The ``train`` and ``validation`` splits of a user's files (only the one that is given, when
    the other is None: e.g. evaluating a saved model on validation rows alone)."""
    data_files = {}
    for split, flag, path in (("train", "--train-file", train_file), ("validation", "--validation-file", validation_file)):
        if path is None:
            continue
        file = Path(path)
        if not file.is_file():
            raise NxmiError(f"{flag} {path}: no such file")
        if file.suffix.lower() not in _READERS:
            raise NxmiError(f"{flag} {path}: unknown extension {file.suffix or '(none)'!r}; allowed: "
                            f"{', '.join(_READERS)}")
        if file.stat().st_size == 0:
            raise NxmiError(f"{flag} {path}: the file is empty")
        data_files[split] = file
    readers = {(_READERS[f.suffix.lower()][0], tuple(_READERS[f.suffix.lower()][1].items())) for f in data_files.values()}
    if len(readers) > 1:
        raise NxmiError(f"--train-file and --validation-file must be of one format, got "
                        f"{', '.join(f.name for f in data_files.values())}")
    (builder, options), = readers
    loaded = {}
    for split, file in data_files.items():  # one at a time: the two files may differ in their columns
        try:
            loaded[split] = datasets.load_dataset(builder, data_files={split: str(file)}, **dict(options))[split]
        except Exception as exc:  # the builders raise many types for a malformed file
            cause = exc.__cause__ or exc
            if "corresponds to no data" in str(cause):  # a header and nothing else
                raise NxmiError(f"{file}: no rows") from exc
            raise NxmiError(f"cannot read {file} as {builder}: {first_line(cause)}") from exc
    return datasets.DatasetDict(loaded)


def _read_dataset(dataset: str, train_split: str, validation_split: str) -> datasets.DatasetDict:
    name, _, config = dataset.partition(":")
    try:
        with quiet_hub():
            loaded = datasets.load_dataset(name, config or None)
    except Exception as exc:
        raise NxmiError(f"--dataset {dataset}: datasets.load_dataset cannot read it ({first_line(exc)})") from exc
    missing = [s for s in (train_split, validation_split) if s not in loaded]
    if missing:
        raise NxmiError(f"--dataset {dataset} has no split(s) {missing}; its splits: {sorted(loaded)} "
                        f"(choose them with --train-split / --validation-split)")
    return datasets.DatasetDict({"train": loaded[train_split], "validation": loaded[validation_split]})


def load_task(
    task: TaskInfo | str,
    data_dir: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Raw (untokenised) splits of any task: a GLUE preset through :func:`load_glue`, a user's
    task from its files or dataset (splits ``train`` and ``validation``)."""
    info = get_task(task)
    if info.source == "glue":
        return load_glue(info, data_dir=data_dir, splits=splits)
    splits = ("train", *info.validation_splits) if splits is None else tuple(splits)
    if info.source == "files":
        raw = _read_files(info.train_file if "train" in splits else None,
                          info.validation_file if "validation" in splits else None)
    else:
        raw = _read_dataset(info.dataset, info.train_split, info.validation_split)
    return datasets.DatasetDict({split: raw[split] for split in splits})


def _check_texts(ds: datasets.Dataset, columns: tuple[str, ...], where: str) -> None:
    for column in columns:
        values = ds[column]
        bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise NxmiError(f"{where}: {len(bad)} of {len(values)} rows have an empty or missing text in column "
                            f"{column!r} (first: row {bad[0]}); drop or fill them")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sort_labels(values: set) -> list:
    """Class labels in a stable order: numbers numerically, anything else as text."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=str)


def describe_task(
    name: str | None = None,
    *,
    train_file: str | os.PathLike[str] | None = None,
    validation_file: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    train_split: str = "train",
    validation_split: str = "validation",
    text_columns: str | Sequence[str] | None = None,
    label_column: str | None = None,
    metric: str | None = None,
) -> TaskInfo:
    """The description of a task: a GLUE preset by ``name``, or a user's data.

    A user's task comes from ``train_file`` and ``validation_file`` (CSV, TSV, JSON Lines or
    Parquet, by extension; paths are stored absolute) or from ``dataset`` (``NAME[:CONFIG]``,
    anything ``datasets.load_dataset`` reads: a hub name or a local folder) with its
    ``train_split`` and ``validation_split``. ``name`` then only names it (default: from the
    data). The data are read once to describe them:

    * text columns: ``text_columns`` (one, or a pair), else ``text``, ``sentence`` or
      ``sentence1,sentence2``, whichever exist; the label column: ``label_column``, else ``label``;
    * the problem type from the labels: strings, integers or booleans are classes, the training
      rows' label set sorted into ``label_names``; floats (or a ``pearson``/``spearman``
      ``metric``) are a regression;
    * ``metric``: the primary metric, one of :data:`CLASSIFICATION_METRICS` (default accuracy;
      ``f1`` needs two classes, its positive class is the second name) or
      :data:`REGRESSION_METRICS` (default pearson). On a GLUE preset it replaces the preset's.

    Raises:
        NxmiError, in one line naming the value and what is allowed: a missing file, an unknown
        extension, a missing column (naming the columns present), an empty file or split, empty
        or missing texts (how many rows, which file), missing labels, a single class, a
        validation label never seen in training, non-numeric scores for a regression, a metric
        that does not fit the task.
    """
    own = train_file is not None or validation_file is not None or dataset is not None
    if not own:
        if name is None:
            raise NxmiError("no task: give a GLUE task name, --train-file and --validation-file, or --dataset")
        if text_columns is not None or label_column is not None:
            raise NxmiError(f"--text-columns / --label-column describe your own data; the GLUE task {name} has "
                            f"its own columns")
        info = get_task(name)
        return info if metric is None else _with_metric(info, metric)
    if dataset is not None and (train_file is not None or validation_file is not None):
        raise NxmiError("give --train-file and --validation-file, or --dataset, not both")
    if dataset is None and (train_file is None or validation_file is None):
        raise NxmiError(f"give both --train-file and --validation-file (got only "
                        f"{'--train-file' if train_file is not None else '--validation-file'})")
    key = (name, None if train_file is None else _file_state(train_file),
           None if validation_file is None else _file_state(validation_file), dataset, train_split,
           validation_split, _columns(text_columns), label_column, metric)
    return _describe_own(*key)


def _file_state(path: str | os.PathLike[str]) -> tuple[str, float, int]:
    """A file's absolute path with its modification time and size: a cache key that changes
    when the file does."""
    file = Path(path).expanduser().resolve()
    stat = file.stat() if file.is_file() else None
    return str(file), stat.st_mtime if stat else 0.0, stat.st_size if stat else -1


@functools.lru_cache(maxsize=32)
def _describe_own(name, train_state, validation_state, dataset, train_split, validation_split, text_columns,
                  label_column, metric) -> TaskInfo:
    train_file = train_state and train_state[0]
    validation_file = validation_state and validation_state[0]
    source = "files" if train_file else "dataset"
    raw = (_read_files(train_file, validation_file) if source == "files"
           else _read_dataset(dataset, train_split, validation_split))

    def where(split: str) -> str:
        """The file (or dataset split) a message names."""
        if source == "files":
            return train_file if split == "train" else validation_file
        return f"{dataset} split {train_split if split == 'train' else validation_split}"

    present = list(raw["train"].column_names)
    if text_columns is None:
        text_columns = next((c for c in _TEXT_DEFAULTS if all(n in present for n in c)), None)
        if text_columns is None:
            raise NxmiError(f"{where('train')}: no text column (text, sentence or sentence1,sentence2); its columns: "
                            f"{present}; name it with --text-columns A[,B]")
    label_column = label_column or _LABEL_COLUMN
    for split in ("train", "validation"):
        columns = list(raw[split].column_names)
        missing = [c for c in (*text_columns, label_column) if c not in columns]
        if missing:
            raise NxmiError(f"{where(split)}: no column(s) {missing}; its columns: {columns} "
                            f"(choose with --text-columns / --label-column)")
        if len(raw[split]) == 0:
            raise NxmiError(f"{where(split)}: no rows")
        _check_texts(raw[split], text_columns, where(split))
    labels = {split: raw[split][label_column] for split in ("train", "validation")}
    for split, values in labels.items():
        empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))
                 or (isinstance(v, str) and not v.strip())]
        if empty:
            raise NxmiError(f"{where(split)}: {len(empty)} of {len(values)} rows have no label in column "
                            f"{label_column!r} (first: row {empty[0]})")
    feature = raw["train"].features[label_column]
    floats = getattr(feature, "dtype", "").startswith("float")
    regression = metric in REGRESSION_METRICS or (metric is None and floats)
    if regression:
        for split, values in labels.items():
            bad = [v for v in values if not _is_number(v)]
            if bad:
                raise NxmiError(f"{where(split)}: a regression needs numeric scores in column {label_column!r}; "
                                f"got {bad[0]!r} ({len(bad)} rows)")
        metric = metric or REGRESSION_METRICS[0]
        if metric not in REGRESSION_METRICS:
            raise NxmiError(f"metric {metric!r} does not fit a regression; allowed: {', '.join(REGRESSION_METRICS)}")
        label_names, metric_names = None, REGRESSION_METRICS
    else:
        classes = _sort_labels(set(labels["train"]))
        if len(classes) < 2:
            raise NxmiError(f"{where('train')}: a single class {classes[0]!r} in column {label_column!r}; a "
                            f"classifier needs at least two")
        unseen = sorted({str(v) for v in labels["validation"]} - {str(c) for c in classes})
        if unseen:
            raise NxmiError(f"{where('validation')}: label(s) {unseen[:5]} never seen in training "
                            f"(training labels: {[str(c) for c in classes][:10]})")
        metric = metric or CLASSIFICATION_METRICS[0]
        if metric not in CLASSIFICATION_METRICS:
            raise NxmiError(f"metric {metric!r} does not fit a classification; allowed: "
                            f"{', '.join(CLASSIFICATION_METRICS)}")
        if metric == "f1" and len(classes) != 2:
            raise NxmiError(f"metric f1 needs two classes, got {len(classes)}; use macro_f1")
        label_names = tuple(str(c) for c in classes)
        metric_names = ("accuracy", "macro_f1", "mcc") + (("f1",) if len(classes) == 2 else ())
    return TaskInfo(
        name=name or _task_name(train_file, dataset), text_columns=tuple(text_columns),
        num_labels=1 if regression else len(label_names), validation_splits=("validation",),
        metric_names=metric_names, primary_metric=metric, label_column=label_column, label_names=label_names,
        source=source, train_file=train_file or None, validation_file=validation_file or None, dataset=dataset,
        train_split=train_split, validation_split=validation_split)


def _with_metric(info: TaskInfo, metric: str) -> TaskInfo:
    """A GLUE preset ranked on another ``metric`` of its problem type."""
    allowed = REGRESSION_METRICS if info.is_regression else CLASSIFICATION_METRICS
    if metric not in allowed and metric not in info.metric_names:
        raise NxmiError(f"metric {metric!r} does not fit {info.name}; allowed: "
                        f"{', '.join(dict.fromkeys((*info.metric_names, *allowed)))}")
    if metric == "f1" and info.num_labels != 2:
        raise NxmiError(f"metric f1 needs two classes; {info.name} has {info.num_labels}; use macro_f1")
    return dataclasses.replace(info, metric_names=tuple(dict.fromkeys((*info.metric_names, metric))),
                               primary_metric=metric)


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
    """Tokenise a task's split (or all splits of a ``DatasetDict``) for a sequence classifier.

    Text column(s) go through ``tokenizer`` (as a pair for two-text tasks) with truncation to
    ``max_length`` and *no* padding: :func:`make_dataloader` pads each batch to its own longest
    row. The label column becomes ``labels``: float32 scores for a regression, else int64 class
    ids (a user's labels by their index in ``label_names``). Every other column is dropped, so the
    result holds only tokenizer outputs and ``labels``.
    """
    info = get_task(task)
    if not isinstance(max_length, int) or max_length < 2:
        raise NxmiError(f"max_length must be an int >= 2, got {max_length!r}")
    label_dtype = "float32" if info.is_regression else "int64"
    class_ids = None if info.label_names is None else {label: i for i, label in enumerate(info.label_names)}

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[column] for column in info.text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        labels = batch[info.label_column]
        if class_ids is not None:
            unknown = sorted({str(v) for v in labels} - set(class_ids))
            if unknown:
                raise NxmiError(f"task {info.name}: label(s) {unknown[:5]} are not among its classes "
                                f"{list(info.label_names)}")
            labels = [class_ids[str(v)] for v in labels]
        encoded["labels"] = labels
        return encoded

    if isinstance(ds, datasets.DatasetDict):
        return datasets.DatasetDict(
            {split: tokenize_dataset(d, tokenizer, info, max_length) for split, d in ds.items()}
        )
    tokenized = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {info.name}")
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
    """Tokenised splits of one task, ready for :func:`make_dataloader`.

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
    """Load, subsample and tokenise a task's train and validation split(s).

    Args:
        task: A GLUE config name or a :class:`TaskInfo` (e.g. from :func:`describe_task`).
        tokenizer: The model's tokenizer.
        data_dir: GLUE presets: see :func:`load_glue` (falls back to ``NXMI_GLUE_DIR``, then the hub).
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
    raw = load_task(info, data_dir=data_dir, splits=splits)
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
