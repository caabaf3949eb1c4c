"""The Optuna refinement stage's search space: groups, seeds, repair to the constraint."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from nxmiformer.compression import CompressionPlan, compression_ratio
from nxmiformer.errors import NxmiError
from nxmiformer.search.knapsack import build_problem, generate_candidates, modules_frame
from nxmiformer.search.refine import REFINED, GroupSpace, make_searcher, seed_points
from tests.conftest import tiny_bert, tiny_modernbert

MENU = ("dense", "dense:int8", "2:4:int8", "2:4:int4", "4:8:int4", "1:4:int8")


@pytest.fixture(scope="module")
def model():
    return tiny_bert()


def sensitivity(modules: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for name in modules["module"]:
        for k, option in enumerate(MENU):  # roughly: cheaper options hurt more, with noise
            rows.append({"module": name, "option": option, "score": k * rng.uniform(0.5, 1.5) - (option == "dense")})
    return pd.DataFrame(rows)


def space_for(model, seed=0, target=0.875, convention="paper", layer_groups=2):
    modules = modules_frame(model)
    problem = build_problem(sensitivity(modules, seed), modules)
    return GroupSpace.build(problem, target, convention, layer_groups), problem


@pytest.mark.parametrize("layer_groups,expected", [(1, 6), (2, 12), (99, 12)])
def test_groups_cover_every_module_once(model, layer_groups, expected):
    space, _ = space_for(model, layer_groups=layer_groups)  # the tiny BERT has 2 layers
    assert len(space.groups) == expected
    rows = sorted(r for g in space.groups.values() for r in g)
    assert rows == list(range(len(space.modules)))
    assert set(space.distributions()) == set(space.groups)


def _deberta_with_position_projections():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    return DebertaV2ForSequenceClassification(DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=False))


# (label, model, layer groups, the group names): a fused qkv and the ``other`` linears are groups too
LAYOUT_GROUPS = [
    ("modernbert", tiny_modernbert, 1,
     ["qkv.L0-1", "attn_out.L0-1", "ffn_in.L0-1", "ffn_out.L0-1"]),
    ("modernbert-per-layer", tiny_modernbert, 2,
     [f"{c}.L{i}" for i in range(2) for c in ("qkv", "attn_out", "ffn_in", "ffn_out")]),
    ("deberta-pos-proj", _deberta_with_position_projections, 1,
     ["query.L0-1", "key.L0-1", "value.L0-1", "attn_out.L0-1", "ffn_in.L0-1", "ffn_out.L0-1", "other.L0-1"]),
]


@pytest.mark.parametrize("label,build,layer_groups,names", LAYOUT_GROUPS, ids=[c[0] for c in LAYOUT_GROUPS])
def test_groups_cover_fused_and_other_modules(label, build, layer_groups, names):
    model = build()
    space, _ = space_for(model, layer_groups=layer_groups)
    assert list(space.groups) == names
    assert sorted(r for g in space.groups.values() for r in g) == list(range(len(space.modules)))
    rng = np.random.default_rng(0)
    for _ in range(5):  # every module gets the option its group sampled (or a repair move)
        plan = space.plan_for({g: str(rng.choice(space.choices(g))) for g in space.groups})
        assert compression_ratio(model, plan) >= 0.875 - 1e-9
        assert set(plan) <= set(space.modules)


@pytest.mark.parametrize("seed,target,convention", list(itertools.product([0, 1, 2], [0.8, 0.875, 0.9], ["paper", "storage"])))
def test_every_sampled_plan_is_repaired_to_meet_the_constraint(model, seed, target, convention):
    space, _ = space_for(model, seed, target, convention)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        params = {g: str(rng.choice(space.choices(g))) for g in space.groups}
        plan = space.plan_for(params)
        assert plan.meta["kind"] == REFINED
        assert compression_ratio(model, plan, convention) >= target - 1e-9
        assert plan.meta["ratio"] == pytest.approx(compression_ratio(model, plan, convention), abs=1e-12)
        assert space.plan_for(params) == plan  # deterministic: the driver rebuilds it from the params


def test_feasible_samples_are_not_repaired(model):
    space, _ = space_for(model)
    params = {g: "1:4:int8" for g in space.groups}  # 93.75% paper >= 87.5%
    plain = space.plan_for(params)
    assert plain.meta["repair_moves"] == 0 and set(map(str, plain.values())) == {"1:4:int8"}


def test_repair_takes_the_least_damage_per_bit_first(model):
    """Against brute force over single moves from an all-dense plan at a target one move reaches."""
    space, _ = space_for(model, target=0.02)
    start = np.full(len(space.modules), space.labels.index("dense"))
    repaired, moves = space.repair(start)
    assert moves >= 1
    i = np.nonzero(repaired != start)[0][0]
    k = repaired[i]
    rows = np.arange(len(start))
    saving = space.costs[rows, start][:, None] - space.costs
    damage = np.maximum(space.scores - space.scores[rows, start][:, None], 0)
    ok = np.isfinite(space.scores) & (saving > 0)
    rates = np.where(ok, damage / np.where(ok, saving, 1), np.inf)
    assert rates[i, k] == pytest.approx(rates.min())


def test_params_exact_and_projected(model):
    space, problem = space_for(model)
    grid = CompressionPlan.by_component(model, {"query": "2:4:int8", "key": "2:4:int8", "value": "2:4:int4",
                                                 "attn_out": "2:4:int8", "ffn_in": "4:8:int4", "ffn_out": "1:4:int8"})
    exact = space.params_of(grid)
    assert exact is not None and exact["value.L0"] == "2:4:int4"
    assert space.plan_for(exact) == grid
    mixed = CompressionPlan(dict(grid) | {"bert.encoder.layer.0.attention.self.query": "dense:int8"})
    assert space.params_of(mixed, exact=True) is not None  # layer 0 query is a group of its own here
    space1, _ = space_for(model, layer_groups=1)
    assert space1.params_of(mixed, exact=True) is None
    projected = space1.params_of(mixed, exact=False)
    assert projected["query.L0-1"] in ("2:4:int8", "dense:int8")  # a tie: the cheaper one
    assert projected["query.L0-1"] == "2:4:int8"


def test_seeds_tell_expressible_plans_and_enqueue_the_best_others(model):
    space, problem = space_for(model, layer_groups=1)
    modules = modules_frame(model)
    candidates = generate_candidates(sensitivity(modules, 0), modules, 0.875, n_best=4)
    rows = []
    for i, c in enumerate(candidates):
        rows.append({"status": "completed" if i % 3 else "stopped", "primary": 0.5 + 0.01 * i,
                     "plan_json": json.dumps(c.plan.to_dict()), "kind": c.kind})
    rows.append({"status": "error", "primary": float("nan"), "plan_json": "{}", "kind": "optimal"})
    table = pd.DataFrame(rows)
    told, enqueued = seed_points(space, table, enqueue=2)
    exact = [c for c in candidates if space.params_of(c.plan) is not None]
    assert len(told) == len({json.dumps(space.params_of(c.plan), sort_keys=True) for c in exact})
    assert any(pruned for _, _, pruned in told) == any(i % 3 == 0 for i, c in enumerate(candidates) if c in exact)
    assert 1 <= len(enqueued) <= 2  # the heterogeneous plans mix options within a group
    for params in enqueued:
        assert set(params) == set(space.groups)
    searcher = make_searcher(space, told, enqueued, seed=0)
    first = searcher.suggest("t1")
    assert {k: first[k] for k in space.groups} == enqueued[0]  # the enqueued seed runs first


def test_bad_layer_groups(model):
    modules = modules_frame(model)
    problem = build_problem(sensitivity(modules, 0), modules)
    with pytest.raises(NxmiError, match="layer groups"):
        GroupSpace.build(problem, 0.875, "paper", 0)
    with pytest.raises(NxmiError, match="paper, storage"):
        GroupSpace.build(problem, 0.875, "bits", 2)


def test_a_sample_that_repairs_to_a_trained_plan_reuses_its_record(tmp_path):
    from nxmiformer.records import TrialRecord, records_frame, write_records
    from nxmiformer.search.refine import _trained_before

    model = tiny_bert()
    trained = CompressionPlan.uniform(model, "2:4:int8")
    record = TrialRecord.from_report(
        {"plan_json": trained.to_json(indent=None), "plan_summary": trained.summary(), "primary": 0.8,
         "selection_loss": 0.4, "step": 8, "accuracy": 0.8}, trial_id="abc_00001", status="completed")
    known = write_records(records_frame([record]), tmp_path / "stage1.parquet")
    reused = _trained_before(CompressionPlan.uniform(model, "2:4:int8"), str(known))
    assert reused["duplicate_of"] == "abc_00001" and reused["kind"] == "refined" and reused["phase"] == "final"
    assert reused["selection_loss"] == 0.4 and reused["accuracy"] == 0.8 and reused["step"] == 8
    assert _trained_before(CompressionPlan.uniform(model, "2:4:int4"), str(known)) is None
