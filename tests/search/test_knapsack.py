"""Candidate generation: the knapsack against brute force and a DP, the candidates against
ratios computed by hand from DESIGN.md's bit formulas."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from nxmiformer.compression import CompressionPlan, LayerSpec, compression_ratio
from nxmiformer.errors import NxmiError
from nxmiformer.search import knapsack
from nxmiformer.search.knapsack import (
    Candidate,
    cost_matrix,
    generate_candidates,
    modules_frame,
    plan_ratio,
    solve_mckp,
)
from tests.conftest import tiny_bert

MENU = [
    "dense",
    "dense:int8",
    "dense:int4",
    "2:4:fp16",
    "2:4:int8",
    "2:4:int4",
    "4:8:int8",
    "4:8:int4",
    "1:4:int8",
    "2:8:int8",
    "1:4:int4",
]
COMPONENTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
HIDDEN, FFN, LAYERS = 64, 256, 2
SHAPES = {  # component -> (out_features, in_features)
    "query": (HIDDEN, HIDDEN),
    "key": (HIDDEN, HIDDEN),
    "value": (HIDDEN, HIDDEN),
    "attn_out": (HIDDEN, HIDDEN),
    "ffn_in": (FFN, HIDDEN),
    "ffn_out": (HIDDEN, FFN),
}
TOTAL_WEIGHTS = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)  # 98,304
TOTAL_ROWS = LAYERS * (4 * HIDDEN + FFN + HIDDEN)  # 1,152 output rows -> one 16-bit scale each


def synthetic_modules(layers=LAYERS):
    rows = [
        {"module": f"encoder.layer.{layer}.{c}", "layer": layer, "component": c, "out_features": o, "in_features": i}
        for layer in range(layers)
        for c, (o, i) in SHAPES.items()
    ]
    return pd.DataFrame(rows)


def random_sensitivity(modules, menu=MENU, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for name in modules["module"]:
        for option in menu:
            # dense costs nothing; a little negative noise like a real profile can show
            score = 0.0 if option == "dense" else float(rng.uniform(-0.01, 1.0))
            rows.append({"module": name, "option": option, "score": score})
    return pd.DataFrame(rows)


def hand_bits(spec, out_features, in_features, convention):
    """DESIGN.md written out: paper (n/m)*b per weight; storage adds ceil(log2 m) index bits per
    kept value when sparse and one 16-bit scale per output row when integer."""
    s = LayerSpec.parse(spec)
    kept = out_features * in_features * s.n / s.m
    bits = kept * s.bits
    if convention == "storage":
        if s.n < s.m:
            bits += kept * math.ceil(math.log2(s.m))
        if s.bits <= 8:
            bits += 16 * out_features
    return bits


def hand_ratio(plan, modules, convention):
    compressed = sum(
        hand_bits(str(plan.spec_for(r.module)), r.out_features, r.in_features, convention) for r in modules.itertuples()
    )
    return 1 - compressed / (32 * TOTAL_WEIGHTS)


def score_of(plan, modules, sensitivity):
    lookup = {(r.module, str(LayerSpec.parse(r.option))): r.score for r in sensitivity.itertuples()}
    return sum(lookup[(name, str(plan.spec_for(name)))] for name in modules["module"])


def dp_optimum(modules, sensitivity, target, convention, menu=MENU, unit=1024):
    """Exact knapsack by dynamic programming over integer budgets: every hand-computed cost of
    these shapes is a whole number of 1024-bit units."""
    budget = math.floor((1 - target) * 32 * TOTAL_WEIGHTS / unit + 1e-9)
    lookup = {(r.module, r.option): r.score for r in sensitivity.itertuples()}
    best = np.zeros(budget + 1)  # best[b]: least score of the modules so far within b units
    for r in modules.itertuples():
        new = np.full(budget + 1, np.inf)
        for option in menu:
            cost = hand_bits(option, r.out_features, r.in_features, convention) / unit
            assert cost == int(cost)
            cost = int(cost)
            if cost <= budget:
                new[cost:] = np.minimum(new[cost:], best[: budget + 1 - cost] + lookup[(r.module, option)])
        best = new
    return best[budget]


# ---------------------------------------------------------------- tables and ratios


def test_modules_frame_of_tiny_bert():
    frame = modules_frame(tiny_bert())
    assert list(frame.columns) == ["module", "layer", "component", "out_features", "in_features"]
    assert frame["component"].tolist() == list(COMPONENTS) * 2
    assert frame["layer"].tolist() == [0] * 6 + [1] * 6
    assert frame[["out_features", "in_features"]].values.tolist()[:6] == [[32, 32]] * 4 + [[64, 32], [32, 64]]


@pytest.mark.parametrize("convention", ["paper", "storage"])
def test_plan_ratio_matches_model_accounting_and_hand(convention):
    model = tiny_bert()
    frame = modules_frame(model)
    names = frame["module"].tolist()
    plan = CompressionPlan({names[0]: "2:4:int8", names[4]: "dense:int4", names[11]: "1:4:int4"})
    assert plan_ratio(plan, frame, convention) == pytest.approx(compression_ratio(model, plan, convention), abs=1e-12)
    total = 2 * (4 * 32 * 32 + 2 * 32 * 64)
    bits = {
        "paper": 1024 * 4 + 2048 * 4 + 2048 * 1 + (total - 1024 - 2 * 2048) * 32,
        "storage": 1024 * 5 + 32 * 16 + 2048 * 4 + 64 * 16 + 2048 * 1.5 + 32 * 16 + (total - 1024 - 2 * 2048) * 32,
    }[convention]
    assert plan_ratio(plan, frame, convention) == pytest.approx(1 - bits / (32 * total), abs=1e-12)


def test_cost_matrix_marks_options_whose_m_does_not_divide_the_width():
    frame = pd.DataFrame([{"module": "a", "layer": 0, "component": "query", "out_features": 4, "in_features": 12}])
    costs = cost_matrix(frame, ["dense", "2:4:int8", "4:8:int8"], "paper")
    assert costs.tolist() == [[32 * 48, 4 * 48, np.inf]]


# ---------------------------------------------------------------- the knapsack


def brute_force_all(costs, scores, budget):
    """Every feasible choice vector with its score, best first."""
    n, k = costs.shape
    out = []
    for choice in itertools.product(range(k), repeat=n):
        c = sum(costs[i, j] for i, j in enumerate(choice))
        s = sum(scores[i, j] for i, j in enumerate(choice))
        if np.isfinite(c) and np.isfinite(s) and c <= budget + 1e-9 * abs(budget):
            out.append((s, choice))
    out.sort()
    return out


def random_instance(rng, n, k, integer_costs, inf_rate=0.0):
    costs = rng.integers(1, 10, (n, k)).astype(float) if integer_costs else rng.uniform(0.5, 10.0, (n, k))
    scores = rng.normal(0, 1, (n, k))
    if inf_rate:
        costs[rng.random((n, k)) < inf_rate] = np.inf
        scores[rng.random((n, k)) < inf_rate] = np.inf
    return costs, scores


def budgets(costs):
    """From infeasible through tight to loose."""
    rows = [row[np.isfinite(row)] for row in costs]
    lo = sum(row.min() for row in rows if row.size)
    hi = sum(row.max() for row in rows if row.size)
    return [lo - 0.5, lo, lo + 0.25 * (hi - lo), lo + 0.5 * (hi - lo), float(np.floor(lo + 0.7 * (hi - lo))), hi]


# (N, K, integer costs: exact ties at the budget, share of inf "not allowed" entries)
MCKP_CASES = [(2, 2, True, 0.0), (3, 3, False, 0.0), (4, 2, True, 0.0), (4, 4, False, 0.0), (5, 3, True, 0.0),
              (6, 2, False, 0.0), (6, 3, True, 0.0), (3, 4, True, 0.25), (5, 3, False, 0.2)]


@pytest.mark.parametrize("n,k,integer_costs,inf_rate", MCKP_CASES)
def test_solve_mckp_matches_brute_force(n, k, integer_costs, inf_rate):
    rng = np.random.default_rng(n * 100 + k * 10 + int(integer_costs))
    for _ in range(4):
        costs, scores = random_instance(rng, n, k, integer_costs, inf_rate)
        for budget in budgets(costs):
            ref = brute_force_all(costs, scores, budget)
            got = solve_mckp(costs, scores, budget)
            if not ref:
                assert got is None
                continue
            assert got is not None and got.shape == (n,)
            rows = np.arange(n)
            assert costs[rows, got].sum() <= budget + 1e-9 * abs(budget)
            assert scores[rows, got].sum() == pytest.approx(ref[0][0], abs=1e-9)


def test_a_target_budget_counts_an_exact_hit_despite_float_rounding():
    from nxmiformer.compression import RatioTarget

    costs = np.array([[0.1, 1.0], [0.2, 1.0]])  # 0.1 + 0.2 = 0.30000000000000004 > 0.3
    scores = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert solve_mckp(costs, scores, 0.3) is None  # the knapsack itself is exact
    budget = RatioTarget(0.7).budget_bits(1.0)  # the target's one tolerance lets the exact hit in
    assert solve_mckp(costs, scores, budget).tolist() == [0, 0]
    assert solve_mckp(costs, scores, RatioTarget(0.71).budget_bits(1.0)) is None


@pytest.mark.parametrize("n,k,integer_costs,inf_rate", MCKP_CASES)
def test_no_good_cuts_give_the_next_best_plans(n, k, integer_costs, inf_rate):
    rng = np.random.default_rng(7 + n * 100 + k)
    for _ in range(3):
        costs, scores = random_instance(rng, n, k, integer_costs, inf_rate)
        budget = budgets(costs)[3]
        ref = brute_force_all(costs, scores, budget)
        previous = []
        for rank in range(3):
            got = solve_mckp(costs, scores, budget, forbidden=previous, min_hamming=1)
            if rank >= len(ref):
                assert got is None
                break
            assert scores[np.arange(n), got].sum() == pytest.approx(ref[rank][0], abs=1e-9)
            assert all(tuple(got) != tuple(p) for p in previous)
            previous.append(got)


@pytest.mark.parametrize("n,k,min_hamming", [(4, 3, 2), (5, 3, 2), (6, 2, 3), (5, 4, 4)])
def test_min_hamming_cuts_match_greedy_brute_force(n, k, min_hamming):
    rng = np.random.default_rng(n + 10 * k + 100 * min_hamming)
    costs, scores = random_instance(rng, n, k, integer_costs=False)
    budget = budgets(costs)[4]
    feasible = brute_force_all(costs, scores, budget)
    previous, ref_previous = [], []
    for _ in range(4):
        def far_enough(choice):
            return all(sum(a != b for a, b in zip(choice, p)) >= min_hamming for p in ref_previous)

        far = [(s, c) for s, c in feasible if far_enough(c)]
        got = solve_mckp(costs, scores, budget, forbidden=previous, min_hamming=min_hamming)
        if not far:
            assert got is None
            break
        assert scores[np.arange(n), got].sum() == pytest.approx(far[0][0], abs=1e-9)
        assert all((got != p).sum() >= min_hamming for p in previous)
        previous.append(got)
        ref_previous.append(far[0][1])


def test_an_over_budget_answer_from_highs_is_cut_off_and_resolved(monkeypatch):
    # HiGHS accepts constraint violations up to its feasibility tolerance; the solver must not
    # pass such a choice on. Fake one such answer (the best-scoring, over-budget choice) first.
    costs = np.array([[1.0, 3.0], [1.0, 3.0], [1.0, 3.0]])
    scores = np.array([[0.0, -1.0], [0.0, -2.0], [0.0, -3.0]])
    real_milp, calls = knapsack.milp, []

    def flaky_milp(c, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return type("Result", (), {"status": 0, "x": np.array([0, 1, 0, 1, 0, 1.0]), "message": "ok"})()
        return real_milp(c, **kwargs)

    monkeypatch.setattr(knapsack, "milp", flaky_milp)
    got = solve_mckp(costs, scores, 7.0)
    assert len(calls) == 2
    assert costs[np.arange(3), got].sum() <= 7.0
    assert scores[np.arange(3), got].sum() == brute_force_all(costs, scores, 7.0)[0][0] == -5.0


def test_solve_mckp_rejects_bad_arrays():
    with pytest.raises(NxmiError, match="shape"):
        solve_mckp(np.ones((2, 3)), np.ones((3, 2)), 1.0)
    with pytest.raises(NxmiError, match="NaN"):
        solve_mckp(np.array([[np.nan, 1.0]]), np.ones((1, 2)), 1.0)
    with pytest.raises(NxmiError, match="min_hamming"):
        solve_mckp(np.ones((2, 2)), np.ones((2, 2)), 2.0, min_hamming=0)
    with pytest.raises(NxmiError, match="forbidden choice"):
        solve_mckp(np.ones((2, 2)), np.ones((2, 2)), 2.0, forbidden=[[0, 2]])


# ---------------------------------------------------------------- candidates


@pytest.fixture(scope="module")
def table():
    modules = synthetic_modules()
    return modules, random_sensitivity(modules, seed=3)


@pytest.fixture(scope="module")
def candidate_sets(table):
    modules, sensitivity = table
    return {
        (conv, target): generate_candidates(sensitivity, modules, target, conv)
        for conv, target in [("paper", 0.875), ("paper", 0.92), ("storage", 0.85), ("storage", 0.9)]
    }


@pytest.mark.parametrize("convention,target", [("paper", 0.875), ("paper", 0.92), ("storage", 0.85), ("storage", 0.9)])
def test_every_candidate_meets_the_target_by_hand(table, candidate_sets, convention, target):
    modules, sensitivity = table
    candidates = candidate_sets[(convention, target)]
    assert candidates and all(isinstance(c, Candidate) for c in candidates)
    for c in candidates:
        paper, storage = hand_ratio(c.plan, modules, "paper"), hand_ratio(c.plan, modules, "storage")
        assert {"paper": paper, "storage": storage}[convention] >= target - 1e-12
        assert c.ratio_paper == pytest.approx(paper, abs=1e-12)
        assert c.ratio_storage == pytest.approx(storage, abs=1e-12)
        assert c.ratio == (c.ratio_paper if convention == "paper" else c.ratio_storage)
        assert c.convention == convention
        assert c.score == pytest.approx(score_of(c.plan, modules, sensitivity), abs=1e-9)
        assert c.plan.meta["kind"] == c.kind == c.kinds[0] and c.plan.meta["score"] == c.score
        # plain dense modules are left out of the plan; they count as dense all the same
        assert all(not spec.is_identity for spec in c.plan.values())
        assert CompressionPlan.from_dict(json.loads(json.dumps(c.plan.to_dict()))) == c.plan
    plans = [c.plan for c in candidates]
    assert len(set(plans)) == len(plans)


@pytest.mark.parametrize("convention,target", [("paper", 0.875), ("paper", 0.92), ("storage", 0.85), ("storage", 0.9)])
def test_optimal_is_the_dp_optimum_and_beats_every_other(table, candidate_sets, convention, target):
    modules, sensitivity = table
    candidates = candidate_sets[(convention, target)]
    assert candidates[0].kind == "optimal"
    assert sum(c.kind == "optimal" for c in candidates) == 1
    assert candidates[0].score == pytest.approx(dp_optimum(modules, sensitivity, target, convention), abs=1e-9)
    assert all(candidates[0].score <= c.score + 1e-12 for c in candidates)


def test_diverse_plans_are_far_apart_and_ordered(candidate_sets):
    candidates = candidate_sets[("paper", 0.875)]
    knapsack = [c for c in candidates if c.kind in ("optimal", "diverse")]
    assert len(knapsack) == 8  # n_best
    for a, b in itertools.combinations(knapsack, 2):
        differ = sum(a.plan.spec_for(n) != b.plan.spec_for(n) for n in synthetic_modules()["module"])
        assert differ >= max(1, len(synthetic_modules()) // 12)  # the fixed rule: a twelfth of the modules
    assert [c.score for c in knapsack] == sorted(c.score for c in knapsack)


def uniform_spec(plan, modules):
    specs = {str(plan.spec_for(n)) for n in modules["module"]}
    return specs.pop() if len(specs) == 1 else None


# the uniform baselines by hand: paper bits/weight (n/m)*b <= 32*(1-target); storage also pays
# index bits and 1,152 scales over 98,304 weights (0.1875 bits/weight)
UNIFORM_CASES = [
    (
        "paper",
        0.875,
        {"dense:int4", "2:4:int8", "2:4:int4", "4:8:int8", "4:8:int4", "1:4:int8", "2:8:int8", "1:4:int4"},
    ),
    ("paper", 0.92, {"2:4:int4", "4:8:int4", "1:4:int8", "2:8:int8", "1:4:int4"}),
    ("paper", 0.95, {"1:4:int4"}),
    ("storage", 0.875, {"2:4:int4", "4:8:int4", "1:4:int8", "2:8:int8", "1:4:int4"}),
    ("storage", 0.85, {"dense:int4", "2:4:int4", "4:8:int4", "1:4:int8", "2:8:int8", "1:4:int4"}),
    ("storage", 0.94, {"1:4:int4"}),
]


@pytest.mark.parametrize("convention,target,expected", UNIFORM_CASES)
def test_uniform_baselines_are_exactly_the_options_that_meet_the_target(table, convention, target, expected):
    modules, sensitivity = table
    everywhere = {o: CompressionPlan({n: o for n in modules["module"]}) for o in MENU}
    by_hand = {o for o, plan in everywhere.items() if hand_ratio(plan, modules, convention) >= target}
    assert by_hand == expected
    candidates = generate_candidates(sensitivity, modules, target, convention, n_best=1, include_grid=False)
    uniform = [c for c in candidates if "uniform" in c.kinds]
    assert {uniform_spec(c.plan, modules) for c in uniform} == expected
    pure = [c.score for c in uniform if c.kind == "uniform"]
    assert pure == sorted(pure)


def brute_force_grid(modules, sensitivity, menu, target, convention, top):
    lookup = {(r.module, r.option): r.score for r in sensitivity.itertuples()}
    # per component type and option: hand-computed bits and summed score over its layers
    bits = {(r.component, o): 0.0 for r in modules.itertuples() for o in menu}
    score = dict.fromkeys(bits, 0.0)
    for r in modules.itertuples():
        for o in menu:
            bits[(r.component, o)] += hand_bits(o, r.out_features, r.in_features, convention)
            score[(r.component, o)] += lookup[(r.module, o)]
    ranked = []
    for combo in itertools.product(menu, repeat=len(COMPONENTS)):
        total = sum(bits[(c, o)] for c, o in zip(COMPONENTS, combo))
        if 1 - total / (32 * TOTAL_WEIGHTS) >= target - 1e-12:
            ranked.append(sum(score[(c, o)] for c, o in zip(COMPONENTS, combo)))
    return sorted(ranked)[:top]


@pytest.mark.parametrize("chunk", [1 << 21, 16])  # one chunk, and many (the leading-axis loop)
@pytest.mark.parametrize("convention,target", [("paper", 0.9), ("storage", 0.88)])
def test_grid_is_per_component_and_matches_brute_force(monkeypatch, chunk, convention, target):
    monkeypatch.setattr(knapsack, "_GRID_CHUNK", chunk)
    menu = ["dense:int8", "2:4:int8", "2:4:int4", "1:4:int4"]
    modules = synthetic_modules()
    sensitivity = random_sensitivity(modules, menu, seed=11)
    candidates = generate_candidates(
        sensitivity, modules, target, convention, n_best=1, include_uniform=False, grid_top=5
    )
    grid = [c for c in candidates if "grid" in c.kinds]
    assert len(grid) == 5
    for c in grid:
        for component in COMPONENTS:
            names = modules.loc[modules["component"] == component, "module"]
            assert len({str(c.plan.spec_for(n)) for n in names}) == 1
    ref = brute_force_grid(modules, sensitivity, menu, target, convention, 5)
    assert sorted(c.score for c in grid) == pytest.approx(ref, abs=1e-9)


def test_full_menu_grid_shares_one_option_per_component(candidate_sets, table):
    modules, _ = table
    grid = [c for c in candidate_sets[("paper", 0.875)] if "grid" in c.kinds]
    assert len(grid) == 4
    for c in grid:
        for component in COMPONENTS:
            names = modules.loc[modules["component"] == component, "module"]
            assert len({str(c.plan.spec_for(n)) for n in names}) == 1


def paper_bits_per_weight(option):
    s = LayerSpec.parse(option)
    return s.n / s.m * s.bits


def test_sensitive_layer_keeps_more_bits():
    modules = synthetic_modules()
    rng = np.random.default_rng(5)
    weight = {0: 10.0, 1: 0.1}  # layer 0 is fragile, layer 1 is not
    sensitivity = pd.DataFrame(
        [
            {
                "module": r.module,
                "option": o,
                "score": weight[r.layer] * (1 - paper_bits_per_weight(o) / 32) ** 2 + rng.uniform(0, 1e-3),
            }
            for r in modules.itertuples()
            for o in MENU
        ]
    )
    best = generate_candidates(sensitivity, modules, 0.875, "paper", n_best=1)[0]
    assert best.kind == "optimal"

    def layer_bits(layer):
        rows = modules[modules["layer"] == layer]
        return sum(
            paper_bits_per_weight(str(best.plan.spec_for(r.module))) * r.out_features * r.in_features
            for r in rows.itertuples()
        ) / (rows["out_features"] * rows["in_features"]).sum()

    assert layer_bits(0) > layer_bits(1)
    assert layer_bits(1) == 1.0  # the robust layer takes the cheapest option everywhere
    assert uniform_spec(best.plan, modules) is None


def test_a_plan_found_twice_is_listed_once_with_all_its_kinds():
    modules = synthetic_modules()
    sensitivity = random_sensitivity(modules, seed=1)
    # make uniform 2:4:int8 the clear optimum at 0.875 paper
    sensitivity.loc[sensitivity["option"] == "2:4:int8", "score"] = -5.0
    candidates = generate_candidates(sensitivity, modules, 0.875, "paper", n_best=3)
    first = candidates[0]
    assert uniform_spec(first.plan, modules) == "2:4:int8"
    assert first.kinds == ("optimal", "grid", "uniform")
    assert first.plan.meta["kinds"] == ["optimal", "grid", "uniform"]
    assert len({c.plan for c in candidates}) == len(candidates)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "convention,target,highest,cheapest",
    [
        ("paper", 0.97, "0.9688", "1:4:int4"),  # 1 bit/weight of 32
        ("storage", 0.95, "0.9473", "1:4:int4"),  # 1.5 + 0.1875 bits/weight of 32 = 0.947265625
    ],
)
def test_infeasible_target_names_the_highest_reachable_ratio(table, convention, target, highest, cheapest):
    modules, sensitivity = table
    expected = rf"target ratio {target} \({convention}\) is infeasible.*highest reachable is {highest}.*{cheapest}"
    with pytest.raises(NxmiError, match=expected):
        generate_candidates(sensitivity, modules, target, convention)


@pytest.mark.parametrize("target", [0, 1, -0.5, 1.5, float("nan"), True, "0.9"])
def test_target_outside_open_unit_interval(table, target):
    modules, sensitivity = table
    with pytest.raises(NxmiError, match=r"target ratio.*\(0, 1\)"):
        generate_candidates(sensitivity, modules, target)


def test_unknown_convention(table):
    modules, sensitivity = table
    with pytest.raises(NxmiError, match="'bytes'.*paper, storage"):
        generate_candidates(sensitivity, modules, 0.9, "bytes")


def test_missing_sensitivity_pairs_are_named(table):
    modules, sensitivity = table
    dropped = sensitivity.drop(index=[5, 30])
    missing = [tuple(sensitivity.loc[i, ["module", "option"]]) for i in (5, 30)]
    with pytest.raises(NxmiError, match="missing 2 \\(module, option\\) pair") as err:
        generate_candidates(dropped, modules, 0.9)
    for module, option in missing:
        assert f"({module}, {option})" in str(err.value)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda s: s.assign(score=s["score"].where(s.index != 3, np.nan)), "NaN"),
        (lambda s: pd.concat([s, s.iloc[[0]]]), "several scores"),
        (lambda s: pd.concat([s, s.iloc[[0]].assign(module="encoder.layer.9.query")]), "not in the modules table"),
        (lambda s: s.drop(columns="score"), "lacks column"),
        (lambda s: s.assign(option="3:4:int9"), "3:4:int9"),
    ],
)
def test_bad_sensitivity_tables(table, edit, match):
    modules, sensitivity = table
    with pytest.raises(NxmiError, match=match):
        generate_candidates(edit(sensitivity), modules, 0.9)


def test_bad_counts(table):
    modules, sensitivity = table
    with pytest.raises(NxmiError, match="n_best"):
        generate_candidates(sensitivity, modules, 0.9, n_best=0)

