"""Does the learning stage find a better plan when it learns from a cell's every arm? (trains 2 plans per cell)

The fine arm's lead over the baselines is its knapsack optimum's lead (docs/search_quality.md), so a
better optimum is what could close the cells it misses. ``nxmi search``'s learning stage re-solves the
knapsack on the proxy calibrated on the finished trials (:mod:`nxmiformer.search.calibrate`); on the
fine arm's own trials it found nothing better (they are near-copies: the fit has nothing to learn
from). Here it learns from the 18 trials a kept cell already has: the fine arm's six and the uniform
and grid arms' twelve, which differ in every component type. Per cell it reads the kept records
(``bench/results/runs/<run>/<task>-<target>-{fine,uniform,grid}``), loads the cell's cached warm start
and profile (``--cache-dir``: the one the cell ran on; without it the warm start is retrained and the
trials are no longer paired), and trains the stage's ``--plans`` plans as the fine arm trained its own
(the fine arm's ``search.json``: same rows, steps and seed). Then the learned plans against the fine
arm's optimum (its first trial) and its choice on ``calibrated+proxy``, with paired bootstrap SEs on
the validation rows. ``--dry-run`` prints the plans without training them.

    python bench/learned_arm.py RUN TASK --cache-dir DIR --out DIR [--optimum-from DIR] [--dry-run]
    python bench/learned_arm.py --pool   # the kept cells (bench/results/learned/<run>/<task>/compare.csv), pooled
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

import pandas as pd
from objectives import _choose, _with_derived, add_cell_arguments, cell_arms, completed, kept_tables, over_cells
from search_quality import _paired_standard_error

from nxmiformer.records import read_records, write_records

def learned_plans(run: Path, task: str, cache_dir: str, out: Path, plans: int, dry_run: bool) -> pd.DataFrame:
    """Train (or with ``dry_run`` only print) the learning stage's plans, fitted on the cell's arms."""
    from nxmiformer.models import skeleton
    from nxmiformer.search.calibrate import calibrated_candidates
    from nxmiformer.search.cluster import ray_session
    from nxmiformer.search.heuristic import build_problem, modules_frame
    from nxmiformer.search.profile import PROXIES, profile_sensitivity
    from nxmiformer.search.runner import SearchConfig, _learn
    from nxmiformer.trials.dense import finetune_dense

    arms = cell_arms(run, task)
    done = pd.concat(arms.values(), ignore_index=True)
    config = dataclasses.replace(SearchConfig.load(run / f"{task}-0.96875-fine"), out=str(out), cache_dir=cache_dir,
                                 learn_trials=plans)
    data = config.data_config()
    dense = finetune_dense(data, config.dense_config(), config.cache_root(), progress=True)
    if not dense.cached:
        print(f"warning: the warm start was not in {cache_dir}: retrained, so the trials are not paired with the kept ones")
    with ray_session(None):
        profile = profile_sensitivity(dense.path, data, config.options, config.calib_size, cache_dir=config.cache_root(),
                                      workers=1, progress=True, device="cpu", oneshot=False)
        sensitivity = profile.table.assign(score=profile.table[PROXIES[config.proxy]])
        modules = modules_frame(skeleton(dense.path))
        if dry_run:
            for plan in calibrated_candidates(build_problem(sensitivity, modules), config.target, done,
                                              config.objective, plans):
                print(f"  {plan.meta['calibrated_score']:.4f}  {plan.summary()}")
            return done.iloc[0:0]
        out.mkdir(parents=True, exist_ok=True)
        shared = {"trial": config.trial_config().to_dict(), "dense_path": str(dense.path)}
        learned = _learn(config, done, sensitivity, modules, shared, out, False, dense.primary, True, lambda t: t)
    write_records(learned, out / "results.parquet")
    return learned


def compare(run: Path, task: str, learned: pd.DataFrame, optimum_from: Path | None, data_dir) -> pd.DataFrame:
    """Each learned plan against the cell's kept arms (see :func:`differences`); with ``optimum_from``,
    against the optimum of that fine arm instead (trained on the same retrained warm start)."""
    arms = cell_arms(run, task)
    optimum = None
    if optimum_from is not None:
        other = completed(read_records(optimum_from / "results.parquet"))
        optimum = other[other["kind"] == "optimal"].iloc[0]
    return differences(task, arms, completed(learned), data_dir, optimum).assign(run=run.name)


def differences(task: str, arms: dict[str, pd.DataFrame], learned: pd.DataFrame, data_dir,
                optimum: pd.Series | None = None) -> pd.DataFrame:
    """Per learned plan, points of validation retention minus: the knapsack optimum (the fine arm's
    first trial, or ``optimum``), the fine arm's choice and the better baseline's choice (both on
    ``calibrated+proxy``), each with its paired bootstrap SE on the validation rows."""
    arms = {name: _with_derived(frame) for name, frame in arms.items()}
    fine = arms["fine"]
    if optimum is None:
        optimum = fine[fine["kind"] == "optimal"].iloc[0]
    chosen = {name: _choose(frame, "calibrated+proxy") for name, frame in arms.items()}
    better = max(("uniform", "grid"), key=lambda a: chosen[a]["retention"])
    dense = float(optimum["dense_primary"])
    rows = []
    for _, plan in learned.iterrows():
        row = {"task": task, "plan": plan["plan_summary"], "retention": 100 * plan["retention"],
               "selection_loss_calibrated": plan["selection_loss_calibrated"]}
        for key, other in (("optimum", optimum), ("fine_choice", chosen["fine"]), ("baseline", chosen[better])):
            row[f"minus_{key}"] = 100 * (plan["retention"] - other["retention"])
            row[f"minus_{key}_se"] = 100 * _paired_standard_error(task, data_dir, plan["predictions"],
                                                                  other["predictions"]) / dense
        row["baseline"] = better
        rows.append(row)
    return pd.DataFrame(rows)


def pooled(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per plan of the stage (its first, its second) and difference: mean over cells, se_cells, cells > 0."""
    rows = []
    for k in range(max(len(t) for t in tables)):
        plans = pd.DataFrame([t.iloc[k] for t in tables if len(t) > k])
        for key in ("optimum", "fine_choice", "baseline"):
            rows.append({"plan": k + 1, "minus": key} | over_cells(plans[f"minus_{key}"]))
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    add_cell_arguments(parser, "the warm starts and profiles the cell ran on")
    parser.add_argument("--out", type=Path, help="where the learned trials go (a new directory)")
    parser.add_argument("--pool", action="store_true",
                        help="only print the kept cells (bench/results/learned/<run>/<task>/compare.csv), pooled")
    parser.add_argument("--plans", type=int, default=2, help="plans the learning stage trains (default 2)")
    parser.add_argument("--optimum-from", type=Path,
                        help="a fine arm trained on this --cache-dir, whose optimum to pair with (a retrained warm start)")
    parser.add_argument("--dry-run", action="store_true", help="print the plans, train nothing")
    parser.add_argument("--reuse", action="store_true", help="read the learned trials already under --out")
    args = parser.parse_args()
    if args.pool:
        tables = list(kept_tables("learned", "compare.csv").values())
        if not tables:
            parser.error("--pool: no kept cells under bench/results/learned")
        with pd.option_context("display.width", 250, "display.max_colwidth", 90, "display.float_format", "{:.2f}".format):
            print(pd.concat(tables, ignore_index=True).drop(columns=["selection_loss_calibrated"]).to_string(index=False))
            print()
            print(pooled(tables).to_string(index=False))
        return 0
    if args.run is None or args.task is None or args.cache_dir is None or args.out is None:
        parser.error("give RUN TASK --cache-dir DIR --out DIR (or --pool)")
    if args.plans < 1:
        parser.error(f"--plans must be >= 1, got {args.plans}")
    if args.out.exists() and any(args.out.iterdir()) and not (args.reuse or args.dry_run):
        parser.error(f"--out {args.out} is not empty; choose another (or --reuse its trials)")
    if args.reuse:
        learned = read_records(args.out / "results.parquet")
    else:
        learned = learned_plans(args.run, args.task, args.cache_dir, args.out, args.plans, args.dry_run)
    if args.dry_run:
        return 0
    table = compare(args.run, args.task, learned, args.optimum_from, args.data_dir)
    with pd.option_context("display.width", 250, "display.max_colwidth", 90, "display.float_format", "{:.2f}".format):
        print(table.to_string(index=False))
    table.to_csv(args.out / "compare.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
