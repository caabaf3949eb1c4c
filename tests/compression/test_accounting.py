import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from nxmiformer.compression import CompressionPlan, compression_ratio, module_bits, ratio_table, LayerSpec
from tests.conftest import tiny_bert


@pytest.fixture(scope="module")
def bert_base():
    # the real BERT-base shapes, on the meta device: no memory, no weights
    with torch.device("meta"):
        return BertForSequenceClassification(BertConfig())


# BERT-base encoder: 12 layers x (4 x 768x768 + 768x3072 + 3072x768) weights
PARAMS = 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # 84,934,656
ROWS = 12 * (4 * 768 + 3072 + 768)  # 82,944 output channels -> one 16-bit scale each
DENSE = 32 * PARAMS

# hand-computed bits per weight (paper) and (storage, before scales)
CASES = [
    # spec,        paper bits/w, storage bits/w (values + index), scales?
    ("2:4:int8", 0.5 * 8, 0.5 * 8 + 0.5 * 2, True),  # 87.5% paper
    ("2:4:int4", 0.5 * 4, 0.5 * 4 + 0.5 * 2, True),  # 93.75% paper
    ("4:8:int4", 0.5 * 4, 0.5 * 4 + 0.5 * 3, True),
    ("1:4:int8", 0.25 * 8, 0.25 * 8 + 0.25 * 2, True),
    ("2:8:int8", 0.25 * 8, 0.25 * 8 + 0.25 * 3, True),
    ("dense:int8", 8, 8, True),
    ("2:4:fp16", 8, 8 + 1, False),
    ("dense", 32, 32, False),
]


@pytest.mark.parametrize("spec,paper_bpw,storage_bpw,scales", CASES)
def test_bert_base_ratios_by_hand(bert_base, spec, paper_bpw, storage_bpw, scales):
    plan = CompressionPlan.uniform(bert_base, spec)
    paper = 1 - paper_bpw * PARAMS / DENSE
    storage = 1 - (storage_bpw * PARAMS + (16 * ROWS if scales else 0)) / DENSE
    assert compression_ratio(bert_base, plan, "paper") == pytest.approx(paper, abs=1e-12)
    assert compression_ratio(bert_base, plan, "storage") == pytest.approx(storage, abs=1e-12)


def test_headline_numbers(bert_base):
    assert compression_ratio(bert_base, CompressionPlan.uniform(bert_base, "2:4:int8")) == 0.875
    assert compression_ratio(bert_base, CompressionPlan.uniform(bert_base, "2:4:int4")) == 0.9375
    # 2:4 INT8 storage, written out: 5 bits/weight + 16 bits/row
    assert compression_ratio(bert_base, CompressionPlan.uniform(bert_base, "2:4:int8"), "storage") == pytest.approx(
        1 - (5 * 84_934_656 + 16 * 82_944) / (32 * 84_934_656), abs=1e-12
    )


def test_group_size_changes_scale_count():
    assert module_bits(LayerSpec(1, 1, 4), 768, 768, "storage") == 768 * 768 * 4 + 768 * 16
    assert module_bits(LayerSpec(1, 1, 4, group_size=128), 768, 768, "storage") == 768 * 768 * 4 + 6 * 16
    assert module_bits(LayerSpec(1, 1, 4, group_size=-1), 768, 768, "storage") == 768 * 768 * 4 + 16


def test_heterogeneous_plan_and_unplanned_modules_count_dense():
    model = tiny_bert()  # 2 layers of 4 x 32x32 + 32x64 + 64x32 = 8192 weights per layer
    names = [n for n in ratio_table(model, CompressionPlan())["module"]]
    plan = CompressionPlan({names[0]: "2:4:int8", names[4]: "dense:int4"})
    # paper: query 1024 w at 4 bits, ffn_in 2048 w at 4 bits; the rest 32 bits
    total = 2 * (4 * 32 * 32 + 2 * 32 * 64)
    compressed = 1024 * 4 + 2048 * 4 + (total - 1024 - 2048) * 32
    assert compression_ratio(model, plan) == pytest.approx(1 - compressed / (32 * total))
    table = ratio_table(model, plan)
    assert list(table.columns[:6]) == ["module", "layer", "component", "shape", "spec", "sparsity"]
    assert table["spec"].tolist().count("dense") == 10
    assert compression_ratio(model, CompressionPlan()) == 0.0


def test_unknown_convention():
    model = tiny_bert()
    with pytest.raises(ValueError, match="'bytes'.*paper, storage"):
        compression_ratio(model, CompressionPlan(), "bytes")
