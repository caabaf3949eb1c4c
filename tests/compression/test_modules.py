import pytest
import torch
from transformers import (
    BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification,
    ElectraConfig, ElectraForSequenceClassification, MPNetConfig, MPNetForSequenceClassification,
    RobertaConfig, RobertaForSequenceClassification,
)

from nxmiformer.compression import COMPONENTS, compressible_modules

SMALL = dict(vocab_size=100, num_attention_heads=2, max_position_embeddings=64)

ARCHITECTURES = [
    ("bert", BertForSequenceClassification, BertConfig(hidden_size=32, num_hidden_layers=3, intermediate_size=64, **SMALL), 3),
    ("roberta", RobertaForSequenceClassification, RobertaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=48, **SMALL), 2),
    ("electra", ElectraForSequenceClassification, ElectraConfig(hidden_size=32, embedding_size=16, num_hidden_layers=2, intermediate_size=64, **SMALL), 2),
    ("mpnet", MPNetForSequenceClassification, MPNetConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **SMALL), 2),
    ("distilbert", DistilBertForSequenceClassification, DistilBertConfig(dim=32, n_layers=4, n_heads=2, hidden_dim=64, vocab_size=100), 4),
    # intermediate == hidden: shapes cannot tell attention from FFN, registration order does
    ("bert-square-ffn", BertForSequenceClassification, BertConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=32, **SMALL), 1),
]


@pytest.mark.parametrize("label,cls,config,layers", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_finds_six_linears_per_block_by_structure(label, cls, config, layers):
    torch.manual_seed(0)
    model = cls(config)
    found = compressible_modules(model)
    assert len(found) == 6 * layers
    assert [cm.component for cm in found] == list(COMPONENTS) * layers
    assert [cm.layer for cm in found] == [i for i in range(layers) for _ in range(6)]
    names = [cm.name for cm in found]
    assert not any(word in n for n in names for word in ("embed", "pooler", "classifier", "pre_classifier"))
    hidden = found[0].in_features
    for cm in found:
        assert cm.module is model.get_submodule(cm.name)
        if cm.component == "ffn_in":
            assert (cm.in_features, cm.out_features) == (hidden, config.to_dict().get("intermediate_size", config.to_dict().get("hidden_dim")))
        if cm.component in ("attn_out", "ffn_out"):
            assert cm.out_features == hidden


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="no encoder blocks"):
        compressible_modules(torch.nn.Sequential(torch.nn.Linear(4, 4)))
