"""Every tested encoder family end to end, on a tiny random model and synthetic MRPC rows.

One case per family: ``nxmi compress`` lists the family's component roles, a two-trial
``nxmi search`` (one Ray session shared by all cases), ``nxmi export`` of its plan, a few steps of
``nxmi train``, ``nxmi pack`` / ``nxmi unpack`` (the weights come back), and ``nxmi onnx`` with
its comparison with the PyTorch model (the export's check batch, and ``nxmi evaluate`` of both on
the validation rows). Select these with ``pytest -m families``; they run in the default run too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertTokenizerFast

from nxmiformer.cli import main
from nxmiformer.compression import COMPONENTS, FUSED_COMPONENTS, CompressionPlan, compressible_modules
from nxmiformer.export import OnnxClassifier
from nxmiformer.search import SearchConfig, run_search
from tests.conftest import SPECIAL_TOKENS, WORDS, write_synthetic_task

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.families

VOCAB = len(SPECIAL_TOKENS) + len(WORDS)
# token ids of the tiny tokenizer (conftest.SPECIAL_TOKENS): [PAD] 0, [CLS] 2, [SEP] 3
IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
SMALL = dict(vocab_size=VOCAB, num_attention_heads=2, max_position_embeddings=64, num_labels=2)
PAIR_TYPES = ["input_ids", "token_type_ids", "attention_mask"]  # what the family's own tokenizer returns
NO_TYPES = ["input_ids", "attention_mask"]
MENU = "dense:int8,2:4:int8,2:4:int4"
TARGET = 0.8  # between dense:int8 (75%) and 2:4:int4 (93.75%): the search mixes options
MAX_LOGIT_DIFF = 0.05  # int8 activations in the ONNX graph vs fp32 in PyTorch, tiny random logits
WEIGHT_RTOL = 1e-6  # an unpacked weight is codes x scales: a float rounding from the trained one
METRIC_TOL = 0.1  # accuracy / F1 of the ONNX graph and the PyTorch model on 13 validation rows


@dataclass(frozen=True)
class Family:
    name: str
    classifier: str  # transformers class
    config: str
    kwargs: dict
    inputs: list  # the model input names its tokenizer returns
    components: tuple = COMPONENTS

    def build(self):
        import transformers

        if not hasattr(transformers, self.classifier):
            pytest.skip(f"transformers {transformers.__version__} has no {self.classifier}")
        torch.manual_seed(0)
        config = getattr(transformers, self.config)(**self.kwargs)
        return getattr(transformers, self.classifier)(config).eval()


FAMILIES = [
    Family("bert", "BertForSequenceClassification", "BertConfig",
           dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **SMALL), PAIR_TYPES),
    Family("roberta", "RobertaForSequenceClassification", "RobertaConfig",
           dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **SMALL, **IDS), NO_TYPES),
    Family("distilbert", "DistilBertForSequenceClassification", "DistilBertConfig",
           dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=VOCAB, max_position_embeddings=64,
                num_labels=2, pad_token_id=0), NO_TYPES),
    Family("electra", "ElectraForSequenceClassification", "ElectraConfig",
           dict(hidden_size=32, embedding_size=16, num_hidden_layers=2, intermediate_size=64, **SMALL), PAIR_TYPES),
    Family("mpnet", "MPNetForSequenceClassification", "MPNetConfig",
           dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **SMALL, **IDS), NO_TYPES),
    # DeBERTa-v3's layout (shared attention keys, relative positions in buckets, no token type
    # embeddings: its tokenizer's token_type_ids are unused, and the ONNX graph drops them)
    Family("deberta-v2", "DebertaV2ForSequenceClassification", "DebertaV2Config",
           dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, pooler_hidden_size=32,
                relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
                share_att_key=True, position_biased_input=False, type_vocab_size=0, norm_rel_ebd="layer_norm",
                **SMALL, pad_token_id=0), PAIR_TYPES),
    # fused QKV, gated FFN input, rotary positions, alternating global and sliding-window attention
    Family("modernbert", "ModernBertForSequenceClassification", "ModernBertConfig",
           dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, local_attention=8,
                cls_token_id=2, sep_token_id=3, **SMALL, **IDS), NO_TYPES, FUSED_COMPONENTS),
]


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    write_synthetic_task(root, "mrpc")
    return root


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n")
    return path


def _run(capsys, *argv) -> str:
    """``nxmi argv`` in process: its stdout; a failure shows its one-line error."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"nxmi {argv[0]} exited {code}: {err.strip()}"
    return out


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family_end_to_end(family, module_ray, glue, vocab_file, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model = family.build()
    model.save_pretrained(model_dir)
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), vocab_file=str(vocab_file), do_lower_case=True,
                                  model_input_names=family.inputs)
    tokenizer.save_pretrained(model_dir)
    found = compressible_modules(model)
    assert [cm.component for cm in found] == list(family.components) * 2

    # compress: every encoder linear, each with its role
    out = _run(capsys, "compress", "--model", model_dir, "--plan", "2:4:int8")
    table = [line.split() for line in out.splitlines()[1:1 + len(found)]]
    assert [(int(row[0]), row[1]) for row in table] == [(cm.layer, cm.component) for cm in found]
    assert "other" not in out and f"modules: {len(found)}" in out

    # a two-trial search (its one-shot profile replays cached blocks), its plan exported; through the
    # Python API, which also sets what nxmi search leaves to its defaults (no ASHA: both trials finish)
    data = ["--task", "mrpc", "--data-dir", glue, "--max-length", 16, "--train-size", 24, "--eval-size", 13]
    search = tmp_path / "search"
    run_search(SearchConfig(out=str(search), model=str(model_dir), task="mrpc", data_dir=str(glue), max_length=16,
                            train_size=24, eval_size=13, target_ratio=TARGET, trials=2, steps=4, batch_size=8,
                            lr=1e-3, options=MENU, calib_size=8, selection_size=8, dense_epochs=0.5,
                            profile_workers=0, cache_dir=str(tmp_path / "cache"), concurrency=2, asha=False,
                            oneshot_profile=True, device="cpu"), progress=False)
    results = pd.read_parquet(search / "results.parquet")
    assert len(results) == 2 and set(results["status"]) == {"completed"}
    assert (results["ratio_paper"] >= TARGET - 1e-9).all()
    candidates = pd.read_parquet(search / "candidates.parquet")
    grid = [CompressionPlan.from_json(j) for j in candidates.loc[candidates["kind"] == "grid", "plan_json"]]
    assert grid
    for plan in grid:  # one option per component type of the family, in every layer
        options = {}
        for cm in found:
            options.setdefault(cm.component, set()).add(str(plan.spec_for(cm.name)))
        assert set(options) == set(family.components) and all(len(o) == 1 for o in options.values())
    _run(capsys, "export", "--results", search, "--target-ratio", TARGET, "--out", tmp_path / "plan.json")
    plan = CompressionPlan.load(tmp_path / "plan.json").validate(model)
    assert plan and {str(spec) for spec in plan.values()} <= set(MENU.split(","))

    # a few training steps of the exported plan from the search's warm start
    dense = json.loads((search / "search.json").read_text())["provenance"]["dense_path"]
    trained = tmp_path / "trained"
    _run(capsys, "train", "--plan", tmp_path / "plan.json", "--dense", dense, *data, "--steps", 3,
         "--batch-size", 8, "--lr", 1e-3, "--device", "cpu", "--out", trained)

    # pack and unpack: the trained weights come back (codes x scales: to float rounding)
    _run(capsys, "pack", "--model", trained, "--out", tmp_path / "packed")
    _run(capsys, "unpack", "--model", tmp_path / "packed", "--out", tmp_path / "unpacked")
    before, after = load_file(trained / "model.safetensors"), load_file(tmp_path / "unpacked" / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=WEIGHT_RTOL, atol=0, msg=key)

    # ONNX from the packed model, compared with the PyTorch model
    onnx_dir = tmp_path / "onnx"
    # int8 tables: every family's embeddings go through the decoding, within the logits tolerance; int4 tables of a
    # random tiny model move logits by about 0.1 (their cost on real models: bench/cpu_serving.py)
    _run(capsys, "onnx", "--model", tmp_path / "packed", "--out", onnx_dir, "--embeddings", "int8")
    report = json.loads((onnx_dir / "onnx.json").read_text())
    assert set(OnnxClassifier(onnx_dir).input_names) <= set(family.inputs)  # what the tokenizer gives
    assert len(report["int8_modules"]) == sum(spec.is_integer for spec in plan.values())
    assert report["check"]["max_logit_diff"] < MAX_LOGIT_DIFF and report["check"]["argmax_agreement"] >= 0.75
    evaluate = ["evaluate", "--task", "mrpc", "--data-dir", glue, "--max-length", 16, "--device", "cpu", "--json"]
    metrics = {where: json.loads(_run(capsys, *evaluate, "--model", where)) for where in (trained, onnx_dir)}
    for key in ("accuracy", "f1"):
        assert metrics[onnx_dir][key] == pytest.approx(metrics[trained][key], abs=METRIC_TOL), key


def test_an_architecture_the_exporter_cannot_trace_is_one_line(tmp_path, capsys, monkeypatch):
    """What the ONNX exporter cannot trace (an attention kernel, a shape it cannot make dynamic)
    ends ``nxmi onnx`` in one line that says so and what still works; nothing is written."""
    model_dir = tmp_path / "model"
    next(f for f in FAMILIES if f.name == "modernbert").build().save_pretrained(model_dir)
    assert main(["compress", "--model", str(model_dir), "--plan", "2:4:int8", "--out", str(tmp_path / "hard")]) == 0

    def untraceable(*args, **kwargs):
        raise RuntimeError("Could not export operator aten::_flash_attention_forward\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", untraceable)
    capsys.readouterr()
    assert main(["onnx", "--model", str(tmp_path / "hard"), "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "second line" not in err
    assert "cannot export ModernBertForSequenceClassification: Could not export operator" in err
    assert "still runs in PyTorch (nxmi evaluate --model DIR)" in err
    assert not (tmp_path / "onnx").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx")]
