import pytest
import torch
from torch import nn

from nxmiformer.compression import (
    CompressionPlan, LayerSpec, compress_, compressed_modules, compressible_modules,
    current_plan, fake_quantize, harden_, nm_mask, quantize_to_int, to_dense_,
)
from nxmiformer.compression.quant import projection_scales
from tests.conftest import tiny_bert

SPECS = ["2:4:int8", "2:4:int4", "4:8:int4", "1:4:int8", "dense:int8", "2:4:fp16", "2:4", "2:4:int8:a8", "dense:int4:g16",
         "2:4:int4:max", "2:4:int4:mse", "2:4:int4:lsq", "1:4:int2:mse", "dense:int4:g16:mse", "2:4:int8:gtensor:mse"]


def reference_weight(w, spec: LayerSpec):
    """Independent composition: mask from the dense weight, then per-row quantization with the
    spec's scale method (max-abs, or the MSE-fitted clip for mse/lsq before hardening)."""
    if spec.is_sparse:
        w = w * nm_mask(w, spec.n, spec.m)
    if spec.is_integer:
        scale = projection_scales(w, spec.bits, spec.group_size, spec.scale_method)
        w = fake_quantize(w, spec.bits, scale=scale, group_size=spec.group_size)
    elif spec.bits == 16:
        w = w.half().float()
    return w


@pytest.mark.parametrize("spec", SPECS)
def test_wrapped_forward_uses_masked_quantized_weight(spec, tiny_batch):
    spec = LayerSpec.parse(spec)
    model = tiny_bert()
    reference = tiny_bert()
    with torch.no_grad():
        for cm in compressible_modules(reference):
            cm.module.weight.copy_(reference_weight(cm.module.weight, spec))
    compress_(model, CompressionPlan.uniform(model, spec))
    assert len(compressed_modules(model)) == 12
    out = model(**tiny_batch).logits
    if spec.act_bits is None:
        torch.testing.assert_close(out, reference(**tiny_batch).logits, rtol=1e-4, atol=1e-5)
    else:  # activation rounding perturbs the logits a little, not a lot
        assert (out - reference(**tiny_batch).logits).abs().max() < 0.05


@pytest.mark.parametrize("spec", ["2:4:int8", "4:8:int4", "1:4:int2", "dense:int4", "2:4:int4:mse", "2:4:int4:lsq",
                                  "1:4:int2:lsq", "2:4:int4:max", "dense:int4:g16:lsq"])
def test_harden_is_exactly_nm_and_on_grid(spec, tiny_batch):
    spec = LayerSpec.parse(spec)
    model = tiny_bert()
    compress_(model, CompressionPlan.uniform(model, spec))
    before = model(**tiny_batch).logits.detach()
    harden_(model)
    after = model(**tiny_batch).logits.detach()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)  # projection was already the forward
    for module in compressed_modules(model).values():
        w = module.weight.detach()
        groups = (w != 0).reshape(w.shape[0], -1, spec.m).sum(-1)
        assert torch.all(groups <= spec.n)
        q, scale = quantize_to_int(w, spec.bits, spec.group_size)
        torch.testing.assert_close(q.float() * scale[:, None], w, rtol=0, atol=1e-6)


def test_hardened_mask_is_frozen_and_blocks_gradient(tiny_batch):
    model = tiny_bert()
    compress_(model, CompressionPlan.uniform(model, "2:4:int8"))
    harden_(model)
    module = next(iter(compressed_modules(model).values()))
    mask = module.mask.clone()
    model.train()
    model(**tiny_batch, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    assert torch.all(module.weight.grad[~mask] == 0)
    assert module.weight.grad[mask].abs().sum() > 0
    with torch.no_grad():  # pruned weights that drift (e.g. Adam momentum) stay out of the forward
        module.weight[~mask] = 5.0
    assert torch.equal(module.effective_weight() != 0, mask & (module.effective_weight() != 0))
    assert torch.equal(module.mask, mask)


def test_soft_phase_gradient_is_straight_through(tiny_batch):
    model = tiny_bert()
    compress_(model, CompressionPlan.uniform(model, "2:4:int8"))
    model.train()
    model(**tiny_batch, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    module = next(iter(compressed_modules(model).values()))
    pruned = ~nm_mask(module.weight, 2, 4)
    assert module.weight.grad[pruned].abs().sum() > 0  # pruned weights can come back


def test_to_dense_round_trips_through_save_pretrained(tmp_path, tiny_batch):
    from transformers import BertForSequenceClassification

    model = tiny_bert()
    plan = CompressionPlan.by_component(model, {"query": "2:4:int4", "ffn_in": "4:8:int8", "value": "dense:int8"})
    compress_(model, plan)
    harden_(model)
    assert current_plan(model) == plan
    logits = model(**tiny_batch).logits.detach()
    to_dense_(model)
    assert not compressed_modules(model)
    assert all(type(cm.module) is nn.Linear for cm in compressible_modules(model))
    model.save_pretrained(tmp_path)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**tiny_batch).logits, logits, rtol=1e-5, atol=1e-6)


def test_wrapper_keeps_parameters_and_state_dict_keys():
    model = tiny_bert()
    keys = set(model.state_dict())
    params = {id(p) for p in model.parameters()}
    compress_(model, CompressionPlan.uniform(model, "2:4:int8"))
    assert set(model.state_dict()) == keys
    assert {id(p) for p in model.parameters()} == params
    assert all(isinstance(m, nn.Linear) for m in compressed_modules(model).values())


def test_recompress_applies_exactly_the_new_plan():
    model = tiny_bert()
    names = [cm.name for cm in compressible_modules(model)]
    compress_(model, CompressionPlan.uniform(model, "2:4:int8"))
    compress_(model, CompressionPlan({names[0]: "4:8:int4", names[1]: "dense"}))
    wrapped = compressed_modules(model)
    assert str(wrapped[names[0]].spec) == "4:8:int4"
    assert names[1] not in wrapped and isinstance(model.get_submodule(names[1]), nn.Linear)
    # the model now carries exactly the new plan: modules it does not name are dense again
    assert set(wrapped) == {names[0]}
    assert current_plan(model) == CompressionPlan({names[0]: "4:8:int4"})
