"""Does the heterogeneous search beat the uniform and per-component grid baselines at equal budget?

For each task and target ratio (``paper`` convention) the arms each get the same number of short
trials with the same settings (steps, training rows, seed), every trial run to the end (no early
stopping, so no arm loses a trial to ASHA):

* ``fine``: ``nxmi search``'s first stage on its default menu (``fine``): the knapsack optimum and
  the next diverse heterogeneous plans on the chosen ``--proxy``;
* ``optuna`` (not run by default): the same first stage, then ``--stage2`` trials (at least 1) of
  the Optuna stage seeded with its results (``refine_trials``);
* ``uniform``: the uniform plans that meet the target, best proxy score first;
* ``grid``: the per-component-type plans (one option per query/key/value/attn_out/ffn_in/ffn_out
  shared by every layer), best proxy score first, as the original research did.

The baselines draw on ``--baseline-menu``: ``auto`` (default), the 12 options of the menu
``nxmi search`` called ``auto`` until 9002db8, on which every kept record's uniform and grid arms
ran (computed here, :func:`auto_menu`, and passed as an explicit option list since the product
dropped it), or ``fine``, the search's own menu.

Every arm chooses its plan on the selection rows (held out of training; the search's objective)
and is reported on the full validation split, which decides nothing; the better baseline is also
the one whose chosen plan is better on the selection rows (:func:`better_on_selection`), not on
the validation split it is reported on. The dense warm start and the profile are computed once per
task and shared (cache). Prints one table: each arm's chosen plan, its validation metric and
retention, the difference fine minus the better baseline with its standard error: paired (a
bootstrap over the validation rows of both plans' predictions, which the trial records keep) and,
beside it, unpaired (binomial, as if the rows were independent: conservative); ``differences.csv``
holds them. Beside each arm's choice, the mean validation retention of all its completed trials
(with its standard error) and their mean selection metric. And each proxy's Spearman rank
correlation between predicted plan cost and the final selection loss over every arm's trials
(``fisher``: its profile is completed for every option the trials use, which costs no forward per
option; ``oneshot``, measured with ``--oneshot`` only, ranks the plans of the first arm's menu;
``<proxy>_trials`` counts what each ranked), and beside it with the selection rows' task metric
(``fisher@selection_primary``), with the KL divergence from the dense model's predictions on those
rows (``fisher@selection_kl``: what a Fisher-weighted error approximates), with the selection loss
at each trial's best temperature (``fisher@selection_loss_calibrated``: the loss without the
model's confidence) and with the validation metric (``fisher@validation``, a diagnosis only), with
the rank correlation between the selection rows' metric and the validation metric over the same
trials (how much a choice made on the selection rows can carry to the validation split), and the
same for the selection loss (``loss_vs_validation``, lowest loss first: below 0, a lower loss went
with a worse validation metric, and a proxy cannot rank both; ``calibrated_vs_validation`` for the
calibrated loss). Several seeds' runs are pooled by ``bench/search_quality_pool.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

from _common import ROOT, add_data_dir  # noqa: E402  (also puts the repository on sys.path)

ARMS = {"fine": ("optimal", "diverse"), "optuna": ("optimal", "diverse"), "uniform": ("uniform",), "grid": ("grid",)}
SEARCH_ARMS = ("fine", "optuna")  # on nxmi search's default menu (fine)
BASELINES = ("uniform", "grid")  # on --baseline-menu
BASELINE_MENUS = ("auto", "fine")

# The options ``nxmi search --menu auto`` drew on until 9002db8 (nxmiformer/search/profile.py's
# CATALOGUE), by paper bits per weight (density x bits): every kept record's uniform and grid arms
# ran on the AUTO_MENU_SIZE of them nearest the target (auto_menu), so a baseline that repeats a kept
# cell computes that menu here and passes it as an explicit option list.
CATALOGUE = ("dense", "dense:fp16", "dense:int8", "dense:int4", "dense:int2", "2:4:fp16", "4:8:int8", "2:4:int8",
             "4:8:int4", "2:4:int4", "2:8:int8", "1:4:int8", "2:8:int4", "1:4:int4", "4:8:int2", "2:4:int2",
             "1:8:int8", "1:8:int4", "1:4:int2", "2:8:int2", "1:8:int2")
AUTO_MENU_SIZE = 12


def auto_menu(target_ratio: float) -> tuple[str, ...]:
    """The former ``--menu auto`` at a paper ``target_ratio``: the :data:`AUTO_MENU_SIZE` options of
    :data:`CATALOGUE` nearest in log bits per weight to the target's average, 32 x (1 - ratio), with
    at least a third of them (4) on each side of it, in catalogue order (git show
    b5cf04a:nxmiformer/search/profile.py, ``menu_for``)."""
    from nxmiformer.compression import LayerSpec

    target_bits = 32 * (1 - target_ratio)
    bits = {o: LayerSpec.parse(o).bits_per_weight for o in CATALOGUE}
    distance = {o: abs(math.log2(b / target_bits)) for o, b in bits.items()}
    below = sorted((o for o in CATALOGUE if bits[o] < target_bits), key=distance.get)
    above = sorted((o for o in CATALOGUE if bits[o] >= target_bits), key=distance.get)
    side = AUTO_MENU_SIZE // 3
    chosen = below[:side] + above[:side]
    rest = sorted(below[side:] + above[side:], key=distance.get)
    chosen += rest[:AUTO_MENU_SIZE - len(chosen)]
    return tuple(o for o in CATALOGUE if o in chosen)


def arm_options(arm: str, target_ratio: float, baseline_menu: str = "auto") -> tuple[str, ...] | None:
    """The explicit option list of an arm: the former auto menu for a baseline on ``auto``, else
    None (the search's default menu, ``fine``)."""
    return auto_menu(target_ratio) if arm in BASELINES and baseline_menu == "auto" else None


def arm_config(args, task: str, target: float, arm: str, out: Path):
    """The SearchConfig of one arm of a cell: the same settings for every arm but its kinds, its
    options (:func:`arm_options`) and, for the optuna arm, its --stage2 Optuna trials."""
    from nxmiformer.search import SearchConfig

    second = args.stage2 if arm == "optuna" else 0
    return SearchConfig(
        out=str(out / f"{task}-{target}-{arm}"), task=task, target_ratio=target, data_dir=args.data_dir,
        max_length=64, train_size=args.train_size, eval_size=None, selection_size=args.selection_size,
        seed=args.seed, trials=args.budget - second, steps=args.steps, refine_trials=second,
        kinds=ARMS[arm], calib_size=args.calib_size, asha=False, cache_dir=args.cache_dir,
        proxy=args.proxy, options=arm_options(arm, target, args.baseline_menu), oneshot_profile=args.oneshot)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--tasks", default="sst2,mrpc")
    parser.add_argument("--targets", default="0.9375,0.96875")
    parser.add_argument("--budget", type=int, default=6, help="short trials per arm, task and target")
    parser.add_argument("--stage2", type=int, default=0,
                        help="of the optuna arm's budget, trials of its Optuna stage (default 0; the optuna arm needs >= 1)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--selection-size", type=int, default=500)
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--proxy", default="fisher")
    parser.add_argument("--oneshot", action="store_true",
                        help="also measure the oneshot proxy (a forward per module x option), as the kept records' "
                             "baseline arms did, so that its rank correlations are reported too")
    parser.add_argument("--baseline-menu", choices=BASELINE_MENUS, default="auto",
                        help="the uniform and grid arms' options: auto (the former --menu auto, as every kept record) "
                             "or fine (the search's menu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", help="warm starts and profiles (default: the user cache)")
    parser.add_argument("--arms", default="fine,uniform,grid",
                        help=f"arms to run, some of {', '.join(ARMS)} (default: fine,uniform,grid)")
    parser.add_argument("--reuse", action="store_true",
                        help="read the arms already finished under --out instead of running them again")
    parser.add_argument("--out", default=str(ROOT / "runs" / "search-quality"))
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms):
        print(f"--arms must name some of {', '.join(ARMS)}, got {args.arms!r}", file=sys.stderr)
        return 2
    if not 0 <= args.stage2 < args.budget:
        print(f"--stage2 must be in [0, --budget), got {args.stage2}", file=sys.stderr)
        return 2
    if "optuna" in arms and args.stage2 == 0:
        print(f"--stage2 {args.stage2} with the optuna arm: it needs --stage2 >= 1 (its Optuna trials); "
              "without them it repeats the fine arm", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.reuse:
        print(f"{out} is not empty; choose another --out (or --reuse its finished arms)", file=sys.stderr)
        return 2

    import pandas as pd
    from transformers.utils import logging as hf_logging

    from nxmiformer.errors import NxmiError
    from nxmiformer.search import proxy_correlation, run_search

    hf_logging.set_verbosity_error()
    rows, correlations = [], []
    start = time.perf_counter()
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        for target in [float(t) for t in args.targets.split(",")]:
            pooled = []
            for arm in arms:
                config = arm_config(args, task, target, arm, out)
                arm_dir = Path(config.out)
                if args.reuse and (arm_dir / "results.parquet").is_file():
                    print(f"\n=== {task} target {target:.3%}, arm {arm}: read from {arm_dir}", flush=True)
                    try:
                        result = finished_arm(arm_dir)
                    except NxmiError as err:  # e.g. a run of an older nxmiformer (search_quality_pool.py reads those)
                        print(err, file=sys.stderr)
                        return 2
                else:
                    print(f"\n=== {task} target {target:.3%}, arm {arm}: {args.budget} trials x {args.steps} steps", flush=True)
                    result = run_search(config, progress=True)
                pooled.append(result.results)  # the proxies are scored on every arm's trials
                best = result.best
                n_val = len(validation_labels(args.data_dir, task))
                rows.append({
                    "task": task, "target": target, "arm": arm, "trials": len(result.results),
                    "completed": int((result.results["status"] == "completed").sum()),
                    "primary": float("nan") if best is None else best["primary"],
                    "retention": float("nan") if best is None else best["retention"],
                    "accuracy": float("nan") if best is None else json.loads(best["metrics_json"]).get("accuracy"),
                    "n_val": n_val, "ratio_paper": float("nan") if best is None else best["ratio_paper"],
                    "kind": "" if best is None else best["kind"],
                    "plan": "" if best is None else best["plan_summary"], "wall_s": result.wall_time,
                    "objective": config.objective,
                    # what the better baseline is chosen on (better_on_selection): the chosen trial's selection rows
                    **{c: float("nan") if best is None else best.get(c, float("nan")) for c in SELECTION_COLUMNS},
                    **_arm_mean(result.results),
                    "predictions": "" if best is None else best.get("predictions", ""),
                })
                pd.DataFrame(rows).to_csv(out / "summary.csv", index=False)  # so far: a long run that stops keeps its arms
            trials = pd.concat(pooled)
            profile = _profile_of(out / f"{task}-{target}-{arms[0]}", _options_of(trials))
            correlations.append({"task": task, "target": target} | proxy_correlation(trials, profile)
                                | _against(trials, profile)
                                | {"selection_vs_validation": _agreement(trials),
                                   "loss_vs_validation": _agreement(trials, "selection_loss"),
                                   "calibrated_vs_validation": _agreement(trials, "selection_loss_calibrated")})

    table = pd.DataFrame(rows)
    print(f"\nMiniLM default, {args.budget} trials per arm x {args.steps} steps, {args.train_size} training rows, "
          f"{args.selection_size} selection rows, proxy {args.proxy}, seed {args.seed}; total {time.perf_counter() - start:.0f}s")
    with pd.option_context("display.width", 250, "display.max_colwidth", 70):
        shown = table.copy()
        for col in ("retention", "ratio_paper"):
            shown[col] = shown[col].map(lambda v: f"{v:.2%}")
        shown["mean_retention"] = [f"{m:.2%} +- {se:.2%}" for m, se in zip(table["mean_retention"], table["mean_retention_se"])]
        shown["mean_selection"] = table["mean_selection"].map(lambda v: f"{v:.4f}")
        print(shown.drop(columns=["n_val", "predictions", "mean_retention_se", *SELECTION_COLUMNS]).to_string(index=False))
    print()
    differences = []
    for (task, target), group in table.groupby(["task", "target"]):
        by_arm = group.set_index("arm")
        baselines = [a for a in BASELINES if a in by_arm.index and by_arm.loc[a, "plan"]]
        if not baselines:
            continue
        best = better_on_selection({a: by_arm.loc[a] for a in baselines}, by_arm.loc[baselines[0], "objective"])
        for arm in (a for a in SEARCH_ARMS if a in by_arm.index):
            diff = by_arm.loc[arm, "retention"] - by_arm.loc[best, "retention"]
            se = _standard_error(by_arm.loc[arm, "accuracy"], by_arm.loc[best, "accuracy"], by_arm.loc[arm, "n_val"])
            dense = by_arm.loc[arm, "primary"] / by_arm.loc[arm, "retention"]
            paired = _paired_standard_error(task, args.data_dir, by_arm.loc[arm, "predictions"],
                                            by_arm.loc[best, "predictions"]) / dense
            paired_text = "no paired SE: records without predictions" if paired != paired else f"+- {paired:.2%} paired"
            print(f"{task} {target:.3%}: {arm} - better baseline on the selection rows ({best}) {diff:+.2%} retention "
                  f"({paired_text}, +- {se / dense:.2%} unpaired; one standard error)")
            differences.append({"task": task, "target": target, "arm": arm, "baseline": best, "difference": diff,
                                "se_paired": paired, "se_unpaired": se / dense})
    print("\nproxy rank correlation (Spearman, predicted plan cost vs final selection loss, every arm's trials that "
          "the proxy prices: <proxy>_trials; @selection_primary: vs the selection rows' metric; @selection_kl: vs the KL from the "
          "dense model on them; @selection_loss_calibrated: vs the selection loss at each trial's best temperature; "
          "@validation: vs the validation metric), and selection_vs_validation, loss_vs_validation and "
          "calibrated_vs_validation (the selection rows' metric, their loss and calibrated loss lowest-first, vs the"
          " validation metric; +1: full agreement):")
    with pd.option_context("display.width", 250, "display.float_format", "{:.2f}".format):
        shown = pd.DataFrame(correlations).dropna(axis=1, how="all")
        shown["target"] = shown["target"].map(lambda v: f"{v:.3%}")
        print(shown.to_string(index=False))
    table.to_csv(out / "summary.csv", index=False)
    pd.DataFrame(differences).to_csv(out / "differences.csv", index=False)
    pd.DataFrame(correlations).to_csv(out / "proxies.csv", index=False)
    return 0


# the selection-row measures of a chosen trial that better_on_selection compares arms on
SELECTION_COLUMNS = ("selection_primary", "selection_loss", "selection_loss_calibrated", "selection_kl")


def better_on_selection(chosen: dict, objective: str) -> str:
    """Of several arms' chosen trials (arm -> its record: a mapping with the selection-row columns),
    the arm whose trial is better on the selection rows by ``objective`` (the search's: the highest
    ``selection_primary``, the lowest loss or KL), ties to the lower ``selection_loss``, then to the
    first arm given. The validation split, on which the choice is reported, decides nothing. With a
    ``prior_weight`` the arms ranked their own trials by z-scores within the arm; between arms the
    objective itself is compared."""
    from nxmiformer.records import HIGHER_IS_BETTER

    sign = -1.0 if objective in HIGHER_IS_BETTER else 1.0

    def key(item):
        order, (arm, row) = item
        value, loss = float(row[objective]), float(row.get("selection_loss", math.nan))
        return (sign * value if math.isfinite(value) else math.inf, loss if math.isfinite(loss) else math.inf, order)

    return min(enumerate(chosen.items()), key=key)[1][0]


@functools.lru_cache(maxsize=None)
def validation_labels(data_dir, task: str):
    """The labels of the task's (first) validation split, in order, read once per task."""
    import numpy as np

    from nxmiformer.trials import get_task, load_glue

    split = get_task(task).validation_splits[0]
    return np.asarray(load_glue(task, data_dir=data_dir, splits=[split])[split]["label"])


def _standard_error(p1, p2, n: int) -> float:
    """Of a difference of two accuracies on ``n`` rows, as if independent (an upper bound for
    the paired difference on the same rows)."""
    return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)


def _arm_mean(results) -> dict:
    """Mean validation retention over the arm's completed trials, and its standard error: how
    good the arm's plans are, apart from which one its selection picked. Beside it the mean of
    the selection rows' metric over the same trials: a lead there that the validation means do
    not show is a lead that does not carry over."""
    completed = results[results["status"] == "completed"]
    done = completed["retention"].dropna()
    se = float(done.std(ddof=1) / math.sqrt(len(done))) if len(done) > 1 else float("nan")
    selection = completed["selection_primary"].dropna()
    return {"mean_retention": float(done.mean()) if len(done) else float("nan"), "mean_retention_se": se,
            "mean_selection": float(selection.mean()) if len(selection) else float("nan")}


def _against(results, profile) -> dict:
    """Each proxy's rank correlation with the selection rows' task metric (what the search decides
    on) and with the validation metric (``@validation``: a diagnosis of the proxy, never used to
    decide), beside the one with the selection loss that the issue's target names. On MRPC the
    selection loss and the task metric can rank the same trials in opposite orders."""
    from nxmiformer.search import proxy_correlation

    out = {}
    for column, suffix in (("selection_primary", "selection_primary"), ("selection_kl", "selection_kl"),
                           ("selection_loss_calibrated", "selection_loss_calibrated"),
                           ("primary", "validation")):
        out |= {f"{k}@{suffix}": v for k, v in proxy_correlation(results, profile, column).items()
                if not k.endswith("trials")}  # the counts are the same for every objective
    return out


def _agreement(results, column: str = "selection_primary") -> float:
    """Spearman rank correlation between a selection-row measure (by default the metric, what
    decides) and the validation metric (what is reported) over completed trials, signed so that
    +1 is full agreement (a loss is ranked lowest-first): near 0, a choice on that measure cannot
    carry a lead to the validation split; below 0 (``selection_loss`` on most cells), a proxy that
    ranks the measure well ranks the validation metric badly."""
    from scipy.stats import spearmanr

    from nxmiformer.records import HIGHER_IS_BETTER

    done = results[(results["status"] == "completed") & results[column].notna() & results["primary"].notna()]
    sign = 1 if column in HIGHER_IS_BETTER else -1
    return float(spearmanr(sign * done[column], done["primary"]).statistic) if len(done) >= 3 else float("nan")


def _paired_standard_error(task: str, data_dir, first: str, second: str, draws: int = 2000) -> float:
    """Bootstrap standard error of the difference in the task's primary metric between two
    models' predictions (JSON lists, the records' ``predictions``) on the same validation rows
    (:func:`~nxmiformer.trials.metrics.paired_difference`: what both models get right or wrong
    cancels). NaN when either lacks predictions (a record written before they were kept)."""
    from nxmiformer.trials.metrics import paired_difference

    if not isinstance(first, str) or not isinstance(second, str) or not first or not second:
        return float("nan")
    labels = validation_labels(data_dir, task)
    a, b = json.loads(first), json.loads(second)
    if not len(a) == len(b) == len(labels):
        return float("nan")
    return paired_difference(task, a, b, labels, draws=draws)[1]


def finished_arm(search_dir: Path):
    """A finished arm of this nxmiformer, read back as a SearchResult (its best plan chosen as the
    search chose it). ``NxmiError`` for a run of another search state version:
    ``search_quality_pool.py`` reads those."""
    from nxmiformer.analysis import load_results
    from nxmiformer.search import SearchConfig, SearchResult, best_trial

    config = SearchConfig.load(search_dir)
    results = load_results(search_dir)
    return SearchResult(results, best_trial(results, config), search_dir, float("nan"))


def _options_of(results) -> list[str]:
    """Every option the completed trials' plans use, and ``dense`` (the modules a plan leaves out)."""
    from nxmiformer.compression import DENSE, CompressionPlan

    plans = [CompressionPlan.from_json(p) for p in results.loc[results["status"] == "completed", "plan_json"]]
    return sorted({str(plan.spec_for(m)) for plan in plans for m in plan} | {str(DENSE)})


def _profile_of(search_dir: Path, extra=()):
    """The arm's profile table, with ``fisher`` also for the ``extra`` options (no one-shot forwards
    for them: their ``oneshot`` is NaN unless cached, so that proxy prices only the plans of the
    arm's menu)."""
    from nxmiformer.search import SearchConfig, profile_sensitivity

    stored = json.loads((search_dir / "search.json").read_text())
    config = SearchConfig.load(search_dir)
    dense_path = stored["provenance"]["dense_path"]
    options = list(dict.fromkeys([*config.options, *extra]))
    return profile_sensitivity(dense_path, config.data_config(), options, config.calib_size,
                               cache_dir=config.cache_root(), progress=False, oneshot=False).table


if __name__ == "__main__":
    sys.exit(main())
