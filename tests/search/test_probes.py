"""Short-recovery probes (the ``probe`` proxy) on a tiny model and synthetic SST-2 rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nxmiformer.compression import LayerSpec, compressible_modules, harden_, compress_, CompressionPlan
from nxmiformer.errors import NxmiError
from nxmiformer.models import load_model, load_tokenizer
from nxmiformer.search.probes import ProbeSettings, probe_groups, probe_sensitivity
from nxmiformer.trials import DataConfig, prepare_task_data
from nxmiformer.trials.data import make_dataloader
from nxmiformer.trials.loop import model_inputs, task_loss
from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert, write_synthetic_task

MENU = ("dense", "2:4:int8", "1:4:int4")


@pytest.fixture
def setup(tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "model"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), num_hidden_layers=2).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    glue = tmp_path / "glue"
    write_synthetic_task(glue, "sst2")
    data = DataConfig(task="sst2", data_dir=str(glue), max_length=16, holdout_size=8, selection_size=12)
    return model_dir, data, tmp_path / "cache"


@pytest.mark.parametrize("layers,blocks,expected", [
    (3, 1, ["0-2"]), (3, 2, ["0-0", "1-2"]), (3, 3, ["0-0", "1-1", "2-2"]), (3, 5, ["0-0", "1-1", "2-2"]),
    (6, 2, ["0-2", "3-5"]), (6, 4, ["0-0", "1-2", "3-3", "4-5"]),
])
def test_groups_cut_each_component_into_consecutive_layer_blocks(layers, blocks, expected):
    model = tiny_bert(num_hidden_layers=layers)
    groups = probe_groups(model, blocks)
    modules = compressible_modules(model)
    components = list(dict.fromkeys(cm.component for cm in modules))
    assert sorted(groups) == sorted(f"{c}@{b}" for c in components for b in expected)
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(cm.name for cm in modules)  # every module in exactly one group
    layer_of = {cm.name: (cm.component, cm.layer) for cm in modules}
    for group, members in groups.items():
        component, span = group.split("@")
        first, last = map(int, span.split("-"))
        assert {layer_of[n] for n in members} == {(component, layer) for layer in range(first, last + 1)}


def one_shot_selection_loss(model_dir, data, names, option):
    """Independent reference for a probe that cannot train: the group hardened, a plain forward
    over the selection rows."""
    model = load_model(str(model_dir)).eval()
    tokenizer = load_tokenizer(str(model_dir))
    glue = prepare_task_data("sst2", tokenizer, data_dir=data.data_dir, max_length=data.max_length, seed=data.seed,
                             holdout_size=data.holdout_size, selection_size=data.selection_size)
    if names:
        compress_(model, CompressionPlan({n: LayerSpec.parse(option) for n in names}))
        harden_(model)
    batches = list(make_dataloader(glue.selection, tokenizer, 64))
    with torch.no_grad():
        logits = torch.cat([model(**model_inputs(b)).logits for b in batches])
    return float(task_loss(logits, torch.cat([b["labels"] for b in batches]), False))


def test_a_probe_without_learning_is_the_hardened_groups_selection_loss(setup):
    model_dir, data, cache = setup
    settings = ProbeSettings(steps=1, blocks=2, lr=1e-20, batch_size=8)  # one step that moves nothing
    result = probe_sensitivity(model_dir, data, MENU, settings, cache_dir=cache, progress=False)
    table = result.table
    groups = probe_groups(tiny_bert(num_hidden_layers=2), 2)
    assert len(table) == sum(map(len, groups.values())) * len(MENU)
    assert result.computed == len(groups) * 2 and result.cached == 0
    assert (table.loc[table["option"] == "dense", "probe"] == 0).all()
    base = one_shot_selection_loss(model_dir, data, [], None)
    for group, option in [("query@0-0", "2:4:int8"), ("ffn_out@1-1", "1:4:int4"), ("attn_out@0-0", "1:4:int4")]:
        rows = table[(table["group"] == group) & (table["option"] == option)]
        assert len(rows) == len(groups[group]) and rows["probe_loss"].nunique() == 1
        expected = one_shot_selection_loss(model_dir, data, groups[group], option)
        assert rows["probe_loss"].iloc[0] == pytest.approx(expected, abs=1e-5)
        # the group's rise is shared among its modules: a plan's predicted cost stays a sum
        assert rows["probe"].sum() == pytest.approx(expected - base, abs=1e-5)


def test_probes_are_cached_and_new_options_or_settings_extend_or_rekey(setup):
    model_dir, data, cache = setup
    settings = ProbeSettings(steps=2, blocks=1, batch_size=8)
    first = probe_sensitivity(model_dir, data, ("dense", "2:4:int8"), settings, cache_dir=cache, progress=False)
    again = probe_sensitivity(model_dir, data, ("dense", "2:4:int8"), settings, cache_dir=cache, progress=False)
    assert first.computed > 0 and again.computed == 0 and again.cached == len(again.table)
    pd.testing.assert_frame_equal(first.table, again.table)
    wider = probe_sensitivity(model_dir, data, ("dense", "2:4:int8", "1:4:int4"), settings, cache_dir=cache,
                              progress=False)
    assert wider.computed == len(probe_groups(tiny_bert(num_hidden_layers=2), 1))  # only the new option's probes
    assert wider.path == first.path and again.cost()["probes"] == 0
    longer = probe_sensitivity(model_dir, data, ("dense", "2:4:int8"), ProbeSettings(steps=3, blocks=1, batch_size=8),
                               cache_dir=cache, progress=False)
    assert longer.path != first.path and longer.computed > 0
    plain, decayed = (probe_sensitivity(model_dir, data, ("2:4:int8",),
                                        ProbeSettings(steps=2, blocks=1, batch_size=8, lr=1e-2, weight_decay=wd),
                                        cache_dir=cache, progress=False) for wd in (0.0, 0.5))
    assert decayed.path != plain.path and decayed.computed > 0
    assert not np.allclose(decayed.table["probe"], plain.table["probe"], rtol=1e-4, atol=0)  # it reaches the optimizer
    assert not list(first.path.parent.glob(".*.tmp"))


def test_probes_on_ray_tasks_match_in_process(setup):
    ray = pytest.importorskip("ray")
    model_dir, data, cache = setup
    settings = ProbeSettings(steps=2, blocks=1, batch_size=8)
    local = probe_sensitivity(model_dir, data, ("2:4:int8",), settings, cache_dir=cache / "a", progress=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = probe_sensitivity(model_dir, data, ("2:4:int8",), settings, cache_dir=cache / "b", workers=2,
                                   progress=False)
    finally:
        ray.shutdown()
    key = ["module", "option"]
    pd.testing.assert_frame_equal(local.table.sort_values(key).reset_index(drop=True),
                                  remote.table.sort_values(key).reset_index(drop=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes,needle", [
    ({"steps": 0}, "probe steps"), ({"blocks": True}, "probe blocks"), ({"lr": 0.0}, "probe lr"),
    ({"weight_decay": -0.1}, "probe weight_decay"),
])
def test_bad_probe_settings(changes, needle):
    with pytest.raises(NxmiError, match=needle):
        ProbeSettings(**changes)


def test_probes_need_selection_rows(setup):
    model_dir, data, cache = setup
    from dataclasses import replace

    with pytest.raises(NxmiError, match="selection_size"):
        probe_sensitivity(model_dir, replace(data, selection_size=0), MENU, cache_dir=cache, progress=False)
