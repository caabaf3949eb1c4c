"""What a search says after its trials: which trial it chose (:func:`best_trial`, the one
selection rule of :mod:`nxmiformer.analysis`), by how much that choice leads the runner-up on the
selection rows, how well each proxy ranked the trained plans, failures, and whether the dense
reference is too weak. Each finding is printed and stored in ``search.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..analysis.pareto import select
from ..compression import CompressionPlan
from ..records import HIGHER_IS_BETTER
from .config import SearchConfig, update_state
from .profile import PROXIES


def say(progress: bool, message: str) -> None:
    """One line of the search's console (nothing when ``progress`` is off)."""
    if progress:
        print(message, flush=True)


def say_failures(results: pd.DataFrame, progress: bool) -> None:
    """One line per distinct error of the trials that failed (e.g. a full disk), which Tune
    otherwise leaves in the trials' logs."""
    failed = results[results["status"] == "error"]
    for error, count in failed["error"].fillna("").value_counts().items():
        say(progress, f"      {count} of {len(results)} trials failed: {error or 'no error message'}")


def best_trial(results: pd.DataFrame, config: SearchConfig, target=None) -> pd.Series | None:
    """The search's choice at ``target`` (default: its lowest) among ``results``: ``select`` on its
    objective (with its ``prior_weight``), among the completed trials that meet the target, whichever
    target they were trained for: what ``nxmi export --target-ratio`` writes (None when none has a
    value of the objective)."""
    target = target or config.target
    done = results[(results["status"] == "completed") & target.is_met(results[target.column])]
    if not done[config.objective].notna().any():
        return None
    return select(results, target, metric=config.objective, prior_weight=config.prior_weight)


def proxy_correlation(results: pd.DataFrame, profile: pd.DataFrame, objective: str = "selection_loss") -> dict:
    """How well each proxy ranks the trained plans: Spearman's rank correlation between a plan's
    predicted cost (its modules' proxy scores, summed) and its trial's final ``objective``, any
    column of ``results`` (sign flipped for a task metric, ``selection_primary`` or the
    validation ``primary``, so that +1 is a perfect ranking for every objective);
    NaN with fewer than three completed trials, or for a proxy ``profile`` did not measure
    (``oneshot`` without ``oneshot_profile``).

    A proxy ranks only the plans it can price: a trial whose plan uses an option the proxy's
    column lacks (NaN or absent, e.g. a one-shot column measured on another menu) is left out of
    that proxy's correlation; ``<proxy>_trials`` counts the trials each one ranked."""
    import numpy as np
    from scipy.stats import spearmanr

    done = results[(results["status"] == "completed") & results[objective].notna()]
    out: dict = {"trials": int(len(done))}
    observed_all = done[objective].to_numpy() * (-1 if objective in HIGHER_IS_BETTER else 1)
    for proxy, column in PROXIES.items():
        if column not in profile.columns:  # a proxy that was not measured (an all-NaN column prices nothing below)
            out[proxy], out[f"{proxy}_trials"] = math.nan, 0
            continue
        predicted = plan_costs(done["plan_json"], profile, column).to_numpy()
        priced = ~np.isnan(predicted)
        predicted, observed = predicted[priced], observed_all[priced]
        ok = len(predicted) >= 3 and len(set(predicted)) > 1 and len(set(observed)) > 1
        out[proxy] = float(spearmanr(predicted, observed).statistic) if ok else math.nan
        out[f"{proxy}_trials"] = int(priced.sum())
    return out


def plan_costs(plans: pd.Series, profile: pd.DataFrame, column: str = "score") -> pd.Series:
    """Each plan's (``CompressionPlan`` JSON) predicted cost: its modules' ``column`` scores in the
    ``profile`` (one row per module x option), summed over the profile's modules; NaN for a plan
    with an option the column does not price. Same index as ``plans``."""
    lookup = dict(zip(zip(profile["module"], profile["option"]), profile[column]))
    modules = profile["module"].unique()

    def cost(plan_json: str) -> float:
        if not isinstance(plan_json, str) or not plan_json:
            return math.nan
        plan = CompressionPlan.from_json(plan_json)
        return float(sum(lookup.get((m, str(plan.spec_for(m))), math.nan) for m in modules))

    return pd.Series([cost(p) for p in plans], index=plans.index, dtype="float64")


def check_reference(dense, results: pd.DataFrame, config: SearchConfig, state_file: Path, progress: bool) -> None:
    """Say so (and note it in search.json) when a compressed trial beats the dense warm start on
    the selection rows by more than two standard errors: the reference of every retention
    figure is then too weak (train it longer: --dense-epochs, --dense-patience)."""
    reference = dense.metrics.get("selection_primary")
    done = results.loc[results["status"] == "completed", "selection_primary"].dropna()
    if reference is None or done.empty:
        return
    p = min(max(float(reference), 0.0), 1.0)  # accuracy-like: the binomial error of a difference
    margin = 2 * math.sqrt(2 * p * (1 - p) / config.selection_size)
    if done.max() - reference > margin:
        message = (f"a compressed trial beats the dense warm start on the selection rows by {done.max() - reference:.4f} "
                   f"(> 2 standard errors, {margin:.4f}): the dense reference is too weak; retention above 100% "
                   f"means little (train it longer with --dense-epochs / --dense-patience)")
        say(progress, f"warning: {message}")
        update_state(state_file, warnings=[message])


def choice_margin(best: pd.Series | None, results: pd.DataFrame, config: SearchConfig, labels,
                  target=None) -> dict | None:
    """How far the chosen trial ``best`` leads the runner-up on the selection rows, in the task's
    primary metric, with the paired bootstrap standard error of that lead (both trials'
    ``selection_predictions`` on the same ``labels``). The runner-up is the next trial by the
    search's objective (and prior weight) among the completed ones that meet the target, trained on
    another plan.
    None without a runner-up or without the predictions (records written before they were kept)."""
    from ..trials.metrics import paired_difference

    if best is None:
        return None
    target = target or config.target
    done = results[(results["status"] == "completed") & target.is_met(results[target.column])
                   & (results["plan_json"] != best["plan_json"]) & results[config.objective].notna()]
    if done.empty:
        return None
    runner_up = select(done, target, metric=config.objective, prior_weight=config.prior_weight)
    first, second = (row.get("selection_predictions", "") for row in (best, runner_up))
    if not first or not second or not isinstance(first, str) or not isinstance(second, str):
        return None
    lead, se = paired_difference(config.data_config().task_info, json.loads(first), json.loads(second), labels)
    # in-sample: the selection rows that chose the trial also measure its lead
    return {"target_ratio": target.value, "trial_id": best["trial_id"], "runner_up": runner_up["trial_id"],
            "metric": "selection_primary", "in_sample": True, "lead": lead, "se": se, "rows": len(labels)}


def selection_labels(config: SearchConfig, dense_path: Path):
    """The labels of the search's selection rows, in the order the trials predict them."""
    import numpy as np

    from ..models import load_tokenizer
    from ..trials.data import prepare_task_data

    data = config.data_config()
    glue = prepare_task_data(data.task_info, load_tokenizer(str(dense_path)), data_dir=data.data_dir,
                             max_length=data.max_length, train_size=data.train_size, eval_size=1, seed=data.seed,
                             include_train=False, holdout_size=data.holdout_size, selection_size=data.selection_size)
    return np.asarray(glue.selection["labels"])


def check_choice(best: pd.Series | None, results: pd.DataFrame, config: SearchConfig, dense_path: Path,
                  state_file: Path, progress: bool, target=None, labels=None) -> None:
    """Say by how much the plan chosen at ``target`` (default: the lowest) leads the runner-up on the
    selection rows, with its paired standard error, and note it in search.json (``choice``, and
    ``choice_by_target`` for a search of several targets): within two standard errors, which of the
    two the search returns is decided by the rows' noise (more --selection-size narrows it).
    ``labels``: the selection rows' labels, when the caller has them (else read here)."""
    if best is None or not best.get("selection_predictions"):  # records written before they were kept
        return
    target = target or config.target
    labels = selection_labels(config, dense_path) if labels is None else labels
    margin = choice_margin(best, results, config, labels, target)
    if margin is None:
        return
    if target == config.target:
        update_state(state_file, choice=margin)
    if len(config.targets) > 1:
        stored = json.loads(state_file.read_text()).get("choice_by_target", {})
        update_state(state_file, choice_by_target=stored | {f"{target.value:g}": margin})
    verdict = ("more than two standard errors" if abs(margin["lead"]) > 2 * margin["se"] else
               f"within two: the {margin['rows']} selection rows' noise may have decided between the two")
    at = f" at {target}" if len(config.targets) > 1 else ""
    say(progress, f"      the chosen trial{at} leads the runner-up ({margin['runner_up']}) in the selection rows' "
                  f"task metric by {margin['lead']:+.4f} +- {margin['se']:.4f} (paired SE; in-sample: these rows "
                  f"made the choice; {verdict})")
