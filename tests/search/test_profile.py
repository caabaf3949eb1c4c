"""Sensitivity profiling and its Parquet cache, on a tiny model and synthetic SST-2 rows."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from nxmiformer.compression import LayerSpec, compressible_modules, project
from nxmiformer.models import load_model, load_tokenizer
from nxmiformer.search.profile import profile_sensitivity
from nxmiformer.trials import DataConfig, prepare_task_data
from nxmiformer.trials.loop import model_inputs, task_loss
from nxmiformer.trials.data import make_dataloader
from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert, write_synthetic_task

MENU = ("dense", "dense:int4", "2:4:int8", "2:4:int2", "1:4:int8")


@pytest.fixture
def setup(tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "model"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), num_hidden_layers=3).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    glue = tmp_path / "glue"
    write_synthetic_task(glue, "sst2")
    data = DataConfig(task="sst2", data_dir=str(glue), max_length=16)
    return model_dir, data, tmp_path / "cache"


def full_forward_loss(model_dir, data, calib_size, module, option):
    """Independent reference: a fresh model, the module projected, an ordinary full forward."""
    model = load_model(str(model_dir)).eval()
    tokenizer = load_tokenizer(str(model_dir))
    calib = prepare_task_data("sst2", tokenizer, data_dir=data.data_dir, max_length=data.max_length, seed=data.seed,
                              include_train=False, holdout_size=calib_size).holdout
    weight = model.get_submodule(module).weight
    with torch.no_grad():
        weight.copy_(project(weight, LayerSpec.parse(option)))
        batches = list(make_dataloader(calib, tokenizer, 8))
        logits = torch.cat([model(**model_inputs(b)).logits for b in batches])
    return float(task_loss(logits, torch.cat([b["labels"] for b in batches]), False))


def test_cold_profile_matches_full_forward_reference(setup):
    model_dir, data, cache = setup
    result = profile_sensitivity(model_dir, data, MENU, calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    table = result.table
    assert result.computed == 18 * len(MENU) and result.cached == 0
    assert len(table) == 18 * len(MENU)
    assert (table.loc[table["option"] == "dense", "delta_loss"] == 0).all()
    # block-output replay gives the same numbers as a plain forward, for modules of every block
    for module, option in [(compressible_modules(tiny_bert(num_hidden_layers=3))[i].name, o)
                           for i, o in [(0, "2:4:int2"), (8, "1:4:int8"), (17, "dense:int4"), (13, "2:4:int8")]]:
        row = table[(table["module"] == module) & (table["option"] == option)].iloc[0]
        assert row["loss"] == pytest.approx(full_forward_loss(model_dir, data, 16, module, option), abs=1e-5)
    # a harsher option hurts at least somewhere
    assert table.loc[table["option"] == "2:4:int2", "delta_loss"].abs().sum() > 0


def test_replay_of_a_fused_model_matches_full_forward(tmp_path):
    """ModernBERT's encoder loop reads each block's ``attention_type``: the stand-in that replays a
    cached block output answers it from the block, and the numbers are a plain forward's."""
    from transformers import BertTokenizerFast

    from tests.conftest import tiny_modernbert

    model_dir, vocab = tmp_path / "model", tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n")
    model = tiny_modernbert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), num_hidden_layers=3)
    model.save_pretrained(model_dir)
    BertTokenizerFast(vocab=str(vocab), vocab_file=str(vocab), do_lower_case=True,
                      model_input_names=["input_ids", "attention_mask"]).save_pretrained(model_dir)
    write_synthetic_task(tmp_path / "glue", "sst2")
    data = DataConfig(task="sst2", data_dir=str(tmp_path / "glue"), max_length=16)
    table = profile_sensitivity(model_dir, data, ("dense", "2:4:int2"), calib_size=16, batch_size=8,
                                cache_dir=tmp_path / "cache", progress=False, oneshot=True).table
    assert len(table) == 12 * 2 and set(table["component"]) == {"qkv", "attn_out", "ffn_in", "ffn_out"}
    for module in ("model.layers.0.attn.Wqkv", "model.layers.1.mlp.Wi", "model.layers.2.attn.Wqkv", "model.layers.2.mlp.Wo"):
        row = table[(table["module"] == module) & (table["option"] == "2:4:int2")].iloc[0]
        assert row["loss"] == pytest.approx(full_forward_loss(model_dir, data, 16, module, "2:4:int2"), abs=1e-5)


def test_warm_profile_reads_cache_and_new_options_extend_it(setup):
    model_dir, data, cache = setup
    cold = profile_sensitivity(model_dir, data, MENU, calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    warm = profile_sensitivity(model_dir, data, MENU, calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    assert warm.computed == 0 and warm.cached == len(cold.table)
    pd.testing.assert_frame_equal(warm.table, cold.table)
    more = profile_sensitivity(model_dir, data, MENU + ("4:8:int4",), calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    assert more.computed == 18 and more.cached == len(cold.table)
    subset = profile_sensitivity(model_dir, data, ("2:4:int8",), calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    assert subset.computed == 0 and set(subset.table["option"]) == {"2:4:int8"}


@pytest.mark.parametrize("change", ["weights", "data", "calibration size"])
def test_cache_invalidation(setup, change):
    model_dir, data, cache = setup
    profile_sensitivity(model_dir, data, ("2:4:int8",), calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    calib = 16
    if change == "weights":
        model = load_model(str(model_dir))
        with torch.no_grad():
            compressible_modules(model)[0].module.weight.mul_(1.01)
        model.save_pretrained(model_dir)
    elif change == "data":
        path = f"{data.data_dir}/sst2/train.parquet"
        frame = pd.read_parquet(path)
        frame.loc[0, "sentence"] = "the cat sat on the mat"
        frame.to_parquet(path, index=False)
    else:
        calib = 12
    again = profile_sensitivity(model_dir, data, ("2:4:int8",), calib_size=calib, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    assert again.computed == 18


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong columns"])
def test_corrupt_cache_is_reported_and_recomputed(setup, damage):
    model_dir, data, cache = setup
    first = profile_sensitivity(model_dir, data, ("2:4:int8",), calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    if damage == "garbage":
        first.path.write_bytes(b"not parquet at all")
    elif damage == "truncated":
        first.path.write_bytes(first.path.read_bytes()[:200])
    else:
        first.table.drop(columns=["score"]).to_parquet(first.path)
    with pytest.warns(UserWarning, match="unreadable"):
        again = profile_sensitivity(model_dir, data, ("2:4:int8",), calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    assert again.computed == 18
    pd.testing.assert_frame_equal(again.table, first.table)
    assert not list(first.path.parent.glob(".*.tmp"))


def test_profiling_on_ray_tasks_matches_in_process(setup):
    ray = pytest.importorskip("ray")
    model_dir, data, cache = setup
    local = profile_sensitivity(model_dir, data, ("2:4:int8", "dense:int4"), calib_size=16, batch_size=8,
                                cache_dir=cache / "a", progress=False, oneshot=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = profile_sensitivity(model_dir, data, ("2:4:int8", "dense:int4"), calib_size=16, batch_size=8,
                                     cache_dir=cache / "b", workers=2, progress=False, oneshot=True)
    finally:
        ray.shutdown()
    key = ["module", "option"]
    a = local.table.sort_values(key).reset_index(drop=True)
    b = remote.table.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options,word", [(("2:4:int9",), "bits=9"), (("1:3:int8",), "m=3"), ((), "empty"), (("x",), "'x'")])
def test_bad_options(setup, options, word):
    model_dir, data, cache = setup
    with pytest.raises(ValueError, match=word):
        profile_sensitivity(model_dir, data, options, calib_size=16, cache_dir=cache, progress=False, oneshot=True)


def test_fisher_proxy_weighs_the_projection_error(setup):
    model_dir, data, cache = setup
    options = ("dense", "2:4:int8", "2:4:int4", "1:4:int2")
    table = profile_sensitivity(model_dir, data, options, calib_size=16, batch_size=8, cache_dir=cache / "f",
                                progress=False, oneshot=True).table
    assert (table["fisher"] >= 0).all() and (table.loc[table["option"] == "dense", "fisher"] == 0).all()
    by_option = table.groupby("option")["fisher"].sum()
    # a coarser projection moves weights further: the Fisher-weighted error grows with it
    assert by_option["2:4:int8"] < by_option["2:4:int4"] < by_option["1:4:int2"]


def test_a_fisher_only_profile_skips_the_forwards_and_a_full_one_completes_it(setup, monkeypatch):
    model_dir, data, cache = setup
    full = profile_sensitivity(model_dir, data, MENU, calib_size=16, batch_size=8, cache_dir=cache / "full",
                               progress=False, oneshot=True).table
    lean = profile_sensitivity(model_dir, data, MENU, calib_size=16, batch_size=8, cache_dir=cache, progress=False,
                               oneshot=False)
    assert lean.computed == len(full)
    # the same Fisher column without the forward per option; the one-shot columns are NaN but for dense
    np.testing.assert_allclose(lean.table["fisher"], full["fisher"], rtol=1e-5, atol=1e-12)
    is_dense = lean.table["option"] == "dense"
    assert lean.table.loc[~is_dense, ["loss", "delta_loss", "score"]].isna().all().all()
    assert (lean.table.loc[is_dense, "delta_loss"] == 0).all()
    # a later call that needs the one-shot columns recomputes exactly the rows that lack them ...
    completed = profile_sensitivity(model_dir, data, MENU, calib_size=16, batch_size=8, cache_dir=cache, progress=False, oneshot=True)
    assert completed.computed == len(full) and completed.table["delta_loss"].notna().all()
    pd.testing.assert_frame_equal(completed.table, full, check_exact=False, rtol=1e-5, atol=1e-8)
    # ... and a fisher-only call is served by full rows
    again = profile_sensitivity(model_dir, data, MENU, calib_size=16, batch_size=8, cache_dir=cache, progress=False,
                                oneshot=False)
    assert again.computed == 0 and again.table["delta_loss"].notna().all()


@pytest.mark.parametrize("target, size, fewest, most", [
    (0.875, 19, 2.0, 8.0),       # 4 bits: 2:4/4:8 at fp16 but no sparser float
    (0.9375, 25, 1.0, 4.0),
    (0.96875, 22, 0.5, 2.0),     # 1 bit: nothing below 0.5 bit, so no 1:8:int2
    (0.984375, 13, 0.25, 1.0),
])
def test_fine_menu_is_a_finer_ladder_within_a_factor_two(target, size, fewest, most):
    from nxmiformer.compression import LayerSpec
    from nxmiformer.search.profile import menu_for

    bits = 32 * (1 - target)
    menu = menu_for("fine", bits)
    specs = [LayerSpec.parse(o) for o in menu]
    per_weight = [s.density * s.bits for s in specs]
    assert len(menu) == size == len(set(menu))
    assert min(per_weight) == fewest and max(per_weight) == most
    assert per_weight == sorted(per_weight, reverse=True)
    assert all(s.is_integer or s.density >= 0.5 for s in specs)
    # the ladder: every step between neighbouring levels is at most 1.5x, and 3-bit options are in it
    levels = sorted(set(per_weight))
    assert max(b / a for a, b in zip(levels, levels[1:])) <= 1.5 + 1e-9
    assert any(s.bits == 3 for s in specs) and any(s.m == 8 and s.n in (3, 6) for s in specs)


@pytest.mark.parametrize("target, menu", [
    # beyond the ladder's cheapest end (0.25 bit): the options within a factor 2 of it, not an empty menu
    (0.999, ("1:4:int2", "2:8:int2", "1:8:int4", "1:8:int3", "1:8:int2")),
    # beyond its dearest end (16 bits; there is no fp32 option): 8 to 16 bits
    (0.001, ("dense:fp16", "3:4:fp16", "6:8:fp16", "dense:int8", "2:4:fp16", "4:8:fp16")),
])
def test_fine_menu_beyond_the_ladders_ends(target, menu):
    from nxmiformer.search.profile import menu_for

    assert menu_for("fine", 32 * (1 - target)) == menu


def test_named_menus_and_proxies_in_the_search_config(tmp_path):
    from nxmiformer.errors import NxmiError
    from nxmiformer.search import SearchConfig
    from nxmiformer.search.profile import KERNEL_MENU, menu_for

    assert SearchConfig(out=str(tmp_path), target_ratio=0.96875).options == menu_for("fine", 1.0)  # the default
    assert SearchConfig(out=str(tmp_path), menu="kernel").options == KERNEL_MENU
    assert SearchConfig(out=str(tmp_path), menu="kernel", options="2:4:int8").options == ("2:4:int8",)  # explicit wins
    assert SearchConfig(out=str(tmp_path), target_ratio=0.96875, menu="fine").options == menu_for("fine", 1.0)
    # several targets: each its own menu, the profile their union; derived menus are stored as None (resume derives them)
    several = SearchConfig(out=str(tmp_path), target_ratio="0.875,0.96875")
    low, high = several.targets
    assert several.options_for(low) == menu_for("fine", 4.0) and several.options_for(high) == menu_for("fine", 1.0)
    assert set(several.options) == set(menu_for("fine", 4.0)) | set(menu_for("fine", 1.0))
    assert several.to_dict()["options"] is None and several.to_dict()["target_ratio"] == [0.875, 0.96875]
    given = SearchConfig(out=str(tmp_path), target_ratio=[0.9, 0.8], options="2:4:int4,1:4:int8")
    assert given.target_ratio == (0.8, 0.9) and all(given.options_for(t) == ("2:4:int4", "1:4:int8") for t in given.targets)
    with pytest.raises(NxmiError, match="unknown menu 'fast'; allowed: fine, kernel"):
        SearchConfig(out=str(tmp_path), menu="fast")
    with pytest.raises(NxmiError, match="unknown proxy 'oracle'; allowed: oneshot, fisher"):
        SearchConfig(out=str(tmp_path), proxy="oracle")


def test_proxy_correlation_ranks_plans_by_their_summed_scores():
    import json

    from nxmiformer.compression import CompressionPlan
    from nxmiformer.search.report import proxy_correlation

    modules = ["a", "b"]
    profile = pd.DataFrame([{"module": m, "option": o, "delta_loss": s, "fisher": -s}
                            for m in modules for o, s in (("2:4:int8", 0.1), ("2:4:int4", 0.5), ("1:4:int4", 2.0))])
    plans = [{"a": "2:4:int8", "b": "2:4:int8"}, {"a": "2:4:int8", "b": "2:4:int4"},
             {"a": "2:4:int4", "b": "1:4:int4"}, {"a": "1:4:int4", "b": "1:4:int4"}]
    results = pd.DataFrame({"status": "completed", "plan_json": [json.dumps(CompressionPlan(p).to_dict()) for p in plans],
                            "selection_loss": [0.3, 0.4, 0.9, 1.5]})
    got = proxy_correlation(results, profile)
    assert got["oneshot"] == pytest.approx(1.0) and got["fisher"] == pytest.approx(-1.0) and got["trials"] == 4
    assert np.isnan(proxy_correlation(results.head(2), profile)["oneshot"])  # too few trials to rank
    # a task metric (higher is better) is ranked the other way: the plan with the least predicted cost should score most
    results["primary"] = [0.90, 0.85, 0.70, 0.80]
    got = proxy_correlation(results, profile, "primary")
    assert got["oneshot"] == pytest.approx(0.8) and got["fisher"] == pytest.approx(-0.8)


@pytest.mark.parametrize("missing, oneshot, trials", [
    (None, 1.0, 4),  # every plan priced
    (("b", "2:4:int4"), 1.0, 3),  # the second plan uses a module x option without a one-shot score: ranked without it
    (("b", "1:4:int4"), float("nan"), 2),  # two plans unpriced: too few left to rank
])
def test_proxy_correlation_ranks_only_the_plans_a_proxy_can_price(missing, oneshot, trials):
    import json

    from nxmiformer.compression import CompressionPlan
    from nxmiformer.search.report import proxy_correlation

    profile = pd.DataFrame([{"module": m, "option": o, "delta_loss": float("nan") if (m, o) == missing else s,
                             "fisher": s}
                            for m in ("a", "b") for o, s in (("2:4:int8", 0.1), ("2:4:int4", 0.5), ("1:4:int4", 2.0))])
    plans = [{"a": "2:4:int8", "b": "2:4:int8"}, {"a": "2:4:int8", "b": "2:4:int4"},
             {"a": "2:4:int4", "b": "1:4:int4"}, {"a": "1:4:int4", "b": "1:4:int4"}]
    results = pd.DataFrame({"status": "completed", "plan_json": [json.dumps(CompressionPlan(p).to_dict()) for p in plans],
                            "selection_loss": [0.3, 0.4, 0.9, 1.5]})
    got = proxy_correlation(results, profile)
    assert got["oneshot_trials"] == trials and got["fisher_trials"] == 4 and got["trials"] == 4
    assert got["fisher"] == pytest.approx(1.0)  # fisher prices every plan, whatever the one-shot column lacks
    assert np.isnan(got["oneshot"]) if np.isnan(oneshot) else got["oneshot"] == pytest.approx(oneshot)


def test_plan_costs_sum_each_plans_module_scores():
    import json

    from nxmiformer.compression import CompressionPlan
    from nxmiformer.search.report import plan_costs

    profile = pd.DataFrame([{"module": m, "option": o, "score": s * (1 if m == "a" else 10)}
                            for m in ("a", "b") for o, s in (("2:4:int8", 0.1), ("2:4:int4", 0.5))])
    plans = pd.Series([json.dumps(CompressionPlan(p).to_dict()) for p in (
        {"a": "2:4:int8", "b": "2:4:int8"}, {"a": "2:4:int4", "b": "2:4:int8"}, {"a": "2:4:int8", "b": "2:4:int4"},
        {"a": "2:4:int8", "b": "1:4:int4"},  # an option the profile does not price
    )] + [""], index=[10, 11, 12, 13, 14])  # and a trial without a plan
    got = plan_costs(plans, profile)
    assert list(got.index) == [10, 11, 12, 13, 14]
    assert got.iloc[:3].tolist() == pytest.approx([0.1 + 1.0, 0.5 + 1.0, 0.1 + 5.0])
    assert got.iloc[3:].isna().all()
