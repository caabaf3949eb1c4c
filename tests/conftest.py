import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_bert(seed: int = 0, **overrides):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(**overrides))
    model.eval()
    return model


@pytest.fixture
def tiny_model():
    return tiny_bert()


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 120, (4, 12), generator=g)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@pytest.fixture
def glue_dir():
    if not GLUE_DIR.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE_DIR} (it sits beside the clone in CI)")
    return GLUE_DIR
