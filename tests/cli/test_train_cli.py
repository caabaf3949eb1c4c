"""nxmi finetune / train / evaluate on the tiny model and synthetic tables; one real MiniLM run."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nxmiformer.cli import main
from nxmiformer.compression import CompressionPlan, compressible_modules
from tests.conftest import tiny_bert


def _common(glue_dir, cache):
    return ["--task", "sst2", "--data-dir", str(glue_dir), "--max-length", "16", "--cache-dir", str(cache)]


def test_train_takes_steps_or_epochs_not_both(tiny_model_dir, synthetic_glue_dir, tmp_path, capsys):
    argv = ["train", "--plan", "2:4:int8", "--model", str(tiny_model_dir), *_common(synthetic_glue_dir, tmp_path),
            "--steps", "6", "--epochs", "2", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "--steps or --epochs, not both" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_finetune_train_evaluate_round_trip(tiny_model_dir, synthetic_glue_dir, tmp_path, capsys):
    common = _common(synthetic_glue_dir, tmp_path / "cache")
    assert main(["finetune", "--model", str(tiny_model_dir), *common, "--steps", "3", "--batch-size", "8",
                 "--out", str(tmp_path / "dense")]) == 0
    assert (tmp_path / "dense" / "dense.json").is_file()

    out = tmp_path / "trained"
    assert main(["train", "--plan", "2:4:int8", "--dense", str(tmp_path / "dense"), *common, "--steps", "6",
                 "--batch-size", "8", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"dense", "compressed", "retention", "ratio_paper", "ratio_storage", "wall_time"} <= set(metrics)
    assert metrics["ratio_paper"] == 0.875 and metrics["steps"] == 6
    assert CompressionPlan.load(out / "plan.json") == CompressionPlan.uniform(tiny_bert(), "2:4:int8")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    for cm in compressible_modules(model):
        w = cm.module.weight
        assert torch.all((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2)

    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--task", "sst2", "--data-dir", str(synthetic_glue_dir),
                 "--max-length", "16", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == pytest.approx(metrics["compressed"]["accuracy"])


def test_train_accepts_a_plan_file(tiny_model_dir, synthetic_glue_dir, tmp_path):
    plan = CompressionPlan.by_component(tiny_bert(), {"query": "2:4:int4", "ffn_in": "dense:int8"})
    plan.meta["source"] = "export"
    plan.save(tmp_path / "best_plan.json")
    assert main(["train", "--plan", str(tmp_path / "best_plan.json"), "--model", str(tiny_model_dir),
                 "--dense-epochs", "0.2", *_common(synthetic_glue_dir, tmp_path / "cache"), "--steps", "2",
                 "--batch-size", "8", "--out", str(tmp_path / "out")]) == 0
    assert CompressionPlan.load(tmp_path / "out" / "plan.json") == plan


BAD = [
    ("unknown task", ["evaluate", "--model", "{model}", "--task", "sst3"], "sst3"),
    ("missing data dir", ["evaluate", "--model", "{model}", "--task", "sst2", "--data-dir", "{tmp}/nope"], "nope"),
    ("missing split", ["evaluate", "--model", "{model}", "--task", "rte", "--data-dir", "{tmp}/empty"], "rte"),
    ("bad plan", ["train", "--plan", "2:4:int9", "--model", "{model}", "--task", "sst2", "--data-dir", "{glue}", "--out", "{tmp}/o"], "bits=9"),
    ("plan compresses nothing", ["train", "--plan", "ffn_in=dense", "--model", "{model}", "--task", "sst2", "--data-dir", "{glue}", "--out", "{tmp}/o"], "compresses nothing"),
    ("component the model lacks", ["train", "--plan", "qkv=2:4:int8", "--model", "{model}", "--task", "sst2", "--data-dir", "{glue}", "--out", "{tmp}/o"], "its components: query"),
    ("bad kd", ["train", "--plan", "2:4:int8", "--model", "{model}", "--task", "sst2", "--data-dir", "{glue}", "--kd-alpha", "3", "--steps", "2", "--out", "{tmp}/o"], "kd_alpha"),
    ("wrong labels", ["evaluate", "--model", "{model}", "--task", "mnli", "--data-dir", "{glue}"], "has 2 outputs; task mnli needs 3"),
]


@pytest.mark.parametrize("label,argv,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input(label, argv, needle, tiny_model_dir, synthetic_glue_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.format(model=tiny_model_dir, tmp=tmp_path, glue=synthetic_glue_dir) for a in argv]
    assert main([*argv, "--cache-dir", str(tmp_path / "c")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_real_minilm_steps_on_sst2(glue_dir, tmp_path, capsys):
    """A few real steps of the embedded MiniLM on a handful of SST-2 rows."""
    out = tmp_path / "minilm"
    assert main(["train", "--plan", "2:4:int8", "--task", "sst2", "--data-dir", str(glue_dir), "--max-length", "32",
                 "--train-size", "64", "--eval-size", "64", "--dense-epochs", "0.5", "--steps", "4",
                 "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ratio_paper"] == 0.875
    assert 0.0 <= metrics["compressed"]["accuracy"] <= 1.0
    assert len(compressible_modules(AutoModelForSequenceClassification.from_pretrained(out))) == 36
