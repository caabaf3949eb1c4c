"""Shared fixtures: a tiny random BERT, a tiny local tokenizer, synthetic GLUE tables."""

import os
import random
from pathlib import Path

import datasets
import pandas as pd

import pytest
import torch
from transformers import BertTokenizerFast

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


def tiny_modernbert(seed: int = 0, **overrides):
    """A tiny random ModernBERT: per block a fused QKV matrix, the attention output, a gated FFN
    input (gate and up in one matrix) and the FFN output. Skips the test on a transformers
    without ModernBERT (before 4.48)."""
    import transformers

    if not hasattr(transformers, "ModernBertConfig"):
        pytest.skip(f"transformers {transformers.__version__} has no ModernBERT (added in 4.48)")
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    kwargs = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, local_attention=8, num_labels=2,
                  pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return ModernBertForSequenceClassification(ModernBertConfig(**kwargs)).eval()


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


# The hub `glue` schema per task, written out here independently of the registry under test:
# (text columns, label kind, split names).
HUB_SCHEMA: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "cola": (("sentence",), "binary", ("train", "validation")),
    "sst2": (("sentence",), "binary", ("train", "validation")),
    "mrpc": (("sentence1", "sentence2"), "binary", ("train", "validation")),
    "qqp": (("question1", "question2"), "binary", ("train", "validation")),
    "stsb": (("sentence1", "sentence2"), "score", ("train", "validation")),
    "mnli": (
        ("premise", "hypothesis"),
        "three",
        ("train", "validation_matched", "validation_mismatched"),
    ),
    "qnli": (("question", "sentence"), "binary", ("train", "validation")),
    "rte": (("sentence1", "sentence2"), "binary", ("train", "validation")),
    "wnli": (("sentence1", "sentence2"), "binary", ("train", "validation")),
}

# Rows per split in the synthetic tables; distinct so a count also identifies the split.
SPLIT_ROWS = {"train": 40, "validation": 13, "validation_matched": 11, "validation_mismatched": 9}

WORDS = (
    "the a cat dog sat on mat ran fast slow red blue green big small old new house tree "
    "car road city river man woman child bird fish eats sees likes is was not very good bad "
    "and or but with from to of in"
).split()
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="session", autouse=True)
def isolated_datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the Arrow files `datasets` writes for each temporary table out of the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))
        yield


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    """A word-level BERT tokenizer over ``WORDS``: one token per word, no download."""
    vocab = tmp_path_factory.mktemp("tokenizer") / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n")
    # transformers 5 names the argument `vocab`, 4.x `vocab_file`; each ignores the other
    return BertTokenizerFast(vocab=str(vocab), vocab_file=str(vocab), do_lower_case=True)


def _sentence(rng: random.Random) -> str:
    # Lengths 1..20 words, so max_length=8 truncates some rows and batches differ in length.
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))


def write_synthetic_task(root: Path, task: str, seed: int = 0) -> Path:
    """Write ``<root>/<task>/<split>.parquet`` in the hub schema; return the task directory."""
    text_columns, label_kind, splits = HUB_SCHEMA[task]
    rng = random.Random(f"{task}-{seed}")
    task_dir = root / task
    task_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        n = SPLIT_ROWS[split]
        table = {column: [_sentence(rng) for _ in range(n)] for column in text_columns}
        if label_kind == "score":
            table["label"] = [round(rng.uniform(0.0, 5.0), 2) for _ in range(n)]
        else:
            num_classes = 3 if label_kind == "three" else 2
            table["label"] = [i % num_classes for i in range(n)]
        table["idx"] = list(range(n))
        pd.DataFrame(table).to_parquet(task_dir / f"{split}.parquet", index=False)
    return task_dir


@pytest.fixture(scope="session")
def synthetic_glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GLUE data directory with synthetic tables for every task."""
    root = tmp_path_factory.mktemp("glue")
    for task in HUB_SCHEMA:
        write_synthetic_task(root, task)
    return root


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny BERT with the tiny tokenizer: a local model directory for trials and the CLI."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def module_ray():
    """An embedded 2-CPU Ray for the tests of one module (skipped where Ray is not installed)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
