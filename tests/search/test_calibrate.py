"""The stage that learns from trials: the calibrated additive model finds what the proxy missed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from nxmiformer.compression import CompressionPlan, RatioTarget
from nxmiformer.search.calibrate import CALIBRATED, _seen, calibrated_candidates, fit_corrections
from nxmiformer.search.heuristic import build_problem, modules_frame, plan_ratio, solve_mckp
from tests.conftest import tiny_bert

MENU = ("dense:int8", "2:4:int8", "2:4:int4", "4:8:int4", "1:4:int8")


@pytest.fixture(scope="module")
def world():
    """A proxy that scores every option by its bits, and a truth that adds a large hidden cost to
    ffn_out at 2:4:int4 (a recoverability problem the one-shot proxy does not see)."""
    modules = modules_frame(tiny_bert())
    rng = np.random.default_rng(0)
    bits = {"dense:int8": 8, "2:4:int8": 4, "2:4:int4": 2, "4:8:int4": 2, "1:4:int8": 2}
    # the proxy rates 2:4:int4 the cheapest 2-bit option everywhere
    rows = [{"module": m, "option": o, "score": (8 - bits[o]) * (1 + 0.1 * rng.random()) * (0.5 if o == "2:4:int4" else 1)}
            for m in modules["module"] for o in MENU]
    problem = build_problem(pd.DataFrame(rows), modules)
    hidden = np.zeros_like(problem.scores)
    k = [str(s) for s in problem.menu].index("2:4:int4")
    hidden[(modules["component"] == "ffn_out").to_numpy(), k] = 20.0
    return problem, problem.scores + hidden, rng


def _random_plans(problem, rng, n):
    choices = rng.integers(0, len(problem.menu), size=(n, len(problem.modules)))
    return [problem.plan(c) for c in choices], choices


def test_calibrated_scores_rank_trained_plans_like_the_truth(world):
    problem, truth, rng = world
    plans, choices = _random_plans(problem, rng, 16)
    rows = np.arange(choices.shape[1])
    observed = np.array([truth[rows, c].sum() for c in choices])
    calibrated = fit_corrections(problem, plans, observed, ridge=0.01)
    fresh, fresh_choices = _random_plans(problem, rng, 16)  # plans the fit has not seen
    true_cost = [truth[rows, c].sum() for c in fresh_choices]
    proxy_rho = spearmanr([problem.scores[rows, c].sum() for c in fresh_choices], true_cost).statistic
    calibrated_rho = spearmanr([calibrated[rows, c].sum() for c in fresh_choices], true_cost).statistic
    assert calibrated_rho > 0.9 and calibrated_rho > proxy_rho + 0.1, (proxy_rho, calibrated_rho)


def test_with_too_few_trials_the_proxy_stands(world):
    problem, truth, rng = world
    plans, _ = _random_plans(problem, rng, 2)
    np.testing.assert_array_equal(fit_corrections(problem, plans, np.array([1.0, 2.0])), problem.scores)


def test_new_candidates_meet_the_target_avoid_the_hidden_cost_and_are_new(world):
    problem, truth, rng = world
    plans, choices = _random_plans(problem, rng, 16)
    rows = np.arange(choices.shape[1])
    results = pd.DataFrame({"status": "completed", "plan_json": [p.to_json(indent=None) for p in plans],
                            "selection_loss": [truth[rows, c].sum() for c in choices]})
    target = RatioTarget(0.9, "paper")
    ffn_out = problem.modules.loc[problem.modules["component"] == "ffn_out", "module"]
    proxy_best = problem.plan(solve_mckp(problem.costs["paper"], problem.scores, target.budget_bits(problem.dense_bits)))
    assert any(str(proxy_best.spec_for(m)) == "2:4:int4" for m in ffn_out)  # the proxy alone walks into it
    new = calibrated_candidates(problem, target, results, "selection_loss", count=3)
    assert len(new) == 3 and all(p.meta["kind"] == CALIBRATED for p in new)
    trained = {p.to_json(indent=None) for p in plans}
    keys = [CompressionPlan(dict(p)).to_json(indent=None) for p in new]
    assert len(set(keys)) == 3 and not set(keys) & trained
    for plan in new:
        assert target.is_met(plan_ratio(plan, problem.modules, "paper"))
        assert all(str(plan.spec_for(m)) != "2:4:int4" for m in ffn_out)


@pytest.mark.parametrize("trained_options,target,inside", [
    # the trials used two 2-bit options everywhere: new plans recombine them, never the untried ones
    (("2:4:int8", "4:8:int4"), 0.875, True),
    # those options cannot reach 90%: the whole menu is used rather than nothing
    (("dense:int8", "2:4:int8"), 0.90, False),
])
def test_new_plans_stay_within_the_options_the_trials_tried(world, trained_options, target, inside):
    problem, truth, rng = world
    index = [[str(s) for s in problem.menu].index(o) for o in trained_options]
    choices = rng.choice(index, size=(6, len(problem.modules)))
    plans = [problem.plan(c) for c in choices]
    rows = np.arange(choices.shape[1])
    results = pd.DataFrame({"status": "completed", "plan_json": [p.to_json(indent=None) for p in plans],
                            "selection_loss": [truth[rows, c].sum() for c in choices]})
    new = calibrated_candidates(problem, RatioTarget(target, "paper"), results, "selection_loss", count=2)
    assert len(new) == 2
    for plan in new:
        assert target <= plan_ratio(plan, problem.modules, "paper") + 1e-9
        used = {str(plan.spec_for(m)) for m in problem.modules["module"]}
        assert (used <= set(trained_options)) == inside, used


def test_new_plans_spend_at_least_what_the_cheapest_trained_plan_spent(world):
    """Trials that all sit near the budget, and an objective that happens to favour the most
    compressed options: the fit would spend fewer bits than any trial did; the floor stops it."""
    problem, _, rng = world
    target = RatioTarget(0.90, "paper")
    costs, budget = problem.costs["paper"], target.budget_bits(problem.dense_bits)
    index = {str(s): k for k, s in enumerate(problem.menu)}
    rows = np.arange(len(problem.modules))
    allowed = np.full(costs.shape, np.inf)
    allowed[:, [index["2:4:int8"], index["4:8:int4"], index["1:4:int8"]]] = 0.0
    plans, spent = [], []
    for _ in range(6):  # 4- and 2-bit options mixed at random, each plan within 5% of the budget
        c = solve_mckp(costs, allowed + rng.random(costs.shape), budget, min_cost=0.95 * budget)
        plans.append(problem.plan(c))
        spent.append(costs[rows, c].sum())
    # the objective falls with the 2-bit share: the fit learns "fewer bits, better"
    observed = [-(np.array([str(p.spec_for(m)) for m in problem.modules["module"]]) != "2:4:int8").sum() for p in plans]
    results = pd.DataFrame({"status": "completed", "plan_json": [p.to_json(indent=None) for p in plans],
                            "selection_loss": observed})
    region = np.where(_seen(problem, plans), fit_corrections(problem, plans, np.array(observed, float)), np.inf)
    unconstrained = solve_mckp(costs, region, budget)
    assert costs[rows, unconstrained].sum() < min(spent)  # without the floor the knapsack goes below every trial
    new = calibrated_candidates(problem, target, results, "selection_loss", count=2)
    assert len(new) == 2
    for plan in new:
        choice = np.array([index[str(plan.spec_for(m))] for m in problem.modules["module"]])
        assert min(spent) - 1e-6 <= costs[rows, choice].sum() <= budget


@pytest.mark.parametrize("completed", [1, 2])
def test_a_region_of_trained_plans_only_still_gives_new_plans(world, completed):
    """ASHA stopped all but one or two trials, each a per-component grid plan (one option per component
    type): the options they tried form no plan that is not trained already, so the new plans come
    from the menu (the demo once trained no plan here)."""
    problem, truth, rng = world
    target = RatioTarget(0.875, "paper")
    costs, budget = problem.costs["paper"], target.budget_bits(problem.dense_bits)
    components = problem.modules["component"].to_numpy()
    rows = np.arange(len(components))
    grids = []
    for _ in range(50):  # grid plans at the target: one option per component type
        pick = {c: rng.integers(len(problem.menu)) for c in dict.fromkeys(components)}
        choice = np.array([pick[c] for c in components])
        if costs[rows, choice].sum() <= budget and not any((choice == g).all() for g in grids):
            grids.append(choice)
        if len(grids) == completed + 1:
            break
    assert len(grids) == completed + 1
    plans = [problem.plan(c) for c in grids]
    status = ["completed"] * completed + ["stopped"]
    results = pd.DataFrame({"status": status, "plan_json": [p.to_json(indent=None) for p in plans],
                            "selection_loss": [truth[rows, c].sum() for c in grids]})
    new = calibrated_candidates(problem, target, results, "selection_loss", count=2)
    assert len(new) == 2
    trained = {p.to_json(indent=None) for p in plans}
    for plan in new:
        assert CompressionPlan(dict(plan)).to_json(indent=None) not in trained
        assert target.is_met(plan_ratio(plan, problem.modules, "paper"))
