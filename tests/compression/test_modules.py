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


def _deberta(**changes):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(hidden_size=32, num_hidden_layers=2, intermediate_size=64, pooler_hidden_size=32,
                             relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                             type_vocab_size=0, position_biased_input=False, **SMALL, **changes)
    return DebertaV2ForSequenceClassification(config)


def _modernbert(**changes):
    from tests.conftest import tiny_modernbert

    return tiny_modernbert(**changes)


# (label, model, roles of one block in registration order, (in, out) of each, name endings)
LAYOUTS = [
    ("modernbert", _modernbert, ["qkv", "attn_out", "ffn_in", "ffn_out"], [(32, 96), (32, 32), (32, 128), (64, 32)],
     ["attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"]),
    # other widths: 3 heads, an FFN narrower than the hidden width (its gated input still 2 x wider)
    ("modernbert-48-3-heads", lambda: _modernbert(hidden_size=48, num_attention_heads=3, intermediate_size=40),
     ["qkv", "attn_out", "ffn_in", "ffn_out"], [(48, 144), (48, 48), (48, 80), (40, 48)], None),
    # DeBERTa-v3 (keys shared with the relative positions): the standard six
    ("deberta-v3", lambda: _deberta(share_att_key=True), list(COMPONENTS), None,
     ["attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
      "attention.output.dense", "intermediate.dense", "output.dense"]),
    # DeBERTa-v2 with its own position projections: those are other, not a second key and query
    ("deberta-v2-pos-proj", lambda: _deberta(share_att_key=False),
     ["query", "key", "value", "other", "other", "attn_out", "ffn_in", "ffn_out"], None,
     ["attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
      "attention.self.pos_key_proj", "attention.self.pos_query_proj", "attention.output.dense",
      "intermediate.dense", "output.dense"]),
]


@pytest.mark.parametrize("label,build,roles,shapes,endings", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_fused_and_extra_linears_get_their_roles(label, build, roles, shapes, endings):
    torch.manual_seed(0)
    found = compressible_modules(build())
    assert [cm.component for cm in found] == roles * 2
    assert [cm.layer for cm in found] == [i for i in range(2) for _ in roles]
    block = [cm for cm in found if cm.layer == 0]
    if shapes is not None:
        assert [(cm.in_features, cm.out_features) for cm in block] == shapes
    if endings is not None:
        assert [cm.name.split(".0.", 1)[1] for cm in block] == endings
