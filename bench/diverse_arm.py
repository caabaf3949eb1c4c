"""Would a more diverse fine arm choose better? A new arm set against a kept cell (kept records, no training)

``search_quality.py``'s ``fine`` arm trains the knapsack optimum and five diverse plans, each
differing from every earlier one in ``--min-hamming`` modules (``nxmi search``'s default: a twelfth
of them, 3 of MiniLM's 36). Inside that arm no measure orders the trials: the plans are near-copies.
This reads a second fine arm, trained on the same cell with another ``--min-hamming`` (its
``search_quality.py --arms fine --out`` directory, kept under ``bench/results/diverse/<label>/`` with
the same name as the kept run it pairs with under ``bench/results/runs/``), and sets it beside that
cell's kept ``fine``, ``uniform`` and ``grid`` arms. Every arm chooses on ``calibrated+proxy``
(what ``nxmi search`` ranks on by default: the calibrated selection loss with the proxy prior,
weight 1). Per cell and arm: the chosen trial's validation retention, the family mean (and its
standard error), the arm's best trial, the agreement inside the arm (Spearman of
``calibrated+proxy`` with the validation metric over its trials) and how far apart its plans are
(the mean number of modules in which two of its plans differ). Then the new arm's choice minus the
old fine arm's, and each fine arm's choice minus the better baseline's (paired bootstrap SE on the
validation rows), pooled over the cells with se_cells. Two pairing checks per cell: the dense
warm start's figure, and the knapsack optimum (both arms' first trial, the same plan), must match.

    python bench/diverse_arm.py [NEW_RUN_DIR ...] [--csv FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

from _common import ROOT, add_data_dir  # noqa: E402  (also puts the repository on sys.path)

import pandas as pd
from objectives import _choose, _with_derived, cells, completed
from search_quality import _agreement, _paired_standard_error


RULE = "calibrated+proxy"
BASELINES = ("uniform", "grid")


def spread(frame: pd.DataFrame) -> float:
    """Mean number of modules in which two of the arm's plans differ (NaN under two plans)."""
    plans = [json.loads(p)["modules"] for p in frame["plan_json"]]
    pairs = [sum(a[m] != b.get(m) for m in a) for a, b in itertools.combinations(plans, 2)]
    return sum(pairs) / len(pairs) if pairs else float("nan")


def arm_row(frame: pd.DataFrame) -> dict:
    """The arm's choice on RULE and what it had to choose from, in points of retention."""
    frame = _with_derived(frame)
    chosen = _choose(frame, RULE)
    retention = 100 * frame["retention"]
    return {"chosen": 100 * float(chosen["retention"]), "chosen_kind": chosen["kind"],
            "predictions": chosen["predictions"], "mean": retention.mean(),
            "mean_se": retention.std(ddof=1) / math.sqrt(len(frame)), "best": retention.max(),
            "within": _agreement(frame, RULE), "spread": spread(frame), "trials": len(frame)}


def cell_rows(task: str, arms: dict[str, pd.DataFrame], new: pd.DataFrame, label: str, data_dir) -> tuple[list, dict]:
    """Per-arm rows and the cell's differences (points), with its pairing checks."""
    done = {name: completed(frame) for name, frame in arms.items() if name in ("fine",) + BASELINES}
    done[label] = completed(new)
    rows = {name: arm_row(frame) for name, frame in done.items()}
    dense_old = float(done["fine"]["dense_primary"].iloc[0])
    dense_new = float(done[label]["dense_primary"].iloc[0])
    first_old = done["fine"].sort_values("trial_id").iloc[0]
    first_new = done[label].sort_values("trial_id").iloc[0]
    baseline = max(BASELINES, key=lambda b: rows[b]["chosen"])

    def paired(arm: str) -> float:
        return 100 * _paired_standard_error(task, data_dir, rows[arm]["predictions"],
                                            rows[baseline]["predictions"]) / dense_old

    cell = {"dense_old": 100 * dense_old, "dense_new": 100 * dense_new,
            "same_optimum": first_old["plan_summary"] == first_new["plan_summary"],
            "optimum_old": 100 * float(first_old["retention"]), "optimum_new": 100 * float(first_new["retention"]),
            "baseline": baseline, f"{label} - fine": rows[label]["chosen"] - rows["fine"]["chosen"],
            "fine - baseline": rows["fine"]["chosen"] - rows[baseline]["chosen"], "fine se": paired("fine"),
            f"{label} - baseline": rows[label]["chosen"] - rows[baseline]["chosen"], f"{label} se": paired(label),
            f"{label} mean - fine mean": rows[label]["mean"] - rows["fine"]["mean"]}
    return [{"arm": name} | {k: v for k, v in row.items() if k != "predictions"} for name, row in rows.items()], cell


def pooled(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean, se_cells and cells >= 0 of each difference column."""
    out = []
    for column in columns:
        values = table[column]
        out.append({"difference": column, "cells": len(values), "mean": values.mean(),
                    "se_cells": values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan"),
                    ">= 0": int((values >= -1e-9).sum())})
    return pd.DataFrame(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*",
                        help="new arms' run directories (default: every bench/results/diverse/<label>/<run>)")
    add_data_dir(parser)  # for the paired SE
    parser.add_argument("--csv", help="write the per-cell table here")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs] or sorted((ROOT / "bench" / "results" / "diverse").glob("*/*"))
    data_dir = args.data_dir
    arm_table, cell_table = [], []
    for run in runs:
        label, kept = run.parent.name, ROOT / "bench" / "results" / "runs" / run.name
        if not kept.is_dir():
            print(f"{run}: no kept run {kept} to pair it with", file=sys.stderr)
            return 2
        kept_cells = {cell: arms for _, cell, arms in cells([kept])}
        for _, cell, arms in cells([run]):
            if cell not in kept_cells or "fine" not in arms:
                print(f"{run}: cell {cell} has no kept arms in {kept} (or no new fine arm)", file=sys.stderr)
                return 2
            task = cell.split("-")[0]
            rows, differences = cell_rows(task, kept_cells[cell], arms["fine"], label, data_dir)
            arm_table += [{"run": run.name, "cell": cell} | row for row in rows]
            cell_table.append({"run": run.name, "cell": cell, "label": label} | differences)
    if not cell_table:
        print(f"no cells in {len(runs)} runs", file=sys.stderr)
        return 1
    arms, differences = pd.DataFrame(arm_table), pd.DataFrame(cell_table)
    with pd.option_context("display.width", 250, "display.float_format", "{:.2f}".format):
        print(f"Each arm choosing on {RULE} (points of validation retention; within: Spearman of the rule with "
              "validation inside the arm; spread: mean modules two of its plans differ in):")
        print(arms.to_string(index=False))
        print("\nPairing checks and differences per cell (points; se: paired bootstrap against the better baseline):")
        print(differences.to_string(index=False))
        for label, group in differences.groupby("label"):
            print(f"\n{label}, over {len(group)} cells:")
            print(pooled(group, [f"{label} - fine", "fine - baseline", f"{label} - baseline",
                                 f"{label} mean - fine mean"]).to_string(index=False))
    if args.csv:
        differences.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
