"""Would another tie-break change which plan an arm chooses, and for better? (kept records, no training)

Every arm of the kept ``search_quality.py`` runs chose its plan with
:func:`nxmiformer.analysis.select` on the selection rows' task metric (``selection_primary``, the
default objective until 2026-11-30), which on 300-500 rows takes few values, so trials tie.
``select`` gives a tie to the higher ratio, then the first trial id. This reads the records of the
given runs (default: every run kept under ``bench/results/runs``) and, for each arm with a tie at
the top, reports the validation retention of the plan chosen by that rule beside the plan a
continuous measure on the same selection rows would choose among the tied trials: the lowest
``selection_kl`` (the divergence from the dense model), ``selection_loss`` or
``selection_loss_calibrated`` (where the records have it). The validation split is only read, to
score the rules; no rule here decides on it.

    python bench/tie_breaks.py [RUN_DIR ...] [--csv FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import ROOT  # noqa: E402  (also puts the repository on sys.path)

import pandas as pd

from nxmiformer.analysis import select
from nxmiformer.records import read_records

MEASURES = ("selection_kl", "selection_loss", "selection_loss_calibrated")


def tie_breaks(results: pd.DataFrame) -> dict | None:
    """For one arm's records: the number of completed trials tied at the top of
    ``selection_primary`` and the validation retention each rule's choice scores (None: no tie)."""
    done = results[(results["status"] == "completed") & results["selection_primary"].notna()]
    if done.empty:
        return None
    tied = done[done["selection_primary"] == done["selection_primary"].max()]
    if len(tied) < 2:
        return None
    target = float(done["ratio_paper"].min())  # every trial of an arm meets its target
    chosen = select(done, target, metric="selection_primary")
    out = {"trials": len(done), "tied": len(tied), "select": float(chosen["retention"])}
    for measure in MEASURES:
        if tied[measure].notna().all():
            out[f"lowest_{measure}"] = float(tied.sort_values([measure, "trial_id"]).iloc[0]["retention"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="search_quality.py --out directories (default: bench/results/runs/*)")
    parser.add_argument("--csv", help="write the per-arm table here")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs] or sorted((ROOT / "bench" / "results" / "runs").iterdir())
    rows, arms = [], 0
    for run in runs:
        for records in sorted(run.glob("*/results.parquet")):
            arms += 1
            found = tie_breaks(read_records(records))
            if found is not None:
                rows.append({"run": run.name, "arm": records.parent.name} | found)
    if not rows:
        print(f"no tie at the top of selection_primary in {arms} arms")
        return 0
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    print(f"\n{len(table)} of {arms} arms had a tie at the top. Mean change in validation retention against "
          "select's choice (points), over the arms each rule covers:")
    for column in (c for c in table.columns if c.startswith("lowest_")):
        change = (table[column] - table["select"]).dropna() * 100
        print(f"  {column}: {change.mean():+.2f} over {len(change)} arms "
              f"({(change > 0).sum()} better, {(change < 0).sum()} worse, {(change == 0).sum()} unchanged)")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
