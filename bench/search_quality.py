"""Does the heterogeneous search beat the uniform and per-component grid baselines at equal budget?

For each target ratio (default 87.5% and 93.75%, ``paper`` convention) three arms each get the
same number of short trials with the same settings (steps, training rows, evaluation rows,
seed), every trial run to the end (no early stopping, so no arm loses a trial to ASHA):

* ``search``: the search as shipped - the knapsack optimum and the next diverse heterogeneous
  plans, then the Optuna refinement stage seeded with their results (``--refine`` of the budget);
* ``uniform``: the uniform plans that meet the target, best one-shot score first;
* ``grid``: the per-component-type plans (one option per query/key/value/attn_out/ffn_in/ffn_out
  shared by every layer), best one-shot score first, as the original research did.

The dense warm start and the sensitivity profile are computed once and shared (cache). Prints the
best plan of each arm with its primary metric and retention (of the dense model's), and writes
every arm's search directory under ``--out`` (``nxmi pareto --results`` reads them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import ROOT, add_data_dir  # noqa: E402  (also puts the repository on sys.path)

ARMS = {"search": ("optimal", "diverse"), "uniform": ("uniform",), "grid": ("grid",)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--targets", default="0.875,0.9375")
    parser.add_argument("--budget", type=int, default=4, help="short trials per arm and target")
    parser.add_argument("--refine", type=int, default=2, help="of the search arm's budget, Optuna trials")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--eval-size", type=int, help="validation rows (default: all)")
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", help="warm starts and profiles (default: the user cache)")
    parser.add_argument("--arms", default=",".join(ARMS), help="arms to run (default: all)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "search-quality"))
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms):
        print(f"--arms must name some of {', '.join(ARMS)}, got {args.arms!r}", file=sys.stderr)
        return 2
    if not 0 <= args.refine < args.budget:
        print(f"--refine must be in [0, --budget), got {args.refine}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; choose another --out", file=sys.stderr)
        return 2

    from transformers.utils import logging as hf_logging

    from nxmiformer.search import SearchConfig, run_search

    hf_logging.set_verbosity_error()
    rows = []
    start = time.perf_counter()
    for target in [float(t) for t in args.targets.split(",")]:
        for arm in arms:
            kinds = ARMS[arm]
            refine = args.refine if arm == "search" else 0
            config = SearchConfig(
                out=str(out / f"{args.task}-{target}-{arm}"), task=args.task, target_ratio=target,
                data_dir=args.data_dir, max_length=64, train_size=args.train_size, eval_size=args.eval_size,
                seed=args.seed, trials=args.budget - refine, refine_trials=refine, steps=args.steps, kinds=kinds,
                calib_size=args.calib_size, asha=False, cache_dir=args.cache_dir)
            print(f"\n=== target {target:.2%}, arm {arm}: {args.budget} trials x {args.steps} steps", flush=True)
            result = run_search(config, progress=True)
            done = result.results[result.results["status"] == "completed"]
            best = result.best
            rows.append({
                "target": target, "arm": arm, "trials": len(result.results), "completed": len(done),
                "best_primary": float("nan") if best is None else best["primary"],
                "best_retention": float("nan") if best is None else best["retention"],
                "ratio_paper": float("nan") if best is None else best["ratio_paper"],
                "ratio_storage": float("nan") if best is None else best["ratio_storage"],
                "best_kind": "" if best is None else best["kind"],
                "plan": "" if best is None else best["plan_summary"],
                "wall_s": result.wall_time,
            })

    import pandas as pd

    table = pd.DataFrame(rows)
    print(f"\n{args.task}, MiniLM default, {args.budget} trials per arm x {args.steps} steps, "
          f"{args.train_size} training rows, seed {args.seed}; total {time.perf_counter() - start:.0f}s")
    with pd.option_context("display.width", 250, "display.max_colwidth", 80):
        shown = table.copy()
        for col in ("best_retention", "ratio_paper", "ratio_storage"):
            shown[col] = shown[col].map(lambda v: f"{v:.2%}")
        print(shown.to_string(index=False))
    for target, group in table.groupby("target"):
        ret = group.set_index("arm")["best_retention"]
        if {"search", "uniform", "grid"} <= set(ret.index):
            print(f"target {target:.2%}: search - uniform {ret['search'] - ret['uniform']:+.2%} points, "
                  f"search - grid {ret['search'] - ret['grid']:+.2%} points")
    table.to_csv(out / "summary.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
