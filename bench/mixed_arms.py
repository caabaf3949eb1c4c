"""Would the bench's search arm do better with a uniform and a grid plan among its trials? (kept records, no training)

``nxmi search``'s default kinds mix the knapsack optimum and its diverse neighbours with the best grid
and uniform plans; ``search_quality.py``'s ``fine`` arm spends its six trials on the optimum and
diverse plans alone. A trial's result does not depend on the arm that trains it (the same plan,
seed, rows, warm start and thread count train to the same weights; docs/search_quality.md,
"Determinism"), so a mixed arm of the same budget can be assembled from a cell's kept records: the first ``F`` trials
of ``fine`` (the optimum, then the diverse plans in the order the search proposed them), the first
``U`` of ``uniform`` and the first ``G`` of ``grid`` (best proxy score first, as those arms train
them; a grid plan that repeats one of the uniform plans taken is skipped). Each mix chooses on the
objective its cell's arms chose on (``calibrated+proxy``, what ``nxmi search --prior-weight 1``
ranks on, where the records carry the calibrated loss; the task metric before), and is set, like
``fine``, against the better of the uniform and grid arms' own choices. Printed per cell and pooled
(mean, se_cells, cells >= 0), with each mix's paired difference from ``fine`` alone.

    python bench/mixed_arms.py [RUN_DIR ...] [--mix F,U,G ...] [--csv FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)

import pandas as pd
from objectives import _choose, _with_derived, cells, completed, kept_runs

ARMS = ("fine", "uniform", "grid")
DEFAULT_MIXES = ("6,0,0", "5,1,0", "5,0,1", "4,1,1", "3,2,1", "3,1,2", "2,2,2")


def mix_spec(value: str) -> tuple[int, int, int]:
    """argparse type of ``--mix``: ``F,U,G`` trials of fine, uniform and grid, six in all."""
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 0 or sum(counts) != 6 or counts[0] < 1:
        raise argparse.ArgumentTypeError(
            f"bad --mix {value!r}: allowed F,U,G of non-negative counts summing to 6, F >= 1 (e.g. 4,1,1)")
    return counts


def first_trials(frame: pd.DataFrame, count: int, skip: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """The arm's first ``count`` trials in the order it trained them, skipping plans in ``skip``."""
    ordered = frame.sort_values("trial_id")
    return ordered[~ordered["plan_summary"].isin(skip)].head(count)


def cell_row(arms: dict[str, pd.DataFrame], mixes: list[tuple[int, int, int]]) -> dict | None:
    """Each mix's choice minus the better baseline's choice (points of retention), or None where
    the cell lacks an arm or has fewer completed trials than a mix takes."""
    done = {name: completed(arms[name]) for name in ARMS if name in arms}
    if len(done) < len(ARMS):
        return None
    calibrated = ("selection_loss_calibrated" in done["fine"]
                  and bool(done["fine"]["selection_loss_calibrated"].notna().all()))
    objective = "calibrated+proxy" if calibrated else "selection_primary"
    best_baseline = max(float(_choose(_with_derived(done[b]), objective)["retention"]) for b in ("uniform", "grid"))
    row = {"objective": objective}
    for fine, uniform, grid in mixes:
        parts = [first_trials(done["fine"], fine), first_trials(done["uniform"], uniform)]
        parts.append(first_trials(done["grid"], grid, set(parts[1]["plan_summary"])))
        if sum(len(p) for p in parts) < fine + uniform + grid:
            return None
        chosen = _choose(_with_derived(pd.concat(parts, ignore_index=True)), objective)
        row[f"{fine},{uniform},{grid}"] = 100 * (float(chosen["retention"]) - best_baseline)
        row[f"{fine},{uniform},{grid} chose"] = chosen["kind"]
    return row


def summary(table: pd.DataFrame, mixes: list[str], reference: str) -> pd.DataFrame:
    """Per mix: mean and se_cells of the difference, cells >= 0, and the paired difference from
    ``reference`` (mean, se_cells)."""
    out = []
    for mix in mixes:
        values, paired = table[mix], table[mix] - table[reference]
        n = len(values)
        out.append({"mix (fine,uniform,grid)": mix, "cells": n, "mean": values.mean(),
                    "se_cells": values.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan"),
                    ">= 0": int((values >= -1e-9).sum()), f"minus {reference}": paired.mean(),
                    "paired se": paired.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")})
    return pd.DataFrame(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="search_quality.py --out directories (default: bench/results/runs/*)")
    parser.add_argument("--mix", type=mix_spec, action="append",
                        help=f"a mix F,U,G to assemble (repeatable; default: {' '.join(DEFAULT_MIXES)})")
    parser.add_argument("--csv", help="write the per-cell table here")
    args = parser.parse_args()
    mixes = args.mix or [mix_spec(m) for m in DEFAULT_MIXES]
    if (6, 0, 0) not in mixes:
        mixes = [(6, 0, 0)] + mixes  # the reference: fine alone
    runs = [Path(r) for r in args.runs] or kept_runs()
    rows = []
    for run, cell, arms in cells(runs):
        row = cell_row(arms, mixes)
        if row is not None:
            rows.append({"run": run, "cell": cell} | row)
    if not rows:
        print(f"no cell with completed {', '.join(ARMS)} arms in {len(runs)} runs", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows)
    names = [f"{f},{u},{g}" for f, u, g in mixes]
    with pd.option_context("display.width", 250, "display.float_format", "{:+.2f}".format):
        print(table.to_string(index=False))
        print("\nEach mix's choice minus the better baseline's, in points of retention, over the cells:")
        print(summary(table, names, "6,0,0").to_string(index=False))
        subsets = {"at 96.875%": table["cell"].str.endswith("0.96875"),
                   "choosing on calibrated+proxy (the default)": table["objective"] == "calibrated+proxy"}
        for label, rows_of in subsets.items():
            if 1 < int(rows_of.sum()) < len(table):
                print(f"\nThe cells {label} ({int(rows_of.sum())}):")
                print(summary(table[rows_of], names, "6,0,0").to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
