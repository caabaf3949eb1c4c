"""Pool several ``search_quality.py`` runs (one per seed): is the search's lead more than noise?

Each DIR is the ``--out`` of one ``bench/search_quality.py`` run. For every (run, task, target)
cell that has the ``search`` arm and a baseline arm (``uniform``, ``grid``), this prints

* ``chosen``: the search arm's chosen plan minus the better baseline arm's chosen plan, in points
  of retention on the full validation split, with its paired standard error (a bootstrap over the
  validation rows, resampled together for both plans): what ``search_quality.py`` reports;
* ``family``: the mean of all the search arm's completed trials minus the same mean of the baseline
  arm whose mean is higher, with the paired bootstrap SE: how good the plans the search proposes
  are, apart from which one its selection rows picked;
* ``choice_lead``, ``choice_se``: on the selection rows, the points by which the search arm's
  choice led its runner-up, with the paired SE (runs whose records keep selection predictions);
* ``search_regret``, ``baseline_regret``: the points each chosen plan is below its arm's best trial
  on the validation split: what choosing on the selection rows gave up (no SE: a maximum is biased);

and each arm's chosen plan on the validation split (``retention_<arm>``, % of the dense warm
start's metric ``dense``) with the objective the measured arm chose on (``objective``);

then over every cell, per target (several tasks and targets) and per task and target, the mean
difference with two standard errors:

* ``se_rows``: from the cells' paired SEs, sqrt(sum se^2) / cells: the validation rows' noise only;
* ``se_cells``: the spread of the differences between cells, sd / sqrt(cells): what a new seed would
  move, training noise and selection included (NaN for one cell).

``--arm A`` measures another arm than ``search`` (e.g. ``halfway``) and ``--baselines B,C`` against
other arms than ``uniform,grid`` (the better of them per cell, as above), so ``--arm halfway
--baselines search`` pits two ways of proposing plans against each other; the ``search_*`` columns
then describe arm A. Cells measured with other arms are not pooled together.

Last, each proxy's rank correlations from the runs' ``proxies.csv``, per task: the mean and how
many runs reach 0.6. ``--csv FILE`` writes the per-cell table, ``--markdown FILE`` the per-cell
table and the pooled means as Markdown (the README's). Runs whose arms of one name differ in trials, stages,
steps, selection rows or min_hamming are refused: their differences measure different things.

Cells whose runs are gone can still be pooled from what earlier runs wrote: ``--cells FILE`` (a
per-cell table written by ``--csv``, e.g. ``bench/results/*_pooled_*.csv``) and ``--proxies FILE``
(a run's ``proxies.csv``), each repeatable. A (seed, task, target) cell given twice is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

BASELINES = ("uniform", "grid")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("runs", nargs="*", help="search_quality.py --out directories, one per seed")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws over the validation rows")
    parser.add_argument("--arm", default="search", help="the arm measured against the baselines (default: search)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="comma-separated arms, the better of which per cell is compared (default: uniform,grid)")
    parser.add_argument("--csv", help="write the per-cell table here")
    parser.add_argument("--markdown", help="write the per-cell table and the pooled means here, as Markdown tables")
    parser.add_argument("--cells", action="append", default=[],
                        help="a per-cell table written earlier by --csv, pooled with the runs' (repeatable)")
    parser.add_argument("--proxies", action="append", default=[],
                        help="an earlier run's proxies.csv, pooled with the runs' (repeatable)")
    args = parser.parse_args()
    if args.draws < 2:
        print(f"--draws must be at least 2, got {args.draws}", file=sys.stderr)
        return 2
    baselines = tuple(b for b in args.baselines.split(",") if b)
    if not baselines or args.arm in baselines:
        print(f"--baselines must name one or more arms other than --arm {args.arm!r}, got {args.baselines!r}",
              file=sys.stderr)
        return 2
    if not args.runs and not args.cells:
        print("give at least one run directory or --cells FILE", file=sys.stderr)
        return 2
    missing = [f for f in args.cells + args.proxies if not Path(f).is_file()]
    if missing:
        print(f"no such file: {missing[0]}", file=sys.stderr)
        return 2
    unwritable = [f for f in (args.csv, args.markdown) if f and not Path(f).resolve().parent.is_dir()]
    if unwritable:
        print(f"cannot write {unwritable[0]}: its directory does not exist", file=sys.stderr)
        return 2
    import pandas as pd

    try:
        rows = [measure(cell, args.data_dir, args.draws, args.arm, baselines)
                for cell in collect(args.runs, args.arm, baselines)]
        table = pd.concat([pd.DataFrame(rows)] + [_earlier_cells(f) for f in args.cells], ignore_index=True)
        compared = table[["arm", "baselines"]].drop_duplicates()
        if len(compared) > 1:
            raise ValueError("the cells compare different arms: " + "; ".join(
                f"{a} against {b}" for a, b in compared.itertuples(index=False)))
        table["target"] = table["target"].astype(float)  # a run's directory names it as text
        duplicated = table[table.duplicated(["seed", "task", "target"], keep=False)]
        if not duplicated.empty:
            first = duplicated.iloc[0]
            raise ValueError(f"cell seed {first['seed']} {first['task']} {first['target']} is given more than once "
                             f"(runs: {', '.join(map(str, duplicated['run'].unique()))})")
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    with pd.option_context("display.width", 250, "display.max_colwidth", 60):
        print(table.drop(columns=["run"]).round({c: 2 for c in table.columns if c != "target"}).to_string(index=False))
    print()
    for (task, target), group in groups(table):
        for what in ("chosen", "family"):
            p = pool(group[what], group[f"{what}_se"])
            print(f"{task} {target}: {what} mean {p['mean']:+.2f} points over {p['cells']} cells "
                  f"(se_rows {p['se_rows']:.2f}, se_cells {p['se_cells']:.2f}); >= 0 in {p['at_least_zero']} of {p['cells']}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(table))
    proxies = _proxies(args.runs, args.proxies)
    if proxies is not None:
        print("\nproxy rank correlations (each run's proxies.csv): mean over the runs, and in how many >= 0.6")
        print(proxies.to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def groups(table) -> list[tuple[tuple[str, str], object]]:
    """What to pool: every cell (``all``), each target over its tasks (where the table has more
    than one task and more than one target: else that is ``all`` or a (task, target) again), and
    each (task, target)."""
    out = [(("all", ""), table)]
    if table["task"].nunique() > 1 and table["target"].nunique() > 1:
        out += [(("all", target), group) for target, group in table.groupby("target")]
    return out + list(table.groupby(["task", "target"]))


# how the Markdown table names an arm's --objective
OBJECTIVE_NAMES = {"selection_primary": "metric", "selection_loss": "loss", "selection_kl": "KL",
                   "selection_loss_calibrated": "calibrated loss"}


def _objective_name(objective) -> str:
    """``OBJECTIVE_NAMES``' name of it (with its `` + prior W``, the search's ``--prior-weight`` when
    above 0); ``?`` for a cell read from a table written before it was kept."""
    if not isinstance(objective, str):
        return "?"
    name, plus, prior = objective.partition(" + ")
    return OBJECTIVE_NAMES.get(name, name) + plus + prior


def markdown(table) -> str:
    """The per-cell table (one row per seed x task x target: the dense warm start's validation
    metric, each arm's chosen plan on the validation split as retention of it, the difference
    with its paired SE) and the pooled means, as Markdown."""
    arm, baselines = table["arm"].iloc[0], table["baselines"].iloc[0].split(",")
    head = (["target", "task", "seed", "dense", "chose on", f"{arm}: chosen plan", arm] + baselines
            + ["better baseline's plan", f"{arm} - better baseline", "families"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.sort_values(["target", "task", "seed"]).itertuples(index=False):
        row = row._asdict()
        retention = [f"{row.get(f'retention_{name}', math.nan):.2f}%" for name in [arm] + baselines]
        cells = [f"{100 * float(row['target']):g}%", row["task"], str(row["seed"]),
                 f"{row.get('dense', math.nan):.4f}", _objective_name(row.get("objective")), row["search_plan"],
                 *retention, f"{row['baseline']}: {row['baseline_plan']}",
                 f"**{row['chosen']:+.2f} +- {row['chosen_se']:.2f}**",
                 f"{row['family']:+.2f} +- {row['family_se']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| cells | n | chosen: mean (se_cells) | chosen >= 0 | families: mean (se_cells) |",
              "|---|---|---|---|---|"]
    for (task, target), group in groups(table):
        chosen, family = pool(group["chosen"], group["chosen_se"]), pool(group["family"], group["family_se"])
        name = f"{task} {100 * float(target):g}%" if target != "" else "all"
        lines.append(f"| {name} | {chosen['cells']} | {chosen['mean']:+.2f} ({chosen['se_cells']:.2f}) | "
                     f"{chosen['at_least_zero']} of {chosen['cells']} | "
                     f"{family['mean']:+.2f} ({family['se_cells']:.2f}) |")
    return "\n".join(lines) + "\n"


def _earlier_cells(path: str):
    """A per-cell table that ``--csv`` wrote, its ``run`` column naming the file."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"--cells {path}: cannot read it ({err})") from err
    needed = {"seed", "task", "target", "chosen", "chosen_se", "family", "family_se"}
    if not needed <= set(table.columns):
        raise ValueError(f"--cells {path}: not a table written by --csv (lacks {', '.join(sorted(needed - set(table.columns)))})")
    if "arm" not in table:  # written before --arm: the search arm against the default baselines
        table = table.assign(arm="search", baselines=",".join(BASELINES))
    return table.assign(run=path)


def _proxies(runs: list[str], earlier: list[str]):
    """The proxy rank correlations of the runs (their ``proxies.csv``) and of ``earlier`` files,
    per (task, target) and column: the mean over the runs and ``k/n`` runs at 0.6 or above; None
    when a run has no ``proxies.csv``."""
    import pandas as pd

    files = [Path(run) / "proxies.csv" for run in runs] + [Path(f) for f in earlier]
    if not files or not all(f.is_file() for f in files):
        return None
    table = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    columns = [c for c in table.columns if c not in ("task", "target", "trials") and table[c].notna().any()]
    rows = {}
    for key, group in table.groupby(["task", "target"]):
        rows[key] = {c: f"{group[c].mean():+.2f} ({int((group[c] >= 0.6).sum())}/{int(group[c].notna().sum())})"
                     for c in columns}
    return pd.DataFrame.from_dict(rows, orient="index").T


def collect(runs: list[str], arm: str = "search", baselines: tuple[str, ...] = BASELINES) -> list[dict]:
    """The (run, task, target) cells of ``runs``: each arm's directory, settings checked alike.

    Raises ``ValueError`` (one line) for a directory that is not a finished run, a cell without
    ``arm`` or any of ``baselines``, or runs whose arms of one name differ in trials, stages, steps,
    selection rows or min_hamming."""
    from nxmiformer.search import SearchConfig

    cells: dict[tuple, dict] = {}
    settings: dict[str, dict[str, str]] = {}  # arm -> its settings -> the first run with them
    for run in runs:
        arm_dirs = sorted(p for p in Path(run).glob("*-*-*") if (p / "results.parquet").is_file())
        if not arm_dirs:
            raise ValueError(f"{run} holds no finished search_quality arm (<task>-<target>-<arm>/results.parquet)")
        for arm_dir in arm_dirs:
            task, target, name = arm_dir.name.rsplit("-", 2)
            config = SearchConfig.load(arm_dir)
            setting = (f"{config.trials} + {config.learn_trials} learned + {config.refine_trials} Optuna trials x "
                       f"{config.steps} steps, {config.selection_size} selection rows, min_hamming {config.min_hamming}")
            settings.setdefault(name, {}).setdefault(setting, run)
            cell = cells.setdefault((run, task, target), {"run": run, "task": task, "target": target,
                                                         "seed": config.seed, "arms": {},
                                                         "objectives": {}})  # arm -> its --objective
            cell["arms"][name] = arm_dir
            cell["objectives"][name] = config.objective + (f" + prior {config.prior_weight:g}" if config.prior_weight else "")
    for name, seen in settings.items():
        if len(seen) > 1:
            raise ValueError(f"the {name} arms differ: " + "; ".join(f"{s} in {r}" for s, r in seen.items()))
    for cell in cells.values():
        if arm not in cell["arms"] or not set(baselines) & set(cell["arms"]):
            raise ValueError(f"{cell['run']} {cell['task']} {cell['target']}: needs the {arm} arm and one of "
                             f"{', '.join(baselines)}, has {', '.join(sorted(cell['arms']))}")
    return list(cells.values())


def measure(cell: dict, data_dir: str, draws: int, arm: str = "search", baselines: tuple[str, ...] = BASELINES) -> dict:
    """One cell's ``chosen`` and ``family`` differences (points of retention) of ``arm`` against the
    better of ``baselines``, with paired bootstrap SEs."""
    import numpy as np
    from search_quality import _finished, _validation_labels

    from nxmiformer.trials.metrics import bootstrap_primary

    labels = _validation_labels(data_dir, cell["task"])
    arms = {}
    for name, arm_dir in cell["arms"].items():
        if name != arm and name not in baselines:
            continue
        result = _finished(arm_dir)
        done = result.results[result.results["status"] == "completed"]
        if result.best is None or done.empty:
            raise ValueError(f"{arm_dir}: no completed trial to compare")
        dense = float(result.best["primary"] / result.best["retention"])
        if "predictions" not in done or not done["predictions"].map(lambda p: isinstance(p, str) and bool(p)).all():
            raise ValueError(f"{arm_dir}: its records keep no validation predictions (written before they were kept)")
        predictions = [np.asarray(json.loads(p)) for p in done["predictions"]]
        chosen = int(np.flatnonzero(done.index == result.best.name)[0])
        arms[name] = {"dense": dense, "predictions": predictions, "chosen": chosen,
                      "plan": result.best["plan_summary"], "objective": cell["objectives"][name]}
    # retention (%) of every trial of every arm on the same samples of rows; sample 0 is the validation split itself
    scores = {name: 100 * bootstrap_primary(cell["task"], a["predictions"], labels, draws) / a["dense"]
              for name, a in arms.items()}
    present = [b for b in baselines if b in arms]
    best_chosen = max(present, key=lambda b: scores[b][0, arms[b]["chosen"]])
    best_family = max(present, key=lambda b: scores[b][0].mean())
    chosen = scores[arm][:, arms[arm]["chosen"]] - scores[best_chosen][:, arms[best_chosen]["chosen"]]
    family = scores[arm].mean(axis=1) - scores[best_family].mean(axis=1)
    return {"run": cell["run"], "seed": cell["seed"], "task": cell["task"], "target": cell["target"],
            "arm": arm, "baselines": ",".join(baselines), "objective": arms[arm]["objective"],
            "dense": arms[arm]["dense"],  # the warm start's validation metric, what retention divides by
            "search_plan": arms[arm]["plan"], "baseline": best_chosen, "baseline_plan": arms[best_chosen]["plan"],
            "chosen": chosen[0], "chosen_se": chosen[1:].std(ddof=1),
            "family_baseline": best_family, "family": family[0], "family_se": family[1:].std(ddof=1),
            # points each arm's selection gave up against its best trial on the validation split
            "search_regret": scores[arm][0].max() - scores[arm][0, arms[arm]["chosen"]],
            "baseline_regret": scores[best_chosen][0].max() - scores[best_chosen][0, arms[best_chosen]["chosen"]],
            # each arm's chosen plan on the validation split, retention in % of the dense warm start
            **{f"retention_{name}": scores[name][0, a["chosen"]] for name, a in arms.items()},
            **_choice(cell["arms"][arm])}


def _choice(arm_dir: Path) -> dict:
    """An arm's lead of its chosen trial over its runner-up on the selection rows, in
    points, with the paired SE (``search.json``'s ``choice``; NaN for a run written before)."""
    choice = json.loads((arm_dir / "search.json").read_text()).get("choice")
    if not choice:
        return {"choice_lead": math.nan, "choice_se": math.nan}
    return {"choice_lead": 100 * choice["lead"], "choice_se": 100 * choice["se"]}


def pool(differences, standard_errors) -> dict:
    """Mean of per-cell differences with the two standard errors of the module docstring."""
    import numpy as np

    d = np.asarray(differences, dtype=float)
    se = np.asarray(standard_errors, dtype=float)
    k = len(d)
    return {"cells": k, "mean": float(d.mean()), "se_rows": float(math.sqrt((se ** 2).sum()) / k),
            "se_cells": float(d.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan,
            "at_least_zero": int((d >= 0).sum())}


if __name__ == "__main__":
    sys.exit(main())
