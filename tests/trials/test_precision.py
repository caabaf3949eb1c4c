"""bf16 autocast of the training forward: matmuls in bf16, weights and fake-quant in fp32."""

from __future__ import annotations

import pytest
import torch

from nxmiformer.compression import CompressionPlan, compress_, compressed_modules, harden_
from nxmiformer.errors import NxmiError
from nxmiformer.trials import DenseConfig, TrialConfig
from nxmiformer.trials.loop import train_step
from tests.conftest import tiny_bert


def batch(rows=4, length=8, vocab=30):
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, vocab, (rows, length), generator=g),
            "attention_mask": torch.ones(rows, length, dtype=torch.long),
            "labels": torch.tensor([0, 1] * (rows // 2))}


@pytest.mark.parametrize("precision,matmul_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_training_forward_runs_its_matmuls_at_the_precision_asked(precision, matmul_dtype):
    torch.manual_seed(0)
    model = tiny_bert(vocab_size=30)
    compress_(model, CompressionPlan.uniform(model, "2:4:int8"))
    harden_(model)
    seen, weights = [], []

    def record(module, args, out):
        seen.append(out.dtype)
        weights.append(module.effective_weight().dtype)

    for module in compressed_modules(model).values():
        module.register_forward_hook(record)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loss = train_step(model, batch(), optimizer, schedule, regression=False, precision=precision)
    assert set(seen) == {matmul_dtype}
    assert set(weights) == {torch.float32}  # fake-quant in fp32 under autocast too
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(loss))
    for module in compressed_modules(model).values():  # the hardened constraint survives the bf16 step
        w = module.weight.detach().reshape(-1, 4)
        assert ((w != 0).sum(dim=1) <= 2).all()


def test_bf16_and_fp32_losses_agree_to_bf16_precision():
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = tiny_bert(vocab_size=30)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        losses[precision] = train_step(model, batch(), optimizer, schedule, regression=False, precision=precision)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2) and losses["bf16"] != losses["fp32"]


@pytest.mark.parametrize("make", [lambda p: TrialConfig(precision=p), lambda p: DenseConfig(precision=p)])
def test_unknown_precision_is_refused(make):
    with pytest.raises(NxmiError, match="precision must be one of fp32, bf16, got 'fp16'"):
        make("fp16")


def test_fp32_keeps_the_dense_cache_key_and_bf16_changes_it():
    from nxmiformer.trials import DataConfig
    from nxmiformer.trials.dense import dense_cache_key

    data = DataConfig(task="sst2")
    assert dense_cache_key("f", data, DenseConfig()) == dense_cache_key("f", data, DenseConfig(device="cpu"))
    assert dense_cache_key("f", data, DenseConfig(precision="bf16")) != dense_cache_key("f", data, DenseConfig())
