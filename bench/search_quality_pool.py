"""Pool several ``search_quality.py`` runs (one per seed): is the search's lead more than noise?

Each DIR is the ``--out`` of one ``bench/search_quality.py`` run (older runs included: the records
are read as they are, without resuming them). For every (run, task, target) cell that has the
measured arm (``--arm``, default ``fine``) and a baseline arm (``uniform``, ``grid``), this prints

* ``chosen``: the arm's chosen plan minus the better baseline's chosen plan, in points of retention
  on the full validation split, with its paired standard error (a bootstrap over the validation
  rows, every plan resampled together). Every choice is made on the selection rows only: each arm
  picks its trial as its search did (``nxmiformer.analysis.select`` on the objective and prior
  weight in its ``search.json``), and the better baseline is the one whose chosen trial is better on
  the selection rows by the measured arm's objective (``search_quality.better_on_selection``: the
  calibrated selection loss for the cells that chose on it, the selection rows' task metric,
  ``selection_primary``, for the older cells), ties to the lower selection loss;
* ``chosen_valrule``: the same with the rule used before, the better baseline picked on the
  validation split that then reports it (a choice on the rows that score it: biased toward the
  baselines), for comparison;
* ``family``: the mean of all the arm's completed trials minus the same mean of the baseline arm
  whose trials are better on average on the selection rows (same objective), with its paired SE:
  how good the plans the search proposes are, apart from which one its selection picked;
* ``choice_lead``, ``choice_se``: the points (of the task metric) by which the arm's choice led its
  runner-up on the selection rows, with the paired SE (``search.json``'s ``choice``). **In-sample**:
  the rows that chose the trial also measure its lead, so it is biased upward;
* ``choice_heldout``, ``choice_heldout_se``: the same two trials' difference on the validation
  split (points of the task metric), with its paired SE: the held-out view of that lead;
* ``search_regret``, ``baseline_regret``: the points each chosen plan is below its arm's best trial
  on the validation split: what choosing on the selection rows gave up (no SE: a maximum is biased);

and each arm's chosen plan on the validation split (``retention_<arm>``, % of the dense warm
start's metric ``dense``) with the objective the measured arm chose on (``objective``).

Then over every cell, per target (several tasks and targets) and per task and target, the mean
difference with its standard error:

* ``se`` (printed as THE standard error): a **joint bootstrap over the validation rows the cells
  share**. Every cell of a task is scored on the same validation split, so the cells' errors are
  correlated: each bootstrap replicate resamples a task's rows once and applies that resample to
  every plan of every cell of the task (the tasks' rows are resampled independently of each other
  within a replicate); the pooled mean is computed per replicate, and ``se`` is the SD over the
  replicates. It measures the validation rows' noise, conditional on the trained plans;
* ``se_cells``: the spread of the differences between cells, sd / sqrt(cells): what a new seed would
  move, training noise and selection included, but blind to the noise the cells share through their
  common validation rows (NaN for one cell). It used to be the table's SE; it is printed beside
  ``se`` for comparison.

Cells read from a per-cell CSV (``--cells``) carry no per-row predictions and cannot join the
joint bootstrap: they enter the means and ``se_cells``, the output counts them, and ``se`` then
covers only the cells with predictions (``cells_joint``; their own mean is printed beside it). A CSV
written before the selection rule holds the validation rule's ``chosen``: it is read as
``chosen_valrule``, and such a cell has no selection-rule figure.

``--arm A`` measures another arm and ``--baselines B,C`` against other arms than ``uniform,grid``
(the better of them per cell, as above); the ``search_*`` columns then describe arm A. Cells
measured with other arms are not pooled together. Runs whose arms of one name differ in trials,
stages, steps, selection rows or diversity are refused: their differences measure different
things.

Last, each proxy's rank correlations from the runs' ``proxies.csv``, per task: the mean and how
many runs reach 0.6 (``--proxies FILE`` adds an earlier run's file). ``--csv FILE`` writes the
per-cell table, ``--markdown FILE`` the per-cell table and the pooled tables as Markdown (the
README's). The tables of the README, from the kept records (seconds; no training)::

    python bench/search_quality_pool.py bench/results/runs/search_quality_9375_seed{4,5,6,7} \\
        bench/results/runs/search_quality_96875_seed{4,5,6,7,8,9,10,11,12,13,14,15,16} \\
        --markdown bench/results/search_quality_pooled.md --csv bench/results/search_quality_pooled.csv
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

BASELINES = ("uniform", "grid")
# the per-cell differences that are pooled; each has a ``<name>_se`` column and bootstrap draws
STATISTICS = ("chosen", "chosen_valrule", "family", "choice_heldout")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("runs", nargs="*", help="search_quality.py --out directories, one per seed")
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap draws over the validation rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's resamples")
    parser.add_argument("--arm", default="fine", help="the arm measured against the baselines (default: fine)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="comma-separated arms, the better of which per cell is compared (default: uniform,grid)")
    parser.add_argument("--csv", help="write the per-cell table here")
    parser.add_argument("--markdown", help="write the per-cell table and the pooled means here, as Markdown tables")
    parser.add_argument("--cells", action="append", default=[],
                        help="a per-cell table written earlier by --csv, pooled with the runs' (repeatable; "
                             "its cells join the means and se_cells, not the joint bootstrap)")
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

    from nxmiformer.errors import NxmiError

    try:
        measured = measure_all(collect(args.runs, args.arm, baselines), args.data_dir, args.draws, args.seed,
                               args.arm, baselines)
        table = pd.concat([pd.DataFrame(measured)] + [earlier_cells(f) for f in args.cells], ignore_index=True)
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
    except (ValueError, NxmiError) as err:
        print(err, file=sys.stderr)
        return 2
    shown = table.drop(columns=["run", *(f"{s}_draws" for s in STATISTICS if f"{s}_draws" in table)])
    with pd.option_context("display.width", 250, "display.max_colwidth", 60):
        print(shown.round({c: 2 for c in shown.columns if c != "target"}).to_string(index=False))
    print()
    summaries = int(table["from_csv"].sum()) if "from_csv" in table else 0
    if summaries:
        print(f"{summaries} of {len(table)} cells come from CSV summaries (--cells) without per-row predictions: they "
              "join the means and se_cells, and the joint-bootstrap se covers only the other cells\n")
    for (task, target), group in groups(table):
        for what in STATISTICS:
            p = pool(group[what], group.get(f"{what}_draws"))
            if not p["cells"]:
                continue
            joint = (f"se {p['se']:.2f} (joint bootstrap over the shared validation rows"
                     + (f", over the {p['cells_joint']} cells with predictions, whose mean is {p['mean_joint']:+.2f})"
                        if p["cells_joint"] < p["cells"] else ")"))
            print(f"{task} {target}: {what} mean {p['mean']:+.2f} points over {p['cells']} cells, {joint}, "
                  f"se_cells {p['se_cells']:.2f}; >= 0 in {p['at_least_zero']} of {p['cells']}")
        lead = table.loc[group.index, "choice_lead"].dropna() if "choice_lead" in table else []
        if len(lead):
            print(f"{task} {target}: choice lead mean {lead.mean():+.2f} points of the task metric on the selection rows "
                  f"(in-sample: the rows that chose) over {len(lead)} cells")
    if args.markdown:
        Path(args.markdown).write_text(markdown(table))
    proxies = _proxies(args.runs, args.proxies)
    if proxies is not None:
        print("\nproxy rank correlations (each run's proxies.csv): mean over the runs, and in how many >= 0.6")
        print(proxies.to_string())
    if args.csv:
        table.drop(columns=[f"{s}_draws" for s in STATISTICS if f"{s}_draws" in table]).to_csv(args.csv, index=False)
    return 0


def groups(table) -> list[tuple[tuple[str, str], object]]:
    """What to pool: every cell (``all``), each target over its tasks (where the table has more
    than one task and more than one target: else that is ``all`` or a (task, target) again), and
    each (task, target)."""
    out = [(("all", ""), table)]
    if table["task"].nunique() > 1 and table["target"].nunique() > 1:
        out += [(("all", target), group) for target, group in table.groupby("target")]
    return out + list(table.groupby(["task", "target"]))


def pool(values, draws=None) -> dict:
    """Per-cell differences (``values``; NaN: a cell without the figure, left out) pooled: their
    mean, ``se_cells`` (sd / sqrt(cells), NaN for one cell), the cells >= 0, and, where ``draws``
    gives a cell its bootstrap replicates (one array per cell, aligned with ``values``; None for a
    cell without), ``se``: the SD over the replicates of the mean over those cells, with their count
    ``cells_joint`` and their own mean ``mean_joint``. The replicates of every cell must come from
    the same resamples of each task's rows (:func:`task_scores`), so that the cells' shared noise
    stays in the pooled mean; NaN without any."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    draws = [None] * len(values) if draws is None else list(draws)
    keep = [i for i in range(len(values)) if not math.isnan(values[i])]
    d = values[keep]
    k = len(d)
    joint = [i for i in keep if isinstance(draws[i], np.ndarray)]
    out = {"cells": k, "mean": float(d.mean()) if k else math.nan,
           "se_cells": float(d.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan,
           "at_least_zero": int((d >= 0).sum()), "cells_joint": len(joint), "se": math.nan,
           "mean_joint": float(values[joint].mean()) if joint else math.nan}
    if joint:
        replicates = np.column_stack([draws[i] for i in joint]).mean(axis=1)
        out["se"] = float(replicates.std(ddof=1))
    return out


def task_scores(task: str, predictions: list, labels, draws: int, seed: int = 0):
    """``task``'s primary metric of several models' ``predictions`` (class ids or logits) on the same
    ``labels``: row 0 on the rows as given, then one row per bootstrap resample of them (``draws``),
    the same resamples for every model, so that any difference or mean across the models is
    resampled jointly. Shape ``[draws + 1, models]``. The resamples are drawn from ``seed`` and the
    task's name, so two tasks' rows are resampled independently.

    Accuracy and the mean of accuracy and F1 (MRPC, QQP) are computed from each resample's row
    counts at once; other metrics call ``compute_metrics`` per resample. Row 0 is checked against
    ``compute_metrics``."""
    import numpy as np

    from nxmiformer.trials import compute_metrics, get_task

    labels = np.asarray(labels)
    n = len(labels)
    models = [np.asarray(p) for p in predictions]
    if any(len(p) != n for p in models):
        raise ValueError(f"{task}: predictions of {sorted({len(p) for p in models})} rows against {n} labels")
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(task.encode())]))
    samples = rng.integers(0, n, (draws, n))
    info = get_task(task)
    fast = not info.is_regression and info.primary_metric in ("accuracy", "combined") and info.num_labels == 2
    if fast:
        counts = np.vstack([np.ones(n)] + [np.bincount(rows, minlength=n) for rows in samples])
        classes = np.column_stack([p.argmax(axis=1) if p.ndim == 2 else p for p in models]).astype(np.int64)
        gold = labels.astype(np.int64)[:, None]
        accuracy = counts @ (classes == gold) / n
        if info.primary_metric == "accuracy":
            scores = accuracy
        else:  # combined: (accuracy + binary F1 of label 1) / 2, F1 0 without a positive (zero_division 0)
            tp = counts @ ((classes == 1) & (gold == 1))
            wrong = counts @ (classes != gold)  # false positives + false negatives
            denominator = 2 * tp + wrong
            f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)
            scores = (accuracy + f1) / 2
    else:
        rows = [np.arange(n)] + list(samples)
        scores = np.array([[compute_metrics(task, p[r], labels[r])["primary"] for p in models] for r in rows])
    for j, p in enumerate(models):
        expected = compute_metrics(task, p, labels)["primary"]
        if not math.isclose(scores[0, j], expected, abs_tol=1e-9):
            raise ValueError(f"{task}: model {j} scores {scores[0, j]} here against {expected} in compute_metrics")
    return scores


def read_arm(arm_dir: Path) -> dict:
    """One arm of a run, read as it is (any record version; nothing resumed): its completed trials,
    the trial its search chose (``select`` on the objective and prior weight of its search.json: the
    selection rows and the plans' proxy cost only), the runner-up as ``nxmi search`` measures its
    choice (the next trial on another plan), and ``search.json``'s ``choice``."""
    from nxmiformer.analysis import load_results, search_objective, search_prior_weight, select
    from nxmiformer.compression import RatioTarget

    stored = json.loads((arm_dir / "search.json").read_text())
    results = load_results(arm_dir)
    done = results[results["status"] == "completed"].reset_index(drop=True)
    if done.empty:
        raise ValueError(f"{arm_dir}: no completed trial to compare")
    if not done["predictions"].map(lambda p: isinstance(p, str) and bool(p)).all():
        raise ValueError(f"{arm_dir}: its records keep no validation predictions (written before they were kept)")
    objective, prior = search_objective(results), search_prior_weight(results)
    target = RatioTarget(stored["target_ratio"], stored.get("convention", "paper"))
    best = select(done, target, metric=objective, prior_weight=prior)
    chosen = int(done.index[done["trial_id"] == best["trial_id"]][0])
    others = done[(done["plan_json"] != best["plan_json"]) & target.is_met(done[target.column])
                  & done[objective].notna()]
    runner_up = None
    if not others.empty:
        second = select(others, target, metric=objective, prior_weight=prior)
        runner_up = int(done.index[done["trial_id"] == second["trial_id"]][0])
    choice = stored.get("choice") or {}
    if choice and choice.get("trial_id") != best["trial_id"]:
        print(f"warning: {arm_dir}: search.json's choice {choice.get('trial_id')} is not the trial chosen here "
              f"({best['trial_id']}); its stored lead is left out", file=sys.stderr)
        choice = {}
    return {"done": done, "chosen": chosen, "runner_up": runner_up, "objective": objective, "prior_weight": prior,
            "dense": float(best["primary"] / best["retention"]), "choice": choice}


def collect(runs: list[str], arm: str = "fine", baselines: tuple[str, ...] = BASELINES) -> list[dict]:
    """The (run, task, target) cells of ``runs``: each arm's directory, settings checked alike.

    Raises ``ValueError`` (one line) for a directory that is not a finished run, a cell without
    ``arm`` or any of ``baselines``, or runs whose arms of one name differ in trials, stages, steps,
    selection rows or diversity (``min_hamming``, in records from before it was fixed)."""
    cells: dict[tuple, dict] = {}
    settings: dict[str, dict[str, str]] = {}  # arm -> its settings -> the first run with them
    for run in runs:
        arm_dirs = sorted(p for p in Path(run).glob("*-*-*") if (p / "results.parquet").is_file())
        if not arm_dirs:
            raise ValueError(f"{run} holds no finished search_quality arm (<task>-<target>-<arm>/results.parquet)")
        for arm_dir in arm_dirs:
            task, target, name = arm_dir.name.rsplit("-", 2)
            stored = json.loads((arm_dir / "search.json").read_text())
            # learn_trials and min_hamming: keys of records before 9002db8 (0 and None: what they ship as now)
            setting = (f"{stored['trials']} + {stored.get('learn_trials') or 0} learned + "
                       f"{stored.get('refine_trials') or 0} Optuna trials x {stored['steps']} steps, "
                       f"{stored['selection_size']} selection rows, min_hamming {stored.get('min_hamming')}")
            settings.setdefault(name, {}).setdefault(setting, run)
            cell = cells.setdefault((run, task, target), {"run": run, "task": task, "target": target,
                                                         "seed": stored["seed"], "arms": {}})
            cell["arms"][name] = arm_dir
    for name, seen in settings.items():
        if len(seen) > 1:
            raise ValueError(f"the {name} arms differ: " + "; ".join(f"{s} in {r}" for s, r in seen.items()))
    for cell in cells.values():
        if arm not in cell["arms"] or not set(baselines) & set(cell["arms"]):
            raise ValueError(f"{cell['run']} {cell['task']} {cell['target']}: needs the {arm} arm and one of "
                             f"{', '.join(baselines)}, has {', '.join(sorted(cell['arms']))}")
    return list(cells.values())


def measure_all(cells: list[dict], data_dir: str, draws: int, seed: int = 0, arm: str = "fine",
                baselines: tuple[str, ...] = BASELINES) -> list[dict]:
    """Every cell's row (:func:`measure`), the plans of all cells of a task scored on the same
    bootstrap resamples of its validation rows (:func:`task_scores`)."""
    from search_quality import validation_labels

    rows = []
    for task in sorted({c["task"] for c in cells}):
        of_task = [c for c in cells if c["task"] == task]
        arms = [{name: read_arm(d) for name, d in c["arms"].items() if name == arm or name in baselines}
                for c in of_task]
        predictions = [json.loads(p) for cell_arms in arms for a in cell_arms.values() for p in a["done"]["predictions"]]
        scores = task_scores(task, predictions, validation_labels(data_dir, task), draws, seed)
        start = 0
        for cell, cell_arms in zip(of_task, arms):
            columns = {}
            for name, a in cell_arms.items():
                columns[name] = scores[:, start:start + len(a["done"])]
                start += len(a["done"])
            rows.append(measure(cell, cell_arms, columns, arm, baselines))
    return rows


def measure(cell: dict, arms: dict, scores: dict, arm: str = "fine", baselines: tuple[str, ...] = BASELINES) -> dict:
    """One cell's differences of ``arm`` against the better of ``baselines``, in points, each with its
    point value (the validation split), its paired SE and its bootstrap draws (``<name>_draws``).

    ``arms``: name -> :func:`read_arm`; ``scores``: name -> the primary metric of its completed
    trials, ``[draws + 1, trials]`` (row 0: the validation split), every arm on the same resamples."""
    import numpy as np
    from search_quality import better_on_selection

    from nxmiformer.records import HIGHER_IS_BETTER

    a = arms[arm]
    objective = a["objective"]
    retention = {name: 100 * scores[name] / arms[name]["dense"] for name in arms}
    present = [b for b in baselines if b in arms]
    chosen_row = {b: arms[b]["done"].iloc[arms[b]["chosen"]] for b in present}
    by_selection = better_on_selection(chosen_row, objective)
    by_validation = max(present, key=lambda b: retention[b][0, arms[b]["chosen"]])
    sign = 1.0 if objective in HIGHER_IS_BETTER else -1.0
    family_baseline = max(present, key=lambda b: sign * arms[b]["done"][objective].mean())

    def of_chosen(name):
        return retention[name][:, arms[name]["chosen"]]

    differences = {"chosen": of_chosen(arm) - of_chosen(by_selection),
                   "chosen_valrule": of_chosen(arm) - of_chosen(by_validation),
                   "family": retention[arm].mean(axis=1) - retention[family_baseline].mean(axis=1)}
    if a["runner_up"] is not None:  # points of the task metric, as the choice's lead on the selection rows
        differences["choice_heldout"] = 100 * (scores[arm][:, a["chosen"]] - scores[arm][:, a["runner_up"]])
    out = {"run": cell["run"], "seed": cell["seed"], "task": cell["task"], "target": cell["target"],
           "arm": arm, "baselines": ",".join(baselines), "from_csv": False,
           "objective": objective + (f" + prior {a['prior_weight']:g}" if a["prior_weight"] else ""),
           "dense": a["dense"],  # the warm start's validation metric, what retention divides by
           "search_plan": a["done"]["plan_summary"].iloc[a["chosen"]],
           "baseline": by_selection, "baseline_plan": chosen_row[by_selection]["plan_summary"],
           "baseline_valrule": by_validation, "family_baseline": family_baseline}
    for name in STATISTICS:
        d = differences.get(name)
        out[name] = math.nan if d is None else float(d[0])
        out[f"{name}_se"] = math.nan if d is None else float(np.std(d[1:], ddof=1))
        out[f"{name}_draws"] = None if d is None else d[1:]
    choice = a["choice"]
    out |= {"choice_lead": 100 * choice["lead"] if choice else math.nan,
            "choice_se": 100 * choice["se"] if choice else math.nan,
            # points each arm's selection gave up against its best trial on the validation split
            "search_regret": float(retention[arm][0].max() - retention[arm][0, a["chosen"]]),
            "baseline_regret": float(retention[by_selection][0].max() - of_chosen(by_selection)[0]),
            # each arm's chosen plan on the validation split, retention in % of the dense warm start
            **{f"retention_{name}": float(of_chosen(name)[0]) for name in arms}}
    return out


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


def _pm(value, se) -> str:
    return "-" if value != value else f"{value:+.2f} +- {se:.2f}"



def _pooled(table, names):
    """Per (task, target) group of cells: the group and each of the columns ``names`` pooled."""
    for (task, target), group in groups(table):
        yield task, target, group, [pool(_column(group, name), group.get(f"{name}_draws")) for name in names]

def markdown(table) -> str:
    """The per-cell table (one row per seed x task x target: the dense warm start's validation
    metric, each arm's chosen plan on the validation split as retention of it, the differences with
    their paired SEs, the choice's lead in-sample and held out) and the pooled tables, as Markdown."""
    arm, baselines = table["arm"].iloc[0], table["baselines"].iloc[0].split(",")
    head = (["target", "task", "seed", "dense", "chose on", f"{arm}: chosen plan", arm] + baselines
            + ["better baseline on the selection rows: its plan", f"{arm} - better baseline",
               "(better on validation)", "families", "choice lead, selection rows (in-sample)",
               "choice lead, validation (held out)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.sort_values(["target", "task", "seed"]).itertuples(index=False):
        row = row._asdict()
        retention = [f"{row.get(f'retention_{name}', math.nan):.2f}%" for name in [arm] + baselines]
        chosen = "-" if row["chosen"] != row["chosen"] else f"**{row['chosen']:+.2f} +- {row['chosen_se']:.2f}**"
        baseline = row.get("baseline")
        cells = [f"{100 * float(row['target']):g}%", row["task"], str(row["seed"]),
                 f"{row.get('dense', math.nan):.4f}", _objective_name(row.get("objective")), row["search_plan"],
                 *retention, f"{baseline}: {row['baseline_plan']}" if isinstance(baseline, str) else "-", chosen,
                 _pm(row.get("chosen_valrule", math.nan), row.get("chosen_valrule_se", math.nan)),
                 _pm(row.get("family", math.nan), row.get("family_se", math.nan)),
                 _pm(row.get("choice_lead", math.nan), row.get("choice_se", math.nan)),
                 _pm(row.get("choice_heldout", math.nan), row.get("choice_heldout_se", math.nan))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{arm} minus the better baseline, points of retention, pooled over cells: the better baseline "
                  "chosen on the selection rows (the rule), and on the validation split (the rule before, for "
                  "comparison). se: joint bootstrap over the validation rows the cells share; se_cells: sd / "
                  "sqrt(cells), the old figure.", "",
              "| cells | n | chosen: mean | se (joint bootstrap) | se_cells | chosen >= 0 | "
              "better baseline on validation: mean | se (joint bootstrap) | se_cells |",
              "|---|---|---|---|---|---|---|---|---|"]
    for task, target, group, (c, v) in _pooled(table, ("chosen", "chosen_valrule")):
        lines.append(f"| {_group_name(task, target)} | {c['cells']} | {c['mean']:+.2f} | {_joint(c)} | "
                     f"{c['se_cells']:.2f} | {c['at_least_zero']} of {c['cells']} | {v['mean']:+.2f} | {_joint(v)} | "
                     f"{v['se_cells']:.2f} |")
    lines += ["", "Families (mean of all an arm's trials; the baseline whose trials are better on the selection rows "
                  "on average) and the choice's lead over its runner-up in points of the task metric: on the selection "
                  "rows that chose it (in-sample) and on the validation split (held out; se: joint bootstrap).", "",
              "| cells | n | families: mean | se (joint bootstrap) | se_cells | choice lead, in-sample: mean | "
              "choice lead, held out: mean | se (joint bootstrap) |",
              "|---|---|---|---|---|---|---|---|"]
    for task, target, group, (f, h) in _pooled(table, ("family", "choice_heldout")):
        lead = _column(group, "choice_lead").dropna()
        lines.append(f"| {_group_name(task, target)} | {f['cells']} | {f['mean']:+.2f} | {_joint(f)} | "
                     f"{f['se_cells']:.2f} | {lead.mean() if len(lead) else math.nan:+.2f} | {h['mean']:+.2f} | "
                     f"{_joint(h)} |")
    return "\n".join(lines) + "\n"


def _column(group, name: str):
    """A column of the table, all NaN where a table read from an older CSV lacks it."""
    import pandas as pd

    return group[name] if name in group else pd.Series(math.nan, index=group.index)


def _group_name(task: str, target) -> str:
    return f"{task} {100 * float(target):g}%" if target != "" else "all"


def _joint(p: dict) -> str:
    """The joint-bootstrap SE, with the cells it covers where that is fewer than the mean's."""
    if not p["cells_joint"]:
        return "-"
    if p["cells_joint"] == p["cells"]:
        return f"{p['se']:.2f}"
    return f"{p['se']:.2f} (over the {p['cells_joint']} cells with predictions, mean {p['mean_joint']:+.2f})"


def earlier_cells(path: str):
    """A per-cell table that ``--csv`` wrote, its ``run`` column naming the file and ``from_csv``
    marking its cells (no per-row predictions: no bootstrap draws). A table written before the
    selection rule (no ``chosen_valrule``) picked the better baseline on the validation split: its
    ``chosen`` becomes ``chosen_valrule``, and its cells have no selection-rule figure."""
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
    if "chosen_valrule" not in table:
        table = table.assign(chosen_valrule=table["chosen"], chosen_valrule_se=table["chosen_se"],
                             baseline_valrule=table.get("baseline"), chosen=math.nan, chosen_se=math.nan,
                             baseline=None, baseline_plan="", family=math.nan, family_se=math.nan)
    return table.assign(run=path, from_csv=True)


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


if __name__ == "__main__":
    sys.exit(main())
