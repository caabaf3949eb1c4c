"""The Python entry points for notebooks and scripts, the same engine as the ``nxmi`` command:

>>> from nxmiformer.api import search, task, train
>>> reviews = task(train_file="reviews/train.csv", validation_file="reviews/validation.csv")
>>> result = search("my-classifier", reviews, target_ratio=0.875, out="runs/reviews", finetuned=True)
>>> trained = train(result.plan, "my-classifier", reviews, finetuned=True, out="reviews-small")

A task is a :class:`~nxmiformer.trials.data.TaskInfo`: a GLUE preset by name, a user's files or
``datasets.load_dataset`` source, or an in-memory ``datasets.DatasetDict`` (written once as
Parquet files, so every Ray worker reads the same rows).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import NxmiError

if TYPE_CHECKING:  # imported lazily: ``import nxmiformer`` stays light
    from collections.abc import Sequence

    import datasets

    from .compression import CompressionPlan
    from .search import SearchResult
    from .trials import TaskInfo, TrialResult

__all__ = ["search", "task", "train"]


def task(name: str | None = None, *, train_file: str | os.PathLike | None = None,
         validation_file: str | os.PathLike | None = None, dataset: str | None = None,
         data: "datasets.DatasetDict | None" = None, train_split: str = "train",
         validation_split: str = "validation", text_columns: str | tuple[str, ...] | None = None,
         label_column: str | None = None, metric: str | None = None,
         store: str | os.PathLike | None = None) -> "TaskInfo":
    """A task: a GLUE preset (``name`` alone), files, a ``datasets`` source, or ``data``, a
    ``DatasetDict`` with ``train_split`` and ``validation_split`` (written as Parquet under
    ``store``, default the nxmiformer cache, named by the rows' fingerprint). Columns, label
    names, problem type and metric as :func:`~nxmiformer.trials.data.describe_task` says; bad
    data raises :class:`~nxmiformer.errors.NxmiError` with one line."""
    from .trials.config import default_cache_dir
    from .trials.data import describe_task

    if data is not None:
        if train_file is not None or validation_file is not None or dataset is not None:
            raise NxmiError("give data= or files or a dataset, not both")
        missing = [s for s in (train_split, validation_split) if s not in data]
        if missing:
            raise NxmiError(f"data has no split(s) {missing}; its splits: {sorted(data)}")
        root = Path(store or default_cache_dir() / "tasks")
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            digest = hashlib.sha256()
            for split, file in ((train_split, "train.parquet"), (validation_split, "validation.parquet")):
                data[split].to_parquet(str(Path(tmp) / file))
                digest.update((Path(tmp) / file).read_bytes())
            # named by the rows: the same data is the same task (and the same cache keys) in every call
            folder = root / f"{name or 'data'}-{digest.hexdigest()[:16]}"
            if not folder.is_dir():
                os.replace(tmp, folder)
                os.mkdir(tmp)  # for TemporaryDirectory's clean-up
        train_file, validation_file = folder / "train.parquet", folder / "validation.parquet"
        name = name or "data"
    return describe_task(name, train_file=None if train_file is None else str(Path(train_file).resolve()),
                         validation_file=None if validation_file is None else str(Path(validation_file).resolve()),
                         dataset=dataset, train_split=train_split, validation_split=validation_split,
                         text_columns=text_columns, label_column=label_column, metric=metric)


def _task_fields(info: "TaskInfo | str") -> dict:
    """The config fields that describe ``info`` (a GLUE name passes as ``task``)."""
    from .trials.data import get_task

    info = get_task(info)
    if info.source == "glue":
        preset = get_task(info.name)
        return {"task": info.name} | ({"metric": info.primary_metric} if info != preset else {})
    return {"task": info.name, "train_file": info.train_file, "validation_file": info.validation_file,
            "dataset": info.dataset, "train_split": info.train_split, "validation_split": info.validation_split,
            "text_columns": info.text_columns, "label_column": info.label_column, "metric": info.primary_metric}


def search(model: str | os.PathLike, task: "TaskInfo | str", target_ratio: "float | Sequence[float] | str", *,
           out: str | os.PathLike,
           finetuned: bool = False, preset: str | None = None, resume: bool = False, progress: bool = True,
           **settings) -> "SearchResult":
    """Search plans for ``model`` on ``task`` that compress its encoder by at least
    ``target_ratio`` (paper convention unless ``convention="storage"``; several ratios, or text such as
    ``"0.85:0.97:6"``, for a front in one search), as ``nxmi search`` does:
    ``finetuned=True`` takes ``model`` as the trained reference (no dense fine-tune); ``preset``
    (e.g. ``"quick"``) and any other :class:`~nxmiformer.search.SearchConfig` field (``settings``)
    as keywords. Returns the :class:`~nxmiformer.search.SearchResult` (``results``, ``best``,
    ``plan``, ``choices``: target -> chosen trial)."""
    from .search import SearchConfig, run_search

    config = SearchConfig.preset(preset, out=str(out), model=str(model), finetuned=finetuned,
                                 target_ratio=target_ratio, **_task_fields(task), **settings)
    return run_search(config, resume=resume, progress=progress)


def train(plan: "CompressionPlan | str", model: str | os.PathLike, task: "TaskInfo | str", *,
          out: str | os.PathLike | None = None, finetuned: bool = False, steps: int = 600,
          progress: bool = True, **settings) -> "TrialResult":
    """Train ``plan`` (a plan, or a spec such as ``"2:4:int8"`` for every module) fully on ``task``
    from ``model`` (fine-tuned first unless ``finetuned``): ADMM + QAT, the hard projection and
    masked QAT over ``steps`` steps; other :class:`~nxmiformer.trials.TrialConfig` fields as
    keywords. With ``out``, the hardened model is saved there (``save_pretrained``, with its
    tokenizer, ``plan.json``, ``task.json`` and the task's label names in its config), as ``nxmi
    train`` saves it."""
    from .compression import to_dense_
    from .models import load_tokenizer
    from .outputs import TASK_FILE, atomic_output_dir, require_free_output, task_record, write_json
    from .trials import DataConfig, DenseConfig, TrialConfig, finetune_dense, run_trial

    if out is not None:
        require_free_output(out)
    data_fields = {k: settings.pop(k) for k in ("data_dir", "max_length", "train_size", "eval_size", "seed")
                   if k in settings}
    data = DataConfig(**_task_fields(task), **data_fields)
    config = TrialConfig(data=data, dense=DenseConfig(model=str(model), finetuned=finetuned), steps=steps, **settings)
    dense = finetune_dense(data, config.dense, config.cache_dir, progress=progress)
    result = run_trial(plan, config, dense=dense, progress=progress, keep_model=True)
    if out is not None:
        with atomic_output_dir(out) as tmp:
            to_dense_(result.model).save_pretrained(tmp)
            load_tokenizer(str(dense.path)).save_pretrained(tmp)
            result.plan.save(tmp / "plan.json")
            write_json(tmp / TASK_FILE, task_record(data))
    return result
