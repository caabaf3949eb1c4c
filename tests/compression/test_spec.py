import json

import pytest
import torch

from nxmiformer.compression import COMPONENTS, CompressionPlan, LayerSpec, compressible_modules
from tests.conftest import tiny_bert

ROUND_TRIP = [
    ("2:4:int8", LayerSpec(2, 4, 8)),
    ("4:8:int4", LayerSpec(4, 8, 4)),
    ("dense:int8", LayerSpec(1, 1, 8)),
    ("2:4:fp16", LayerSpec(2, 4, 16)),
    ("dense", LayerSpec()),
    ("2:4", LayerSpec(2, 4, 32)),
    ("1:4:int4", LayerSpec(1, 4, 4)),
    ("2:4:int8:a8", LayerSpec(2, 4, 8, act_bits=8)),
    ("dense:int4:g64", LayerSpec(1, 1, 4, group_size=64)),
    ("2:4:int4:gtensor", LayerSpec(2, 4, 4, group_size=-1)),
    ("dense:fp16", LayerSpec(1, 1, 16)),
    ("2:4:int4:lsq", LayerSpec(2, 4, 4, scale="lsq")),
    ("1:4:int2:mse", LayerSpec(1, 4, 2, scale="mse")),
    ("2:4:int8:max", LayerSpec(2, 4, 8, scale="max")),
    ("dense:int4:a8:g64:mse", LayerSpec(1, 1, 4, act_bits=8, group_size=64, scale="mse")),
]


@pytest.mark.parametrize("text,method", [("2:4:int4", "lsq"), ("2:4:int2", "lsq"), ("2:4:int8", "lsq"),
                                         ("2:4:int4:max", "max"), ("2:4:int8:lsq", "lsq"), ("2:4:fp16", None),
                                         ("dense", None)])
def test_scale_method_defaults_per_bit_width(text, method):
    assert LayerSpec.parse(text).scale_method == method


@pytest.mark.parametrize("text,spec", ROUND_TRIP)
def test_string_round_trip(text, spec):
    assert LayerSpec.parse(text) == spec
    assert str(spec) == text
    assert LayerSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("alias,canonical", [("4:4:int8", "dense:int8"), ("DENSE:FP32", "dense"), (" 2:4:int8 ", "2:4:int8")])
def test_aliases_normalise(alias, canonical):
    assert str(LayerSpec.parse(alias)) == canonical


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        LayerSpec(2, 4, 8).bits = 4


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(n=3, m=2, bits=8), ["n=3", "m=2"]),
        (dict(n=0, m=4, bits=8), ["n=0"]),
        (dict(n=2, m=64, bits=8), ["m=64"]),
        (dict(n=2, m=4, bits=9), ["bits=9", "2..8"]),
        (dict(n=2, m=4, bits=1), ["bits=1"]),
        (dict(n=2, m=4, bits=16, act_bits=8), ["act_bits=8", "bits=16"]),
        (dict(n=2, m=4, bits=8, act_bits=12), ["act_bits=12"]),
        (dict(n=2, m=4, bits=32, group_size=64), ["group_size=64"]),
        (dict(n=2, m=4, bits=8, group_size=0), ["group_size"]),
        (dict(n=2, m=4, bits=8, scale="minmax"), ["scale='minmax'", "max, mse, lsq"]),
        (dict(n=2, m=4, bits=16, scale="mse"), ["scale=mse", "bits=16"]),
    ],
)
def test_bad_specs_name_values(kwargs, words):
    with pytest.raises(ValueError) as err:
        LayerSpec(**kwargs)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("text", ["", "2:", "x:4:int8", "2:4:int", "2:4:bf16", "2:4:int8:zz", "dense:int8:int4", "2:4:int8:lsqq"])
def test_malformed_strings(text):
    with pytest.raises(ValueError):
        LayerSpec.parse(text)


def test_uniform_and_by_component_plans():
    model = tiny_bert()
    modules = compressible_modules(model)
    plan = CompressionPlan.uniform(model, "2:4:int8")
    assert len(plan) == len(modules) == 12
    assert set(plan.values()) == {LayerSpec(2, 4, 8)}
    plan = CompressionPlan.by_component(model, {"query": "2:4:int4", "ffn_in": "4:8:int8"})
    assert len(plan) == 4
    for cm in modules:
        expected = {"query": "2:4:int4", "ffn_in": "4:8:int8"}.get(cm.component, "dense")
        assert str(plan.spec_for(cm.name)) == expected
    with pytest.raises(ValueError, match="querry"):
        CompressionPlan.by_component(model, {"querry": "2:4"})


def test_json_round_trip_and_versions(tmp_path):
    model = tiny_bert()
    plan = CompressionPlan.by_component(model, dict.fromkeys(COMPONENTS, "2:4:int8") | {"ffn_out": "dense:int4"})
    plan.meta["task"] = "sst2"
    again = CompressionPlan.from_json(plan.to_json())
    assert again == plan and again.meta == {"task": "sst2"}
    path = plan.save(tmp_path / "plan.json")
    assert CompressionPlan.load(path) == plan
    data = json.loads(path.read_text())
    assert data["schema"] == "nxmiformer.plan" and data["version"] == 1

    with pytest.raises(ValueError, match="version 99"):
        CompressionPlan.from_dict(data | {"version": 99})
    with pytest.raises(ValueError, match="schema"):
        CompressionPlan.from_dict({"modules": {}})
    with pytest.raises(ValueError, match="malformed plan JSON"):
        CompressionPlan.from_json("{not json")
    with pytest.raises(ValueError, match="not found"):
        CompressionPlan.load(tmp_path / "missing.json")


def test_validate_lists_closest_names():
    model = tiny_bert()
    plan = CompressionPlan({"bert.encoder.layer.0.attention.self.querry": "2:4:int8"})
    with pytest.raises(ValueError) as err:
        plan.validate(model)
    assert "querry" in str(err.value)
    assert "bert.encoder.layer.0.attention.self.query" in str(err.value)
    # classifier and pooler are not compressible
    with pytest.raises(ValueError, match="classifier"):
        CompressionPlan({"classifier": "2:4:int8"}).validate(model)


def test_validate_rejects_m_not_dividing_width():
    model = tiny_bert()  # widths 32 and 64
    name = compressible_modules(model)[0].name
    with pytest.raises(ValueError, match="m=3"):
        CompressionPlan({name: "1:3:int8"}).validate(model)


# ----------------------------------------------------------------------------- by_component: fused layouts, errors

# (label, component specs, the name endings in each block whose weights change)
MODERNBERT_PLANS = [
    ("qkv", {"qkv": "2:4:int4"}, {"attn.Wqkv"}),
    ("qkv+ffn_in", {"qkv": "2:4:int4", "ffn_in": "2:4:int8"}, {"attn.Wqkv", "mlp.Wi"}),
    ("attn_out+ffn_out", {"attn_out": "dense:int8", "ffn_out": "4:8:int4"}, {"attn.Wo", "mlp.Wo"}),
    ("a dense one stays", {"ffn_in": "2:4:int8", "ffn_out": "dense"}, {"mlp.Wi"}),
    ("all", {"qkv": "2:4:int8", "attn_out": "2:4:int8", "ffn_in": "2:4:int8", "ffn_out": "2:4:int8"},
     {"attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"}),
]


@pytest.mark.parametrize("label,specs,changed", MODERNBERT_PLANS, ids=[c[0] for c in MODERNBERT_PLANS])
def test_by_component_on_a_fused_model_compresses_the_right_matrices(label, specs, changed):
    from nxmiformer.compression import compress_, harden_
    from tests.conftest import tiny_modernbert

    model = tiny_modernbert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = CompressionPlan.by_component(model, specs).validate(model)
    harden_(compress_(model, plan))
    after = model.state_dict()
    differ = {k.removesuffix(".weight") for k in before if not torch.equal(before[k], after[k])}
    expected = {f"model.layers.{layer}.{ending}" for layer in range(2) for ending in changed}
    assert differ == expected
    for name in differ:  # N:M along the input dimension, per row of the fused matrix too
        spec = plan[name]
        groups = (after[f"{name}.weight"] != 0).reshape(after[f"{name}.weight"].shape[0], -1, spec.m).sum(-1)
        assert bool((groups <= spec.n).all())


# (label, model, component specs, words the one-line message holds)
BAD_COMPONENTS = [
    ("query on fused", "modernbert", {"query": "2:4:int8"},
     ["'query'", "match no module of ModernBertForSequenceClassification",
      "its components: qkv, attn_out, ffn_in, ffn_out", "give 'qkv' one spec"]),
    ("key and value on fused", "modernbert", {"key": "2:4:int8", "value": "2:4:int8", "ffn_in": "2:4:int8"},
     ["'key', 'value'", "qkv"]),
    ("qkv on separate", "bert", {"qkv": "2:4:int8"},
     ["'qkv'", "BertForSequenceClassification", "its components: query, key, value, attn_out, ffn_in, ffn_out",
      "give them their own specs"]),
    ("other on bert", "bert", {"other": "2:4:int8"}, ["'other'", "its components: query"]),
    ("typo", "modernbert", {"ffn_inn": "2:4:int8"}, ["unknown component(s) ['ffn_inn']", "allowed: query, key, value, qkv"]),
    ("nothing named", "bert", {}, ["compresses nothing", "names no module"]),
    ("all dense", "modernbert", {"qkv": "dense", "ffn_in": "4:4"}, ["compresses nothing", "dense fp32", "qkv, ffn_in"]),
]


@pytest.mark.parametrize("label,family,specs,words", BAD_COMPONENTS, ids=[c[0] for c in BAD_COMPONENTS])
def test_by_component_never_returns_a_silent_no_op(label, family, specs, words):
    from nxmiformer.errors import NxmiError
    from tests.conftest import tiny_modernbert

    model = tiny_modernbert() if family == "modernbert" else tiny_bert()
    with pytest.raises(NxmiError) as err:
        CompressionPlan.by_component(model, specs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("plan,compresses", [({}, False), ({"a": "dense"}, False), ({"a": "dense", "b": "dense:fp16"}, True),
                                              ({"a": "2:4"}, True)])
def test_check_compresses(plan, compresses):
    plan = CompressionPlan(plan)
    if compresses:
        assert plan.check_compresses() is plan
    else:
        with pytest.raises(ValueError, match="the plan compresses nothing"):
            plan.check_compresses()
