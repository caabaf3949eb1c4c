"""How much of a trial's figure is the trial's own noise? Kept plans trained again with another trial seed

A short trial's selection loss and validation metric depend on its plan and on its batch order and
initial state (the trial seed; by default the data seed). This trains the first ``--per-arm`` plans
of each of a kept cell's arms (``bench/results/runs/<run>/<task>-0.96875-{fine,uniform,grid}``)
again, exactly as they were trained (the fine arm's ``search.json``: the same rows, steps and cached
warm start, ``--cache-dir``) but for the trial seed (``--trial-seed``), and sets each retest beside
its kept trial: the difference per plan, its spread (the trial noise) against the spread between the
plans, and the test-retest rank correlation of each measure. A measure whose retest correlation is
low cannot be ranked well by any proxy: it bounds what the proxy correlation target can reach.

    python bench/retest.py RUN TASK --cache-dir DIR --out DIR [--per-arm 3] [--trial-seed 1001]
    python bench/retest.py --pool    # the kept retests (bench/results/retest/<run>/<task>/), pooled

``--chosen --trial-seeds S1,S2`` asks instead whether a cell's difference survives other trial
seeds: it trains the two plans the cell's difference compares, the fine arm's choice and the better
baseline arm's choice, once per seed, and reports per seed fine minus that baseline on the
validation split (points of retention), then the mean over the kept seed and the new ones with its
standard error over seeds (the trial noise the per-cell SE leaves out):

    python bench/retest.py RUN TASK --cache-dir DIR --out DIR --chosen --trial-seeds 1001,1002
    python bench/retest.py --pool --chosen   # the kept ones (bench/results/retest_chosen/<run>/<task>/)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import _common  # noqa: E402,F401  (puts the repository on sys.path)

import numpy as np
import pandas as pd
from objectives import add_cell_arguments, cell_arms, completed, kept_tables
from scipy.stats import spearmanr

from nxmiformer.records import write_records

MEASURES = ("selection_loss", "selection_loss_calibrated", "selection_primary", "retention")


def kept_plans(run: Path, task: str, per_arm: int) -> pd.DataFrame:
    """The first ``per_arm`` completed trials of each kept arm, by trial id, with their arm."""
    return pd.concat([frame.sort_values("trial_id").head(per_arm).assign(arm=arm)
                      for arm, frame in cell_arms(run, task).items()], ignore_index=True)


def chosen_plans(run: Path, task: str) -> pd.DataFrame:
    """The fine arm's chosen trial and the better baseline's (uniform or grid, the higher chosen
    validation retention), as each arm chose them: the pair a cell's difference compares."""
    from search_quality import _finished

    rows = {}
    for arm in ("fine", "uniform", "grid"):
        directory = run / f"{task}-0.96875-{arm}"
        if not (directory / "results.parquet").is_file():
            raise SystemExit(f"no kept {arm} arm at {directory}; allowed: a run with the arms fine, uniform, grid")
        rows[arm] = _finished(directory).best
    baseline = max(("uniform", "grid"), key=lambda arm: float(rows[arm]["retention"]))
    return pd.DataFrame([rows["fine"], rows[baseline]]).assign(arm=["fine", baseline]).reset_index(drop=True)


def seed_differences(table: pd.DataFrame) -> pd.DataFrame:
    """Per trial seed (``kept`` and each retest's), fine's retention minus the baseline's, in points;
    ``table`` is ``pairs`` of ``chosen_plans`` with a ``seed`` column, one row per (seed, arm)."""
    rows = []
    first = table[table["seed"] == table["seed"].iloc[0]]
    kept = 100 * (first.loc[first["arm"] == "fine", "retention_kept"].iloc[0]
                  - first.loc[first["arm"] != "fine", "retention_kept"].iloc[0])
    rows.append({"seed": "kept", "difference": kept})
    for seed, group in table.groupby("seed", sort=False):
        fine = group.loc[group["arm"] == "fine", "retention_retest"]
        other = group.loc[group["arm"] != "fine", "retention_retest"]
        if len(fine) == 1 and len(other) == 1:
            rows.append({"seed": str(seed), "difference": 100 * (fine.iloc[0] - other.iloc[0])})
    return pd.DataFrame(rows)


def over_seeds(differences: pd.DataFrame) -> dict:
    """The mean of the per-seed differences and its SE over seeds (sd / sqrt(seeds))."""
    values = differences["difference"].to_numpy(dtype=float)
    return {"seeds": len(values), "kept": float(values[0]), "mean": float(values.mean()),
            "se_seeds": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan"),
            "seeds >= 0": int((values >= 0).sum())}


def retrain(run: Path, task: str, plans: pd.DataFrame, cache_dir: str, out: Path, trial_seed: int) -> pd.DataFrame:
    """Train ``plans`` again as the fine arm trained its own, with ``trial_seed``; their records."""
    import json

    from nxmiformer.models import skeleton
    from nxmiformer.search.cluster import ray_session
    from nxmiformer.search.heuristic import modules_frame
    from nxmiformer.search.runner import SearchConfig, _fit, _make_tuner, results_table
    from nxmiformer.trials.dense import finetune_dense

    config = dataclasses.replace(SearchConfig.load(run / f"{task}-0.96875-fine"), out=str(out), cache_dir=cache_dir)
    dense = finetune_dense(config.data_config(), config.dense_config(), config.cache_root(), progress=True)
    if not dense.cached:
        raise SystemExit(f"no cached warm start in {cache_dir}: a retrained one would not pair with the kept trials")
    out.mkdir(parents=True, exist_ok=True)
    candidates = [{"plan": json.loads(row["plan_json"]), "kind": row["kind"], "heuristic_score": float(row["heuristic_score"])}
                  for _, row in plans.iterrows()]
    with ray_session(None):
        from ray import tune

        from nxmiformer.trials.trainable import trial_trainable

        shared = {"trial": config.trial_config().replace(seed=trial_seed).to_dict(), "dense_path": str(dense.path)}
        tuner = _make_tuner(config, trial_trainable, shared | {"candidate": tune.grid_search(candidates)}, out, "retest",
                            len(candidates), True, False)
        results = results_table(_fit(tuner, config), config.target, dense.primary, modules_frame(skeleton(dense.path)),
                                lambda trial: trial.get("candidate"))
    write_records(results, out / "results.parquet")
    shutil.rmtree(out / "retest", ignore_errors=True)  # the trials' checkpoints (about 300 MB each); the records keep what is read
    return results


def pairs(kept: pd.DataFrame, again: pd.DataFrame) -> pd.DataFrame:
    """One row per plan: its arm, and each MEASURE kept and retested (matched on the plan)."""
    from nxmiformer.compression import CompressionPlan

    def canonical(plan_json: str) -> str:
        return CompressionPlan.from_json(plan_json).to_json(indent=None)

    again = completed(again)
    again = again.set_index(again["plan_json"].map(canonical))
    rows = []
    for _, row in kept.iterrows():
        key = canonical(row["plan_json"])
        if key not in again.index:
            continue
        other = again.loc[key]
        rows.append({"arm": row["arm"], "plan": row["plan_summary"]}
                    | {f"{m}_kept": float(row[m]) for m in MEASURES} | {f"{m}_retest": float(other[m]) for m in MEASURES})
    return pd.DataFrame(rows)


def reliability(table: pd.DataFrame) -> pd.DataFrame:
    """Per measure, over all plans and within the fine arm: ``shift``, the mean of retest minus kept
    (moves every plan alike, so it does not reorder them); ``noise_sd``, one trial's own noise (the
    SD of retest minus kept over sqrt 2); ``between_sd``, the SD between the plans (the root mean
    square of the kept and the retest SDs: the shift left out); their ratio; and the test-retest
    Spearman over all plans."""
    def spread(kept: pd.Series, again: pd.Series) -> float:
        return float(np.sqrt((kept.std(ddof=1) ** 2 + again.std(ddof=1) ** 2) / 2))

    rows = []
    fine = table["arm"] == "fine"
    for m in MEASURES:
        kept, again = table[f"{m}_kept"], table[f"{m}_retest"]
        noise, between = float((again - kept).std(ddof=1) / np.sqrt(2)), spread(kept, again)
        rows.append({"measure": m, "plans": len(table), "shift": float((again - kept).mean()), "noise_sd": noise,
                     "between_sd": between, "noise / between": noise / between if between else float("nan"),
                     "retest_spearman": float(spearmanr(kept, again).statistic),
                     "fine_noise_sd": float((again[fine] - kept[fine]).std(ddof=1) / np.sqrt(2)),
                     "fine_between_sd": spread(kept[fine], again[fine])})
    return pd.DataFrame(rows)


def seed_list(text: str) -> list[int]:
    """``"1001,1002"`` -> [1001, 1002]; anything else is an argparse error naming what is allowed."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"--trial-seeds {text!r}: expected distinct non-negative integers, comma-separated")
    return [int(p) for p in parts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_arguments(parser, "the warm starts the cell ran on (required: the pairing needs them)")
    parser.add_argument("--out", type=Path, help="where the retrained trials go (a new directory)")
    parser.add_argument("--per-arm", type=int, default=3, help="plans per arm to train again (default 3)")
    parser.add_argument("--trial-seed", type=int, default=1001, help="the retests' trial seed (default 1001)")
    parser.add_argument("--pool", action="store_true", help="only print the kept retests, per cell and pooled")
    parser.add_argument("--chosen", action="store_true",
                        help="train the fine arm's and the better baseline's chosen plans once per --trial-seeds")
    parser.add_argument("--trial-seeds", default="1001,1002", type=seed_list,
                        help="with --chosen: the retests' trial seeds, comma-separated (default 1001,1002)")
    args = parser.parse_args()
    if args.pool and args.chosen:
        tables = kept_tables("retest_chosen", "pairs.csv")
        if not tables:
            parser.error("--pool --chosen: no kept retests under bench/results/retest_chosen")
        summary = pd.DataFrame([{"cell": name} | over_seeds(seed_differences(table)) for name, table in tables.items()])
        with pd.option_context("display.width", 250, "display.float_format", "{:.2f}".format):
            for name, table in tables.items():
                print(f"{name}: " + ", ".join(f"{r.seed} {r.difference:+.2f}" for r in seed_differences(table).itertuples()))
            print(summary.to_string(index=False))
        return 0
    if args.pool:
        tables = kept_tables("retest", "pairs.csv")
        if not tables:
            parser.error("--pool: no kept retests under bench/results/retest")
        with pd.option_context("display.width", 250, "display.float_format", "{:.4f}".format):
            for name, table in tables.items():
                print(f"{name}:\n{reliability(table).to_string(index=False)}\n")
        return 0
    if args.run is None or args.task is None or args.cache_dir is None or args.out is None:
        parser.error("give RUN TASK --cache-dir DIR --out DIR (or --pool)")
    if args.per_arm < 2:
        parser.error(f"--per-arm must be >= 2 (a spread needs two plans), got {args.per_arm}")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty; choose another")
    args.out = args.out.resolve()  # Ray Tune's storage takes an absolute path
    if args.chosen:
        kept = chosen_plans(args.run, args.task)
        table = pd.concat([pairs(kept, retrain(args.run, args.task, kept, args.cache_dir, args.out / f"seed{seed}", seed))
                           .assign(seed=seed) for seed in args.trial_seeds], ignore_index=True)
        table.to_csv(args.out / "pairs.csv", index=False)
        differences = seed_differences(table)
        print(differences.to_string(index=False, float_format="{:+.2f}".format))
        print(over_seeds(differences))
        return 0
    kept = kept_plans(args.run, args.task, args.per_arm)
    again = retrain(args.run, args.task, kept, args.cache_dir, args.out, args.trial_seed)
    table = pairs(kept, again)
    table.to_csv(args.out / "pairs.csv", index=False)
    with pd.option_context("display.width", 250, "display.float_format", "{:.4f}".format):
        print(reliability(table).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
