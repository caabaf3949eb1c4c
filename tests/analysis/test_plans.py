"""Plans placed in the layer x component grid, by name and by structure."""

from __future__ import annotations

import pytest

from nxmiformer.analysis import module_position, plan_grid, plan_of, plan_table
from nxmiformer.compression import COMPONENTS, FUSED_COMPONENTS, CompressionPlan, compressible_modules
from nxmiformer.errors import NxmiError
from tests.conftest import tiny_bert

NAMES = [
    ("bert.encoder.layer.3.attention.self.query", 3, "query"),
    ("roberta.encoder.layer.11.attention.self.key", 11, "key"),
    ("electra.encoder.layer.0.attention.self.value", 0, "value"),
    ("bert.encoder.layer.2.attention.output.dense", 2, "attn_out"),
    ("bert.encoder.layer.2.intermediate.dense", 2, "ffn_in"),
    ("bert.encoder.layer.2.output.dense", 2, "ffn_out"),
    ("distilbert.transformer.layer.5.attention.q_lin", 5, "query"),
    ("distilbert.transformer.layer.5.attention.out_lin", 5, "attn_out"),
    ("distilbert.transformer.layer.5.ffn.lin1", 5, "ffn_in"),
    ("distilbert.transformer.layer.5.ffn.lin2", 5, "ffn_out"),
    ("mpnet.encoder.layer.1.attention.attn.o", 1, "attn_out"),
    ("deberta.encoder.layer.4.attention.self.value_proj", 4, "value"),
    ("model.layers.21.attn.Wqkv", 21, "qkv"),
    ("model.layers.21.attn.Wo", 21, "attn_out"),
    ("model.layers.0.mlp.Wi", 0, "ffn_in"),
    ("model.layers.0.mlp.Wo", 0, "ffn_out"),
]


@pytest.mark.parametrize("name,layer,component", NAMES)
def test_module_position(name, layer, component):
    assert module_position(name) == (layer, component)


@pytest.mark.parametrize("name", ["bert.pooler.dense", "bert.encoder.layer.3.attention.self.rel_pos",
                                  "classifier", "bert.encoder.layer.x.output.dense"])
def test_unplaceable_names(name):
    with pytest.raises(NxmiError, match="pass the model"):
        module_position(name)


def test_names_agree_with_the_structure():
    model = tiny_bert()
    for cm in compressible_modules(model):
        assert module_position(cm.name) == (cm.layer, cm.component)
    plan = CompressionPlan.by_component(model, {"query": "2:4:int4", "ffn_in": "dense:int8", "ffn_out": "4:8:int4"})
    by_name, by_structure = plan_table(plan), plan_table(plan, model=model)
    # by name, the modules the plan leaves dense have no name to show
    assert by_name.drop(columns="module").equals(by_structure.drop(columns="module"))
    named = by_name["module"] != ""
    assert by_name.loc[named, "module"].equals(by_structure.loc[named, "module"]) and named.sum() == len(plan)


def test_plan_table_cells():
    plan = CompressionPlan({"bert.encoder.layer.1.attention.self.query": "2:4:int8",
                            "bert.encoder.layer.0.output.dense": "1:4:int4"})
    table = plan_table(plan)
    assert len(table) == 2 * len(COMPONENTS)  # layers 0..1, every component
    bits = plan_grid(table, "bits_per_weight")
    assert list(bits.columns) == list(COMPONENTS) and list(bits.index) == [0, 1]
    assert bits.at[1, "query"] == 4 and bits.at[0, "ffn_out"] == 1 and bits.at[0, "query"] == 32
    specs = plan_grid(table, "spec")
    assert specs.at[1, "query"] == "2:4:int8" and specs.at[1, "key"] == "dense"
    assert len(plan_table(plan, num_layers=4)) == 4 * len(COMPONENTS)


def test_a_fused_model_places_its_cells_by_name_and_by_structure():
    from tests.conftest import tiny_modernbert

    model = tiny_modernbert()
    plan = CompressionPlan.by_component(model, {"qkv": "2:4:int4", "ffn_in": "2:4:int8"})
    by_name, by_structure = plan_table(plan), plan_table(plan, model=model)
    assert by_name.drop(columns="module").equals(by_structure.drop(columns="module"))
    specs = plan_grid(by_name, "spec")
    assert list(specs.columns) == list(FUSED_COMPONENTS) and list(specs.index) == [0, 1]
    assert specs.loc[0].tolist() == ["2:4:int4", "dense", "2:4:int8", "dense"]


def test_plan_of_reads_every_form(tmp_path):
    plan = CompressionPlan({"bert.encoder.layer.0.attention.self.query": "2:4:int8"})
    plan.save(tmp_path / "p.json")
    import pandas as pd

    for source in (plan, plan.to_dict(), tmp_path / "p.json", str(tmp_path / "p.json"),
                   pd.Series({"plan_json": plan.to_json()})):
        assert plan_of(source) == plan
    with pytest.raises(NxmiError, match="cannot read a plan from a int"):
        plan_of(3)
