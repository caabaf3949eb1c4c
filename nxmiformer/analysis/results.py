"""Loading search results: one or several search output directories into one table.

A search output directory (``nxmi search --out DIR``) holds ``results.parquet`` (one
:class:`~nxmiformer.records.TrialRecord` per trial) and ``search.json`` (the ``SearchConfig``
fields, plus an optional ``provenance`` object with ``model_fingerprint`` and ``dense_primary``).
This module reads those files only; it never imports the search machinery.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..compression.accounting import RatioTarget, check_convention
from ..errors import NxmiError
from ..outputs import read_json
from ..records import REQUIRED_COLUMNS, read_records

RESULTS_FILE = "results.parquet"
SEARCH_FILE = "search.json"
# validation-split metrics (for the record and the report) and selection-row metrics (what a
# search decides on; see SearchConfig.objective); the loss and KL are better when lower
METRICS = ("primary", "retention", "selection_primary", "selection_loss", "selection_loss_calibrated", "selection_kl")
LOWER_IS_BETTER = ("selection_loss", "selection_loss_calibrated", "selection_kl")
# columns load_results adds, after the runner's
SEARCH_COLUMNS = ("search", "search_dir", "task", "model", "model_fingerprint", "failed")

PathLike = str | os.PathLike


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else an error."""
    if metric not in METRICS:
        raise NxmiError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    return metric


def check_target_ratio(target_ratio: float) -> float:
    """``target_ratio`` as a float if it is a number in (0, 1), else an error (see
    :class:`~nxmiformer.compression.RatioTarget`)."""
    return RatioTarget(target_ratio).value


def check_results(results: pd.DataFrame, needed: Iterable[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """``results`` if it is a non-empty DataFrame holding the ``needed`` columns, else an error."""
    if not isinstance(results, pd.DataFrame):
        raise NxmiError(f"results must be a pandas DataFrame (see load_results), got {type(results).__name__}")
    if results.empty:
        raise NxmiError("no trials in the results: the table is empty")
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise NxmiError(f"results table lacks column(s) {', '.join(missing)}; expected a search's results.parquet")
    return results


def _search_setting(results: pd.DataFrame, key: str, default, what: str, flag: str):
    """The value of ``key`` in the search.json of every search of ``results`` (``default`` for
    searches from before it, or for rows without ``search_dir``); an error naming ``what`` and the
    ``flag`` that settles it when the searches disagree."""
    dirs = results["search_dir"].unique() if "search_dir" in results.columns else []
    values = {read_search_config(d).get(key, default) for d in dirs} or {default}
    if len(values) > 1:
        raise NxmiError(f"the searches {what} ({', '.join(map(str, sorted(values)))}); choose one with {flag}")
    return values.pop()


def search_objective(results: pd.DataFrame) -> str:
    """The metric the searches of ``results`` decided on (``objective`` in their search.json;
    ``primary`` for searches from before selection rows); an error when they disagree."""
    return _search_setting(results, "objective", "primary", "decided on different objectives", "--metric")


def search_prior_weight(results: pd.DataFrame) -> float:
    """The ``prior_weight`` the searches of ``results`` chose with (in their search.json; 0 for
    searches from before it); an error when they disagree."""
    return float(_search_setting(results, "prior_weight", 0.0, "chose with different prior weights",
                                 "--prior-weight"))


def search_targets(results: pd.DataFrame, convention: str = "paper") -> tuple[float, ...]:
    """Every target of the searches of ``results`` under ``convention`` (``target_ratio`` in their
    search.json: one ratio, or a list for a search of several), lowest first; empty for rows without
    ``search_dir``. A search under the other convention contributes none."""
    dirs = results["search_dir"].unique() if "search_dir" in results.columns else []
    configs = [read_search_config(d) for d in dirs]
    values = set()
    for config in configs:
        stored = config.get("target_ratio") if config.get("convention", "paper") == convention else None
        values |= {float(v) for v in (stored if isinstance(stored, list) else [stored]) if v is not None}
    return tuple(sorted(values))


def metric_se(results: pd.DataFrame, metric: str) -> pd.Series:
    """The standard error of each trial's validation ``metric`` (``primary`` or ``retention``) as the
    binomial error of a proportion, sqrt(p (1 - p) / n), with n the validation rows the trial predicted
    (its ``predictions``); for retention, divided by ``dense_primary``. Exact for accuracy, an
    approximation for the other task metrics (F1, MCC); NaN for a trial without predictions and for
    the selection metrics (the trials keep no per-row losses)."""
    import json

    nan = pd.Series(math.nan, index=results.index, dtype="float64")
    if metric not in ("primary", "retention") or "predictions" not in results.columns:
        return nan
    rows = results["predictions"].map(lambda p: len(json.loads(p)) if isinstance(p, str) and p else 0)
    p = pd.to_numeric(results["primary"], errors="coerce").clip(0.0, 1.0)
    se = (p * (1 - p) / rows.where(rows > 0)).pow(0.5)
    return se / results["dense_primary"] if metric == "retention" else se


def ratio_column(convention: str) -> str:
    """The results column of a convention's ratio: ``ratio_paper`` or ``ratio_storage``."""
    return f"ratio_{check_convention(convention)}"


def read_search_config(search_dir: PathLike) -> dict:
    """The parsed ``search.json`` of a search output directory."""
    return read_json(Path(search_dir) / SEARCH_FILE,
                     f"{search_dir} is not a search output directory: no {SEARCH_FILE} (see nxmi search --out)")


def provenance(config: dict) -> dict:
    """``model_fingerprint`` and ``dense_primary`` of a search, ``None`` where search.json lacks them."""
    given = config.get("provenance") or {}
    return {key: given.get(key) for key in ("model_fingerprint", "dense_primary")}


def _read_one(search_dir: Path) -> tuple[pd.DataFrame, dict]:
    if not search_dir.is_dir():
        raise NxmiError(f"search output directory not found: {search_dir}")
    table_path = search_dir / RESULTS_FILE
    if not table_path.is_file():
        raise NxmiError(f"no {RESULTS_FILE} in {search_dir}: the search has not finished "
                        f"(run nxmi search --resume --out {search_dir})")
    config = read_search_config(search_dir)
    table = read_records(table_path)
    if table.empty:
        raise NxmiError(f"no trials in {table_path}: the results table is empty")
    return table, config


def _labels(dirs: list[Path]) -> list[str]:
    """Directory names, or full paths where two searches share a name."""
    names = [d.name for d in dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, dirs)]


def load_results(paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """The trials of one or several search output directories as one table.

    Every trial is kept, failed ones included: ``status`` is ``completed``, ``stopped`` (ended
    early by ASHA) or ``error``, and the added boolean ``failed`` marks the errors. Besides the
    runner's columns the table has ``search`` (the directory's name, its full path where two
    share a name), ``search_dir`` (absolute path), ``task``, ``model`` and ``model_fingerprint``
    (``None`` when search.json carries no ``provenance``). Where the provenance knows the dense
    baseline, it fills ``dense_primary`` where the table has none.

    Raises:
        NxmiError: no path given, a missing directory, a directory without ``results.parquet``
            or ``search.json``, or an empty results table.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise NxmiError("no search output directory given")
    dirs = [Path(p).expanduser().resolve() for p in paths]
    frames = []
    for search_dir, label in zip(dirs, _labels(dirs)):
        table, config = _read_one(search_dir)
        known = provenance(config)
        frames.append(table.assign(
            search=label, search_dir=str(search_dir), task=config.get("task"), model=config.get("model"),
            model_fingerprint=known["model_fingerprint"],
            dense_primary=table["dense_primary"].fillna(_nan_if_none(known["dense_primary"])),
        ))
    results = pd.concat(frames, ignore_index=True)
    results["failed"] = results["status"].eq("error")
    return results


def _nan_if_none(value) -> float:
    return math.nan if value is None else float(value)
