"""Which selection-row measure should choose the plan? Re-decide finished runs on each (kept records, no training)

A search decides on one measure of its trials on the selection rows, ``--objective`` (default
``selection_loss_calibrated`` since 2026-11-30, chosen with this script; ``selection_primary``, the
task metric, before), and reports the chosen trial on the validation split. The issue asks for the
default that best predicts the validation metric. This reads the records of the
given ``search_quality.py`` runs (default: every run kept under ``bench/results/runs``) and, for
every (run, task, target) cell and every objective the records carry (``selection_primary``,
``selection_loss``, ``selection_kl``, and ``selection_loss_calibrated`` from record version 5):

* ``agreement``: Spearman rank correlation between the objective (a loss or KL lowest-first) and the
  validation metric over the cell's completed trials, every arm pooled (+1: full agreement);
* ``regret``: per arm, the validation retention of its best completed trial minus that of the trial
  :func:`nxmiformer.analysis.select` picks on the objective (points; 0: the objective found the
  best), averaged over the cell's arms;
* ``difference``: the ``--arm`` arm's choice minus the better baseline arm's choice (uniform, grid),
  every arm choosing on that objective: the figure ``search_quality.py`` reports, had the runs
  decided on it;
* ``mixed_regret``: the regret of one choice over all the cell's trials, every arm's pooled, as one
  ``nxmi search`` that trains plans of every kind chooses (its default kinds mix the knapsack
  optimum, diverse, grid and uniform plans);
* ``within``: the agreement inside each arm (its own trials only), averaged over the cell's arms:
  how well the objective orders the plans one arm has to choose from (``within_<arm>`` per arm).

Two derived rules ride along: ``proxy``, the plan's summed proxy cost (the records' ``proxy_cost``,
or ``heuristic_score`` in records before version 6; lowest first), a choice that uses no trial at all
(no search can be given it); and ``calibrated+proxy``, the z-scores of the calibrated loss and of that
cost, summed (over each arm's trials for its choice, as one search would; over the cell's trials for
the agreement): what ``nxmi search --prior-weight 1`` chooses on.

Then each objective pooled over the cells that carry it, with ``se_cells`` (the spread between cells
over sqrt(cells)), and over the cells that carry all of them, where the objectives meet on the same
trials. The validation split is only read, to score the objectives; none decides on it. The
re-decision is the one the run would have made wherever the objective decided nothing else: no
trial of a kept run was cut (``search_quality.py`` runs without ASHA; every record is completed),
and the fine, uniform and grid arms have no learning stage (the staged arms, search and optuna,
chose their stage-2 plans on the task metric). Only completed trials are re-decided.

    python bench/objectives.py [RUN_DIR ...] [--arm fine] [--csv FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from _common import ROOT  # noqa: E402  (also puts the repository on sys.path)

import pandas as pd
from search_quality import _agreement

from nxmiformer.analysis import select
from nxmiformer.analysis.pareto import selection_score
from nxmiformer.records import read_records

OBJECTIVES = ("selection_primary", "selection_loss", "selection_kl", "selection_loss_calibrated")
# Derived rules, which no search can be given (see the module docstring).
DERIVED = ("proxy", "calibrated+proxy")
BASELINES = ("uniform", "grid")


def completed(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials that finished with a validation metric: the only ones re-decided."""
    return frame[(frame["status"] == "completed") & frame["primary"].notna()]


def kept_runs() -> list[Path]:
    """Every run kept under ``bench/results/runs``: the default of the scripts that re-read them."""
    return sorted(p for p in (ROOT / "bench" / "results" / "runs").iterdir() if p.is_dir())


def cell_arms(run: Path, task: str, target: str = "0.96875", arms=("fine", "uniform", "grid")) -> dict[str, pd.DataFrame]:
    """One kept cell's ``arms`` (``<run>/<task>-<target>-<arm>``), completed trials only; a missing
    arm exits with a one-line message naming it."""
    out = {}
    for arm in arms:
        results = run / f"{task}-{target}-{arm}" / "results.parquet"
        if not results.is_file():
            raise SystemExit(f"no kept {arm} arm at {results.parent}; allowed: a run with the arms {', '.join(arms)}")
        out[arm] = completed(read_records(results))
    return out


def add_cell_arguments(parser: argparse.ArgumentParser, cache_help: str) -> None:
    """``RUN TASK --cache-dir DIR``: the kept cell a script trains or recomputes on (both optional,
    for the scripts' ``--pool`` modes, which read kept results instead)."""
    parser.add_argument("run", type=Path, nargs="?", help="a kept run, e.g. bench/results/runs/search_quality_96875_seed14")
    parser.add_argument("task", nargs="?", choices=("mrpc", "sst2"))
    parser.add_argument("--cache-dir", help=cache_help)


def kept_tables(kind: str, name: str) -> dict[str, pd.DataFrame]:
    """The ``name`` CSV of every kept cell under ``bench/results/<kind>/<run>/<task>/``, keyed
    ``"<run> <task>"`` (empty when there are none)."""
    files = sorted((ROOT / "bench" / "results" / kind).glob(f"*/*/{name}"))
    return {f"{f.parent.parent.name} {f.parent.name}": pd.read_csv(f) for f in files}


def over_cells(values: pd.Series) -> dict:
    """A per-cell difference pooled: its mean, se_cells (the spread between cells over sqrt(cells);
    NaN for one cell) and the cells above 0."""
    values = values.astype(float).dropna()
    return {"cells": len(values), "mean": values.mean(),
            "se_cells": values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan"),
            "cells > 0": int((values > 0).sum())}


def _proxy_cost(frame: pd.DataFrame) -> pd.Series:
    """The plans' proxy cost: the records' ``proxy_cost`` (version 6), else, for the kept runs'
    stage-1 arms, ``heuristic_score`` (the same sum of the profile's scores)."""
    nan = pd.Series(float("nan"), index=frame.index)
    cost = frame["proxy_cost"] if "proxy_cost" in frame else nan
    return cost.fillna(frame["heuristic_score"] if "heuristic_score" in frame else nan)


def _with_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``proxy_cost`` filled and the DERIVED columns (lowest first), NaN where it
    lacks what they need. ``calibrated+proxy`` is the score ``select`` ranks on with
    ``prior_weight=1`` and the calibrated loss, negated."""
    frame = frame.assign(proxy_cost=_proxy_cost(frame))
    has_both = ("selection_loss_calibrated" in frame
                and frame[["selection_loss_calibrated", "proxy_cost"]].notna().all().all())
    combined = (-selection_score(frame, "selection_loss_calibrated", 1.0) if has_both and len(frame)
                else float("nan"))
    return frame.assign(**{"proxy": frame["proxy_cost"], "calibrated+proxy": combined})


def _choose(frame: pd.DataFrame, column: str) -> pd.Series:
    """The trial :func:`select` picks on ``column``: ``calibrated+proxy`` is its ``prior_weight=1``
    on the calibrated loss; ``proxy`` is handed to it under the name of a loss, so its ties break as
    every choice's do (the higher ratio, then the id)."""
    # every trial of an arm meets its target, so the arm's lowest ratio is a target they all meet
    target = float(frame["ratio_paper"].min())
    if column == "calibrated+proxy":
        return select(frame, target, metric="selection_loss_calibrated", prior_weight=1.0)
    if column == "proxy":
        frame, column = frame.assign(selection_loss=frame[column]), "selection_loss"
    return select(frame, target, metric=column)


def cell_table(arms: dict[str, pd.DataFrame], arm: str) -> list[dict]:
    """One row per objective the cell's records carry: agreement (over the cell's trials, and
    ``within``: the mean over arms of the same rank correlation inside each arm), mean regret over
    arms and the ``arm`` minus best-baseline difference (NaN where the cell lacks ``arm`` or a
    baseline)."""
    done = {name: completed(r) for name, r in arms.items()}
    done = {name: _with_derived(r) for name, r in done.items() if not r.empty}
    if not done:
        return []
    pooled = _with_derived(pd.concat(done.values()))
    rows = []
    for objective in OBJECTIVES + DERIVED:
        if objective not in pooled or pooled[objective].isna().any():
            continue  # a record version without it
        agreement = _agreement(pooled, objective)
        within = {name: _agreement(r, objective) for name, r in done.items()}
        within = {name: value for name, value in within.items() if not math.isnan(value)}  # < 3 trials
        chosen = {name: float(_choose(r, objective)["retention"]) for name, r in done.items()}
        regret = [float(done[name]["retention"].max()) - value for name, value in chosen.items()]
        baselines = [chosen[b] for b in BASELINES if b in chosen]
        difference = chosen[arm] - max(baselines) if arm in chosen and baselines else float("nan")
        mixed = float(pooled["retention"].max()) - float(_choose(pooled, objective)["retention"])
        rows.append({"objective": objective, "trials": len(pooled), "agreement": agreement,
                     "within": sum(within.values()) / len(within) if within else float("nan"),
                     "regret": 100 * sum(regret) / len(regret), "mixed_regret": 100 * mixed,
                     "difference": 100 * difference,
                     **{f"within_{name}": value for name, value in within.items()},
                     **{f"chosen_{name}": 100 * value for name, value in chosen.items()}})
    return rows


def cells(runs: list[Path]):
    """(run name, cell name, {arm: records}) for every cell of the runs: arm directories are
    ``<task>-<target>-<arm>``."""
    for run in runs:
        by_cell: dict[str, dict[str, pd.DataFrame]] = {}
        for records in sorted(run.glob("*/results.parquet")):
            task, target, arm = records.parent.name.split("-", 2)
            by_cell.setdefault(f"{task}-{target}", {})[arm] = read_records(records)
        for cell, arms in by_cell.items():
            yield run.name, cell, arms


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and se_cells of agreement, regret and difference per objective."""
    out = []
    for objective, group in table.groupby("objective", sort=False):
        row = {"objective": objective, "cells": len(group)}
        for column in ("agreement", "within", "regret", "mixed_regret", "difference"):
            if column not in group:
                continue
            values = group[column].dropna()
            row[column] = values.mean()
            row[f"{column}_se"] = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
            if column == "difference":
                row["difference_cells"] = len(values)
                row["difference_ge_0"] = int((values >= 0).sum())
        out.append(row)
    return pd.DataFrame(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="search_quality.py --out directories (default: bench/results/runs/*)")
    parser.add_argument("--arm", default="fine", help="the search arm set against the baselines (default: fine)")
    parser.add_argument("--csv", help="write the per-cell table here")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs] or kept_runs()
    rows = [{"run": run, "cell": cell} | row for run, cell, arms in cells(runs) for row in cell_table(arms, args.arm)]
    if not rows:
        print(f"no completed trials in {len(runs)} runs", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.float_format", "{:.2f}".format):
        print(table.drop(columns=[c for c in table.columns if c.startswith(("chosen_", "within_"))])
              .to_string(index=False))
        print("\nPooled over the cells that carry each objective (regret and difference in points of retention; "
              f"difference: {args.arm} minus the better baseline, each arm choosing on the objective):")
        print(pooled(table).to_string(index=False))
        common = table.groupby(["run", "cell"]).filter(lambda g: len(g) == len(OBJECTIVES + DERIVED))
        if not common.empty:
            print(f"\nOver the {common.groupby(['run', 'cell']).ngroups} cells that carry all "
                  f"{len(OBJECTIVES + DERIVED)}:")
            print(pooled(common).to_string(index=False))
        inside = [c for c in table.columns if c.startswith("within_")]
        if inside:
            print("\nInside each arm (mean Spearman with the validation metric over the cells, se_cells):")
            print(table.groupby("objective", sort=False)[inside].agg(["mean", "sem"]).to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
