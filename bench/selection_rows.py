"""How many selection rows does the choice of a plan need? Re-decide finished runs on fewer rows.

Each DIR is the ``--out`` of a ``bench/search_quality.py`` run whose trials kept their predictions
on the selection rows. For every (run, task, target) cell and every size ``n`` of ``--sizes``, each
arm's plan is chosen again, by the runs' own rule (``select`` on the search's objective, here the
selection rows' task metric), from the predictions on a subset of ``n`` of the selection rows:

* ``first``: the first ``n`` rows, the very rows ``--selection-size n`` would have held out (the
  selection rows are a prefix of one seeded shuffle of the training split); the trials themselves,
  their ASHA cuts included, stay those of the full run;
* ``random``: the mean over ``--draws`` random subsets of ``n`` rows: what another set of ``n``
  selection rows would give on average.

Printed per cell and size: the validation retention (points) of the search arm's choice minus that
of the better baseline arm's choice (``chosen``, as ``search_quality.py`` reports it), and each
arm's regret (its best trial on the validation split minus its choice; beside the search arm's, the
regret of a trial picked at random: what choosing on no rows at all would give). Then per size, pooled over
the cells, with ``se_cells`` (spread between cells over sqrt(cells)). ``--csv FILE`` writes the
per-cell table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

ARM = "search"
BASELINES = ("uniform", "grid")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("runs", nargs="+", help="search_quality.py --out directories")
    parser.add_argument("--sizes", default="250,500,1000", help="comma-separated subset sizes (the full set is added)")
    parser.add_argument("--draws", type=int, default=200, help="random subsets per size")
    parser.add_argument("--seed", type=int, default=0, help="of the random subsets")
    parser.add_argument("--csv", help="write the per-cell table here")
    args = parser.parse_args()
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s})
    except ValueError:
        print(f"--sizes must be comma-separated integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    if not sizes or sizes[0] < 1:
        print(f"--sizes must be positive integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    if args.draws < 1:
        print(f"--draws must be at least 1, got {args.draws}", file=sys.stderr)
        return 2
    import numpy as np
    import pandas as pd
    from search_quality_pool import collect

    rng = np.random.default_rng(args.seed)
    try:
        rows = []
        for cell in collect(args.runs, ARM, BASELINES):
            arms = {name: _arm(d) for name, d in cell["arms"].items() if name == ARM or name in BASELINES}
            labels = _labels(cell["arms"][ARM], args.data_dir)
            full = len(labels)
            if any(len(p) != full for arm in arms.values() for p in arm["predictions"]):
                raise ValueError(f"{cell['run']} {cell['task']}: the trials predicted other rows than the {full} "
                                 f"selection rows read from {args.data_dir}")
            for n in [s for s in sizes if s < full] + [full]:
                subsets = {"first": [np.arange(n)]}
                subsets["random"] = [np.arange(full)] if n == full else [
                    rng.choice(full, n, replace=False) for _ in range(args.draws)]
                for how, draws in subsets.items():
                    outcome = np.mean([_decide(arms, cell["task"], labels, rows_) for rows_ in draws], axis=0)
                    rows.append({"run": cell["run"], "seed": cell["seed"], "task": cell["task"],
                                 "target": cell["target"], "rows": n, "subset": how, "chosen": outcome[0],
                                 "search_regret": outcome[1], "baseline_regret": outcome[2],
                                 "search_coin_regret": outcome[3]})
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    table = pd.DataFrame(rows)
    print(table.drop(columns=["run"]).round(2).to_string(index=False))
    print()
    for (n, how), group in table.groupby(["rows", "subset"], sort=True):
        k = len(group)
        se = group["chosen"].std(ddof=1) / np.sqrt(k) if k > 1 else float("nan")
        print(f"{n:>5} rows, {how:>6}: chosen mean {group['chosen'].mean():+.2f} points over {k} cells "
              f"(se_cells {se:.2f}), >= 0 in {int((group['chosen'] >= 0).sum())}; regret search "
              f"{group['search_regret'].mean():.2f} (a random pick {group['search_coin_regret'].mean():.2f}), "
              f"baseline {group['baseline_regret'].mean():.2f}")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def _arm(arm_dir: Path) -> dict:
    """An arm's eligible trials (completed, meeting the target), with their selection predictions."""
    import numpy as np

    from nxmiformer.analysis import load_results
    from nxmiformer.search import SearchConfig

    config = SearchConfig.load(arm_dir)
    results = load_results(arm_dir)
    done = results[(results["status"] == "completed") & config.target.is_met(results[config.target.column])]
    if done.empty:
        raise ValueError(f"{arm_dir}: no completed trial meeting the target")
    if config.objective != "selection_primary":
        raise ValueError(f"{arm_dir}: chose on {config.objective}; this re-decides on selection_primary only")
    if not done["selection_predictions"].map(lambda p: isinstance(p, str) and bool(p)).all():
        raise ValueError(f"{arm_dir}: its records keep no selection predictions (written before they were kept)")
    return {"config": config, "results": done.reset_index(drop=True),
            "predictions": [np.asarray(json.loads(p)) for p in done["selection_predictions"]]}


def _labels(arm_dir: Path, data_dir: str):
    """The labels of the arm's selection rows, read from ``data_dir`` (the run's own may be elsewhere)."""
    import dataclasses

    from nxmiformer.models import resolve_model_path
    from nxmiformer.search import SearchConfig
    from nxmiformer.search.runner import _selection_labels

    config = dataclasses.replace(SearchConfig.load(arm_dir), data_dir=data_dir)
    dense = Path(json.loads((arm_dir / "search.json").read_text())["provenance"]["dense_path"])
    # the warm start keeps the base model's tokenizer; its cache may be gone where the records travelled
    return _selection_labels(config, dense if dense.is_dir() else Path(resolve_model_path(config.model)))


def _decide(arms: dict, task: str, labels, rows) -> tuple[float, float, float, float]:
    """On selection ``rows``: (search choice minus the better baseline choice, search regret,
    that baseline's regret, the search's regret had it picked a trial at random), in points of
    validation retention."""
    from nxmiformer.analysis import select
    from nxmiformer.trials.metrics import compute_metrics, primary_metric

    metric = primary_metric(task)
    retention = {}
    for name, arm in arms.items():
        scores = [compute_metrics(task, p[rows], labels[rows])[metric] for p in arm["predictions"]]
        chosen = select(arm["results"].assign(selection_primary=scores), arm["config"].target,
                        metric="selection_primary")
        values = 100 * arm["results"]["retention"]
        retention[name] = (100 * float(chosen["retention"]), float(values.max()), float(values.mean()))
    baseline = max((b for b in BASELINES if b in retention), key=lambda b: retention[b][0])
    search = retention[ARM]
    return (search[0] - retention[baseline][0], search[1] - search[0],
            retention[baseline][1] - retention[baseline][0], search[1] - search[2])


if __name__ == "__main__":
    sys.exit(main())
