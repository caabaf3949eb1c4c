"""The trial record: one row of a search's ``results.parquet``, defined once.

The trainable reports the fields it knows (the plan it trained, its ratios, its metrics) under
these names; the search collects one :class:`TrialRecord` per trial and writes them with
:func:`records_frame`; analysis reads them with :func:`read_records`. Neither side renames or
re-derives a column, and analysis never imports the search to know the schema.

Versions: ``record_version`` 6 is this schema (version 5 lacked ``proxy_cost``, version 4 also
``selection_loss_calibrated``, version 3 also ``selection_predictions``, version 2 also
``predictions``). Older files (version 1 also lacks ``record_version``) are read and upgraded, their
missing columns taking the defaults; a file of a newer version is refused with a message naming it.
``proxy_cost`` is the one column the runner sets after the trials (it prices each plan on the
search's profile, which a trial does not hold).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from .errors import NxmiError, first_line
from .outputs import atomic_file

RECORD_VERSION = 7
# the columns every version has; a table without them is not a search's results table
REQUIRED_COLUMNS = (
    "trial_id", "status", "kind", "plan_json", "plan_summary", "ratio_paper", "ratio_storage", "primary",
    "retention", "dense_primary", "steps",
)
# the task metrics a trial reports (validation split), kept in ``metrics_json``
TASK_METRICS = ("accuracy", "f1", "mcc", "pearson", "spearmanr", "combined", "eval_loss")
# the record columns that are task metrics (higher is better); the others a search ranks on are losses
HIGHER_IS_BETTER = ("selection_primary", "primary")


def _doc(text: str, dtype: str) -> dict:
    return {"doc": text, "dtype": dtype}


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search. Field metadata holds each column's pandas dtype and meaning."""

    trial_id: str = field(metadata=_doc("Tune's trial id, unique within a search", "object"))
    status: str = field(metadata=_doc("completed, stopped (early, by ASHA) or error", "object"))
    error: str = field(default="", metadata=_doc("last line of the error of a failed trial, else empty", "object"))
    kind: str = field(default="", metadata=_doc(
        "the generator of the plan: optimal, diverse, grid, uniform (stage 1) or refined (Optuna stage)", "object"))
    heuristic_score: float = field(default=math.nan, metadata=_doc(
        "the score the plan's generator ranked it by (lower is better): stage 1's summed proxy cost, the learning "
        "stage's calibrated prediction; NaN for refined plans", "float64"))
    proxy_cost: float = field(default=math.nan, metadata=_doc(
        "the plan's cost under the search's --proxy (its modules' profile scores, summed; lower is better), for "
        "every trial whichever stage made its plan: what select's prior_weight weighs; NaN where the profile "
        "cannot price an option of the plan", "float64"))
    plan_json: str = field(default="", metadata=_doc("the plan the trial trained (CompressionPlan JSON)", "object"))
    plan_summary: str = field(default="", metadata=_doc("the plan in one line", "object"))
    ratio_paper: float = field(default=math.nan, metadata=_doc("encoder compression ratio, paper convention", "float64"))
    ratio_storage: float = field(default=math.nan, metadata=_doc(
        "encoder compression ratio, storage convention", "float64"))
    meets_target: bool = field(default=False, metadata=_doc(
        "whether the ratio under the search's convention meets the target the trial served (target_ratio; the "
        "search's lowest target for an Optuna-stage plan)", "bool"))
    target_ratio: float = field(default=math.nan, metadata=_doc(
        "the target whose candidates the trial was one of (a search of several targets: ASHA compares a trial with "
        "those of its target alone); NaN for an Optuna-stage plan, which serves no one target", "float64"))
    primary: float = field(default=math.nan, metadata=_doc(
        "the task's primary metric on the validation rows at the last report", "float64"))
    retention: float = field(default=math.nan, metadata=_doc("primary / dense_primary", "float64"))
    dense_primary: float = field(default=math.nan, metadata=_doc("primary metric of the dense warm start", "float64"))
    metrics_json: str = field(default="{}", metadata=_doc("every task metric at the last report (JSON object)", "object"))
    steps: int = field(default=0, metadata=_doc("optimizer steps done", "int64"))
    wall_time: float = field(default=math.nan, metadata=_doc("seconds the trial ran", "float64"))
    node_id: str = field(default="", metadata=_doc("Ray node the trial ran on", "object"))
    selection_primary: float = field(default=math.nan, metadata=_doc(
        "the primary metric on the selection rows (held out of training; what a search decides on)", "float64"))
    selection_loss: float = field(default=math.nan, metadata=_doc("the task loss on the selection rows", "float64"))
    selection_loss_calibrated: float = field(default=math.nan, metadata=_doc(
        "the task loss on the selection rows at the temperature (affine fit, for regression) that minimises it "
        "there: what the model separates, without how confident it is", "float64"))
    selection_kl: float = field(default=math.nan, metadata=_doc(
        "KL divergence of the trial's predictions from the dense warm start's on the selection rows", "float64"))
    admm_distance: float = field(default=math.nan, metadata=_doc(
        "||W - proj(W)|| / ||W|| at the hard projection (last report if earlier)", "float64"))
    admm_mask_agreement: float = field(default=math.nan, metadata=_doc(
        "share of N:M mask entries unchanged by the hard projection", "float64"))
    duplicate_of: str = field(default="", metadata=_doc(
        "for a refined sample that repaired to an already-trained plan: that trial's id (its result, not retrained)",
        "object"))
    predictions: str = field(default="", metadata=_doc(
        "the trial's prediction on each row of the validation split, in order (JSON list of class ids, or scores "
        "for a regression task); empty when not reported. Two trials' lists on the same rows give a paired "
        "difference", "object"))
    selection_predictions: str = field(default="", metadata=_doc(
        "the trial's prediction on each selection row, in order (as ``predictions``); empty when not reported. "
        "Gives the paired standard error of one trial's lead over another on the rows the search decides on",
        "object"))
    record_version: int = field(default=RECORD_VERSION, metadata=_doc("schema version of this record", "int64"))

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def dtypes(cls) -> dict[str, str]:
        return {f.name: f.metadata["dtype"] for f in fields(cls)}

    @classmethod
    def describe(cls) -> pd.DataFrame:
        """The schema as a table: column, dtype, meaning."""
        return pd.DataFrame([{"column": f.name, "dtype": f.metadata["dtype"], "meaning": f.metadata["doc"]}
                             for f in fields(cls)])

    @classmethod
    def from_report(cls, report: Mapping, *, trial_id: str, status: str, error: str = "",
                    fallback: Mapping | None = None) -> "TrialRecord":
        """The record of a trial from its last report (a trainable's metrics dict, in these
        field names plus ``step`` and Tune's ``time_total_s``). ``fallback`` supplies fields a
        trial that failed before its first report could not report (e.g. its plan).
        ``meets_target`` is the caller's to set (it knows the target)."""
        given = dict(fallback or {}) | {k: v for k, v in report.items() if v is not None}
        step = _num(given.get("step"))
        metrics = {k: v for k, v in report.items() if k in TASK_METRICS or k.startswith("validation_")}
        return cls(
            trial_id=trial_id, status=status, error=error,
            kind=str(given.get("kind", "")), heuristic_score=_num(given.get("heuristic_score")),
            plan_json=str(given.get("plan_json", "")), plan_summary=str(given.get("plan_summary", "")),
            ratio_paper=_num(given.get("ratio_paper")), ratio_storage=_num(given.get("ratio_storage")),
            target_ratio=_num(given.get("target_ratio")), primary=_num(given.get("primary")), retention=_num(given.get("retention")),
            dense_primary=_num(given.get("dense_primary")), metrics_json=json.dumps(metrics),
            steps=int(step) if math.isfinite(step) else 0,
            wall_time=_num(given.get("time_total_s")), node_id=str(given.get("node_id", "")),
            selection_primary=_num(given.get("selection_primary")), selection_loss=_num(given.get("selection_loss")),
            selection_loss_calibrated=_num(given.get("selection_loss_calibrated")),
            selection_kl=_num(given.get("selection_kl")), admm_distance=_num(given.get("admm_distance")), admm_mask_agreement=_num(given.get("admm_mask_agreement")),
            duplicate_of=str(given.get("duplicate_of", "")), predictions=str(given.get("predictions", "")),
            selection_predictions=str(given.get("selection_predictions", "")),
        )


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def records_frame(records: Iterable[TrialRecord]) -> pd.DataFrame:
    """The records as a table in the schema's column order and dtypes."""
    frame = pd.DataFrame([asdict(r) for r in records], columns=TrialRecord.columns())
    return frame.astype(TrialRecord.dtypes())


def write_records(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a records table as Parquet, atomically (a reader never sees half a file)."""
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def upgrade_records(table: pd.DataFrame, source: str = "the results table") -> pd.DataFrame:
    """``table`` in this schema: a version-1 table gains ``record_version`` (and the defaults of
    the optional columns it lacks); a newer version, or a table without the
    :data:`REQUIRED_COLUMNS`, is an error naming them."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise NxmiError(f"{source} lacks column(s) {', '.join(missing)}; is it a search's results table?")
    if "record_version" in table.columns and len(table):
        versions = sorted({int(v) for v in table["record_version"].dropna()})
        newer = [v for v in versions if v > RECORD_VERSION]
        if newer:
            raise NxmiError(f"{source} was written with trial-record version {newer[0]}; this nxmiformer reads "
                            f"versions 1 to {RECORD_VERSION} (upgrade nxmiformer)")
    table = table.copy()
    if "record_version" not in table.columns:
        table["record_version"] = 1
    defaults = {f.name: f.default for f in fields(TrialRecord)}
    for column, dtype in TrialRecord.dtypes().items():
        if column not in table.columns:
            table[column] = defaults[column]
        elif dtype in ("int64", "bool", "object"):  # no NaN in these: a missing value takes the default
            table[column] = table[column].where(table[column].notna(), defaults[column])
        try:
            table[column] = table[column].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise NxmiError(f"{source}: column {column} does not hold {dtype} values ({first_line(exc)})") from None
    extra = [c for c in table.columns if c not in defaults]
    return table[TrialRecord.columns() + extra]


def read_records(path: str | os.PathLike) -> pd.DataFrame:
    """A ``results.parquet`` in this schema (see :func:`upgrade_records`)."""
    return upgrade_records(pd.read_parquet(path), str(path))
