"""Int8 weight-only serving of hardened models with PyTorch's CPU kernel."""

from __future__ import annotations

import pytest
import torch

from nxmiformer.compression import CompressionPlan, compress_, harden_
from nxmiformer.export.serve import Int8WeightOnlyLinear, supports_int8_weight_only, to_int8_weight_only_
from nxmiformer.compression.spec import LayerSpec
from nxmiformer.errors import NxmiError
from tests.conftest import tiny_bert

CASES = [  # plan, modules swapped out of 12
    ("2:4:int8", 12),
    ("4:8:int8", 12),
    ("dense:int8", 12),
    ("2:4:int4", 0),
    ("2:4:int8:g4", 0),
    ("2:4:int8:a8", 0),
    ({"query": "2:4:int8", "ffn_in": "dense:int8", "ffn_out": "2:4:int4"}, 4),
]


@pytest.mark.parametrize("plan,swapped", CASES, ids=[str(c[0]) for c in CASES])
def test_int8_serving_matches_the_hardened_model(plan, swapped):
    model = tiny_bert()
    plan = (CompressionPlan.by_component(model, plan) if isinstance(plan, dict)
            else CompressionPlan.uniform(model, LayerSpec.parse(plan)))
    compress_(model, plan)
    harden_(model)
    ids = torch.randint(5, 120, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        names = to_int8_weight_only_(model)
        served = model(input_ids=ids).logits
    assert len(names) == swapped
    assert all(isinstance(model.get_submodule(n), Int8WeightOnlyLinear) for n in names)
    for name in names:
        assert model.get_submodule(name).q.dtype == torch.int8
    torch.testing.assert_close(served, expected, atol=1e-4, rtol=1e-4)


def test_spec_support():
    assert supports_int8_weight_only(LayerSpec.parse("2:4:int8"))
    assert not supports_int8_weight_only(LayerSpec.parse("2:4:fp16"))
    assert not supports_int8_weight_only(LayerSpec.parse("dense:int4"))


def test_unhardened_module_is_refused():
    model = tiny_bert()
    compress_(model, CompressionPlan.uniform(model, "2:4:int8"))
    module = model.bert.encoder.layer[0].attention.self.query
    with pytest.raises(NxmiError, match="harden"):
        Int8WeightOnlyLinear.from_compressed(module)
    assert to_int8_weight_only_(model) == []  # soft modules are left alone
