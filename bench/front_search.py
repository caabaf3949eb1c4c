"""A front in one search against one search per target, and the Optuna stage against more knapsack
trials, on the CPU, as a user runs them (``nxmi search`` commands, each in its own process).

Per task (``--tasks``: ``sst2`` from GLUE, ``tweet`` the TweetEval sentiment CSVs beside the clone),
with the ``quick`` preset's sizes and ``--trials`` candidates per target:

* ``single-<T>``: one search per target (``--target-ratio T``), one after the other, sharing one cache
  that starts empty (a user's second search reuses the first one's warm start);
* ``front``: one search of every target (``--target-ratio T1,T2,T3``), its own empty cache;
* ``more``: the front search with ``--trials + 1`` candidates per target (knapsack plans only);
* ``optuna``: the front search with ``--trials`` candidates per target and as many Optuna trials as
  targets (multi-objective TPE): the same trial count as ``more``;
* ``range``: one search of ``--range`` (``LOW:HIGH:COUNT``) with ``--range-trials`` candidates per target,
  and its front drawn by ``nxmi pareto --plot`` (``range.png`` beside the searches).

It reports each search's wall time (the front against the three single searches summed, same cache
conditions), each target's chosen plan in the front search minus the single search's (validation
primary, paired bootstrap SE over the shared rows, pooled over targets and tasks with the SEs combined
as independent: the searches share rows, not trials), the distinct ratios with a completed plan,
and the hypervolume of (ratio, validation retention) over the completed trials of ``more`` and
``optuna`` (reference point: ``--hv-ratio``, ``--hv-retention``).

    python bench/front_search.py --out bench/results/front_search_<date>.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, add_data_dir

TWEET = ROOT.parent / "shared" / "data" / "custom" / "tweet_sentiment"


def data_flags(task: str, glue: str) -> list[str]:
    if task == "sst2":
        return ["--task", "sst2", "--data-dir", glue]
    return ["--train-file", str(TWEET / "train.csv"), "--validation-file", str(TWEET / "validation.csv")]


def search(out: Path, cache: Path, flags: list[str]) -> float:
    """``nxmi search`` in its own process (as a user runs it), with ``cache`` as its cache; its wall time.
    A finished search is not run again (its recorded time is reused)."""
    timing = out.parent / f"{out.name}.seconds"
    if (out / "results.parquet").is_file() and timing.is_file():
        return float(timing.read_text())
    command = [sys.executable, "-m", "nxmiformer", "search", "--preset", "quick", "--out", str(out), *flags]
    print("$ nxmi " + " ".join(command[3:]), flush=True)
    env = os.environ | {"NXMI_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    timing.write_text(f"{seconds:.1f}")
    print(f"  {seconds:.0f} s", flush=True)
    return seconds


def choices(out: Path) -> dict[float, dict]:
    """The chosen trial's record per target of the search in ``out``."""
    from nxmiformer.analysis import load_results

    results = load_results([out]).set_index("trial_id", drop=False)
    state = json.loads((out / "search.json").read_text())
    return {float(c["target_ratio"]): results.loc[c["trial_id"]] for c in state["choices"] if c["trial_id"]}


def validation_labels(out: Path):
    """The labels of the validation rows the search's trials predicted, in their order."""
    import numpy as np

    from nxmiformer.models import load_tokenizer
    from nxmiformer.search import SearchConfig
    from nxmiformer.trials import prepare_task_data

    config = SearchConfig.load(out)
    data = config.data_config()
    dense = json.loads((out / "search.json").read_text())["provenance"]["dense_path"]
    rows = prepare_task_data(data.task_info, load_tokenizer(dense), data_dir=data.data_dir, max_length=data.max_length,
                             train_size=data.train_size, eval_size=data.eval_size, seed=data.seed, include_train=False,
                             holdout_size=data.holdout_size, selection_size=data.selection_size)
    return data.task_info, np.asarray(next(iter(rows.eval.values()))["labels"])


def hypervolume(results, ratio0: float, retention0: float) -> float:
    """The area (ratio x validation retention) the completed trials dominate above the reference point."""
    done = results[(results["status"] == "completed")][["ratio_paper", "retention"]].dropna()
    points = sorted(((r, m) for r, m in done.itertuples(index=False) if r > ratio0 and m > retention0), reverse=True)
    area, best = 0.0, retention0
    for k, (ratio, retention) in enumerate(points):  # sweep from the highest ratio down
        best = max(best, retention)
        nxt = points[k + 1][0] if k + 1 < len(points) else ratio0
        area += (ratio - nxt) * (best - retention0)
    return area


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_dir(parser)
    parser.add_argument("--tasks", default="sst2,tweet", help="comma-separated: sst2, tweet")
    parser.add_argument("--targets", default="0.875,0.9375,0.96875")
    parser.add_argument("--trials", type=int, default=3, help="candidates per target")
    parser.add_argument("--arms", default="single,front,more,optuna,range", help="which searches to run")
    parser.add_argument("--range", default="0.85:0.97:6", help="the targets of the range arm")
    parser.add_argument("--range-trials", type=int, default=2, help="candidates per target of the range arm")
    parser.add_argument("--hv-ratio", type=float, default=0.85)
    parser.add_argument("--hv-retention", type=float, default=0.80)
    parser.add_argument("--work", type=Path, default=Path("/tmp/nxmi-front-search"))
    parser.add_argument("--out", type=Path, help="write the record here (.json)")
    args = parser.parse_args()

    from nxmiformer.analysis import load_results
    from nxmiformer.trials.metrics import paired_difference

    targets = [float(t) for t in args.targets.split(",")]
    arms = args.arms.split(",")
    record = {"targets": targets, "trials_per_target": args.trials, "tasks": {}}
    for task in args.tasks.split(","):
        work = args.work / task
        work.mkdir(parents=True, exist_ok=True)
        flags = data_flags(task, args.data_dir) + ["--trials", str(args.trials)]
        row: dict = {}
        if "single" in arms:
            row["single_seconds"] = {t: search(work / f"single-{t}", work / "cache-single", flags + ["--target-ratio", str(t)])
                                     for t in targets}
        if "front" in arms:
            row["front_seconds"] = search(work / "front", work / "cache-front", flags + ["--target-ratio", args.targets])
        if "single" in arms and "front" in arms:
            row["time_ratio"] = row["front_seconds"] / sum(row["single_seconds"].values())
            info, labels = validation_labels(work / "front")
            front = choices(work / "front")
            row["front_minus_single"] = {}
            for t in targets:
                single = choices(work / f"single-{t}").get(t)
                mine = front.get(t)
                if single is None or mine is None:
                    continue
                diff, se = paired_difference(info, json.loads(mine["predictions"]), json.loads(single["predictions"]), labels)
                row["front_minus_single"][t] = {"front": mine["trial_id"], "single": single["trial_id"],
                                                "same_plan": mine["plan_json"] == single["plan_json"],
                                                "difference": diff, "se": se}
            results = load_results([work / "front"])
            done = results[results["status"] == "completed"]
            row["front_distinct_ratios"] = int(done["ratio_paper"].round(6).nunique())
        shared = flags[:-2] + ["--target-ratio", args.targets]
        if "more" in arms:
            row["more_seconds"] = search(work / "more", work / "cache-front", shared + ["--trials", str(args.trials + 1)])
        if "optuna" in arms:
            row["optuna_seconds"] = search(work / "optuna", work / "cache-front",
                                           shared + ["--trials", str(args.trials), "--refine-trials", str(len(targets))])
        if "range" in arms:
            row["range_seconds"] = search(work / "range", work / "cache-front",
                                          flags[:-2] + ["--target-ratio", args.range, "--trials", str(args.range_trials)])
            plot = work / "range.png"
            plot.unlink(missing_ok=True)
            subprocess.run([sys.executable, "-m", "nxmiformer", "pareto", "--results", str(work / "range"), "--plot",
                            str(plot)], check=True, cwd=ROOT)
        for arm in ("front", "more", "optuna", "range"):
            if (work / arm / "results.parquet").is_file():
                results = load_results([work / arm])
                done = results[results["status"] == "completed"]
                row[f"{arm}_hypervolume"] = hypervolume(results, args.hv_ratio, args.hv_retention)
                row[f"{arm}_completed"] = int(len(done))
                row[f"{arm}_distinct_ratios"] = int(done["ratio_paper"].round(6).nunique())
        record["tasks"][task] = row
        print(json.dumps({task: row}, indent=1, default=str), flush=True)

    pooled = [d for row in record["tasks"].values() for d in row.get("front_minus_single", {}).values()]
    if pooled:
        mean = sum(d["difference"] for d in pooled) / len(pooled)
        se = math.sqrt(sum(d["se"] ** 2 for d in pooled)) / len(pooled)
        record["front_minus_single_pooled"] = {"difference": mean, "se": se, "cells": len(pooled)}
        print(f"front minus single, pooled over {len(pooled)} cells: {mean:+.4f} (SE {se:.4f})")
    if args.out:
        args.out.write_text(json.dumps(record, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
