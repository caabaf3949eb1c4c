"""Export the plan selected under the constraint, for a full training run with ``nxmi train``.

The file is a plain versioned plan (``CompressionPlan.to_dict``: schema ``nxmiformer.plan``,
version 1), so ``nxmi train --plan best_plan.json`` reads it unchanged; its ``meta`` records
where the plan came from and the exact command that trains it fully.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

import pandas as pd

from .. import __version__
from ..compression import CompressionPlan, RatioTarget
from ..errors import NxmiError
from ..outputs import TASK_FIELDS
from .pareto import check_prior_weight, select
from .results import check_metric, provenance, read_search_config, search_objective, search_prior_weight

# search.json field -> nxmi train flag; full training keeps the search's data and warm start
# settings but drops its --train-size / --eval-size / --steps limits
TRAIN_FLAGS = {
    "data_dir": "--data-dir", "train_file": "--train-file", "validation_file": "--validation-file",
    "dataset": "--dataset", "train_split": "--train-split", "validation_split": "--validation-split",
    "text_columns": "--text-columns", "label_column": "--label-column", "metric": "--metric",
    "max_length": "--max-length", "seed": "--seed", "dense_epochs": "--dense-epochs",
    "batch_size": "--batch-size", "lr": "--lr", "kd_alpha": "--kd-alpha", "cache_dir": "--cache-dir",
}
# what a plan keeps of its search's task, so nxmi train --plan best_plan.json needs no data flags
TASK_KEYS = (*TASK_FIELDS, "task_info")
DATASET_ONLY = ("train_split", "validation_split")  # flags that mean something only with --dataset


def _finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def train_command(search_config: dict, plan_path: str | os.PathLike, out: str | os.PathLike) -> str:
    """The ``nxmi train`` command line that trains ``plan_path`` fully with a search's settings.

    Task (a GLUE name, or the user's files or dataset with their columns and metric), model (and
    ``--finetuned``), data directory, max length, seed, dense warm-start epochs, batch size,
    learning rate, distillation weight and cache directory come from ``search_config`` (fields it lacks
    or leaves unset fall back to ``nxmi train``'s defaults); training runs one epoch over every
    training row and evaluates on the full validation split.
    """
    args = ["nxmi", "train", "--task", str(search_config.get("task", "sst2")),
            "--model", str(search_config.get("model", "default")), "--plan", str(plan_path)]
    if search_config.get("finetuned"):
        args.append("--finetuned")
    for field, flag in TRAIN_FLAGS.items():
        value = search_config.get(field)
        if value is None or (field == "kd_alpha" and not value) or (field in DATASET_ONLY and not search_config.get("dataset")):
            continue
        args += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return shlex.join([*args, "--out", str(out)])


def _trial_meta(row: pd.Series) -> dict:
    metrics = row.get("metrics_json")
    return {
        "trial_id": str(row["trial_id"]),
        "kind": str(row["kind"]),
        "status": str(row["status"]),
        "primary": _finite_or_none(row["primary"]),
        "retention": _finite_or_none(row["retention"]),
        "dense_primary": _finite_or_none(row["dense_primary"]),
        "steps": int(row["steps"]),
        "heuristic_score": _finite_or_none(row.get("heuristic_score")),
        "metrics": json.loads(metrics) if isinstance(metrics, str) and metrics else {},
    }


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise NxmiError(f"the exported plan must be a .json file, got {str(out)!r}")
    if out.exists():
        raise NxmiError(f"{out} already exists; choose another --out (nothing was written)")
    return out


def export_plan(results: pd.DataFrame, target_ratio: float, convention: str, out: str | os.PathLike, *,
                metric: str | None = None, include_stopped: bool = False, prior_weight: float | None = None,
                train_out: str | os.PathLike | None = None) -> CompressionPlan:
    """Write the plan :func:`~nxmiformer.analysis.select` picks to ``out`` and return it.

    ``metric`` and ``prior_weight`` (default: the searches' objective and prior weight, as ``nxmi
    search`` chose) rank the trials.
    ``results`` must come from :func:`~nxmiformer.analysis.load_results` (its ``search_dir``
    column leads back to the search's ``search.json``). ``meta`` holds the plan's ratios under
    both conventions, the selection (target, convention, metric), the search's provenance (task,
    model, model fingerprint when known, search directory and settings), the trial's short-run
    metrics (primary, retention, dense primary, steps, kind, trial id) and ``train_command``: the
    ``nxmi train`` command that trains the plan fully into ``train_out`` (default: ``out``'s
    name with ``-trained``, beside it).

    Written atomically; an existing ``out`` is never overwritten.

    Raises:
        NxmiError: ``out`` exists or is not a ``.json`` path, or any error of
            :func:`~nxmiformer.analysis.select`; nothing is written then.
    """
    out = _check_out(out)
    target = RatioTarget.of(target_ratio, convention)
    prior_weight = check_prior_weight(search_prior_weight(results) if prior_weight is None else prior_weight)
    metric = check_metric(metric or search_objective(results))
    row = select(results, target, metric=metric, include_stopped=include_stopped, prior_weight=prior_weight)
    if "search_dir" not in row.index:
        raise NxmiError("the results lack the search_dir column; read them with nxmiformer.analysis.load_results")
    config = read_search_config(row["search_dir"])
    known = provenance(config)
    train_out = train_out if train_out is not None else out.with_name(f"{out.stem}-trained")
    search = {"dir": str(row["search_dir"]), "model_fingerprint": known["model_fingerprint"]} | {
        key: config.get(key) for key in (*TASK_KEYS, "model", "finetuned", "dense_epochs", "max_length", "seed", "target_ratio",
                                          "convention", "train_size", "eval_size", "steps")}
    meta = {
        "exported_by": f"nxmiformer {__version__} (nxmi export)",
        "ratio_paper": float(row["ratio_paper"]),
        "ratio_storage": float(row["ratio_storage"]),
        "selection": {"target_ratio": target.value, "convention": target.convention, "metric": metric,
                      "prior_weight": prior_weight, "include_stopped": include_stopped},
        "search": search,
        "trial": _trial_meta(row),
        "train_command": train_command(config, out, train_out),
    }
    if meta["trial"]["dense_primary"] is None:
        meta["trial"]["dense_primary"] = _finite_or_none(known["dense_primary"])
    plan = CompressionPlan(CompressionPlan.from_json(row["plan_json"]), meta=meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    return CompressionPlan.load(plan.save(out))  # exactly what nxmi train will read
