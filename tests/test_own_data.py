"""A user's own data and own fine-tuned model (no GLUE name): the task description read from
files, its bad inputs (one line, exit 2, nothing written), the chain to a served model, and
``--finetuned``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from nxmiformer.cli import main
from nxmiformer.errors import NxmiError
from nxmiformer.trials import DataConfig, DenseConfig, finetune_dense
from nxmiformer.trials.data import describe_task
from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert

CLASSES = ("negative", "neutral", "positive")


def _rows(n: int, seed: int, labels=CLASSES) -> pd.DataFrame:
    rng = random.Random(seed)
    # the first word carries the label, so a few steps learn something
    cue = {label: WORDS[i] for i, label in enumerate(labels)}
    chosen = [labels[i % len(labels)] for i in range(n)]
    return pd.DataFrame({"id": range(n), "text": [cue[c] + " " + " ".join(rng.choice(WORDS) for _ in range(6))
                                                   for c in chosen], "label": chosen})


def write(folder: Path, train: pd.DataFrame, validation: pd.DataFrame, ext: str = ".csv") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"train{ext}", folder / f"validation{ext}"
    for frame, path in zip((train, validation), paths):
        if ext == ".csv":
            frame.to_csv(path, index=False)
        elif ext == ".tsv":
            frame.to_csv(path, index=False, sep="\t")
        elif ext == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path, index=False)
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write(tmp_path_factory.mktemp("reviews") / "reviews", _rows(60, 0), _rows(24, 1))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_a_task_is_described_from_its_files(ext, tmp_path):
    train, validation = write(tmp_path / "reviews", _rows(30, 0), _rows(9, 1), ext)
    info = describe_task(train_file=train, validation_file=validation)
    assert info.name == "reviews" and info.source == "files" and info.text_columns == ("text",)
    assert info.label_names == CLASSES and info.num_labels == 3 and not info.is_regression
    assert info.primary_metric == "accuracy" and set(info.metric_names) == {"accuracy", "macro_f1", "mcc"}
    assert DataConfig(train_file=str(train), validation_file=str(validation), metric="macro_f1").task_info.primary_metric == "macro_f1"


def test_labels_map_to_sorted_class_ids_and_pairs_and_regression(tmp_path, tiny_tokenizer):
    from nxmiformer.trials import prepare_task_data

    train, validation = write(tmp_path / "t", _rows(30, 0), _rows(9, 1))
    data = prepare_task_data(describe_task(train_file=train, validation_file=validation), tiny_tokenizer)
    raw = pd.read_csv(validation)
    assert data.eval["validation"]["labels"] == [CLASSES.index(v) for v in raw["label"]]
    assert set(data.train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    # a pair of texts, integer classes 3 and 7 (sorted numerically), and a regression from float scores
    pair = pd.DataFrame({"q": ["a cat", "the dog"] * 5, "a": ["sat", "ran"] * 5, "y": [7, 3] * 5})
    t2, v2 = write(tmp_path / "pairs", pair, pair)
    info = describe_task(train_file=t2, validation_file=v2, text_columns="q,a", label_column="y")
    assert info.text_columns == ("q", "a") and info.label_names == ("3", "7") and "f1" in info.metric_names
    scores = pair.assign(y=[0.5, 4.25] * 5)
    t3, v3 = write(tmp_path / "scores", scores, scores)
    info = describe_task(train_file=t3, validation_file=v3, text_columns="q,a", label_column="y")
    assert info.is_regression and info.num_labels == 1 and info.primary_metric == "pearson"
    assert prepare_task_data(info, tiny_tokenizer).eval["validation"]["labels"] == pytest.approx([0.5, 4.25] * 5)


def _bad(tmp_path):
    good_train, good_val = _rows(30, 0), _rows(9, 1)
    return {
        "missing file": (None, {"--train-file": tmp_path / "nope.csv"}, "no such file"),
        "unknown extension": ((good_train, good_val, ".csv"), {"--train-file": tmp_path / "d" / "train.xlsx"},
                              "unknown extension '.xlsx'"),
        "missing column": ((good_train.rename(columns={"text": "body"}), good_val, ".csv"), {},
                           "no text column (text, sentence or sentence1,sentence2); its columns: ['id', 'body', 'label']"),
        "missing label column": ((good_train, good_val, ".csv"), {"--label-column": "stars"},
                                 "no column(s) ['stars']; its columns: ['id', 'text', 'label']"),
        "empty file": ((good_train.iloc[:0], good_val, ".csv"), {}, "no rows"),
        "unseen validation label": ((good_train, good_val.assign(label="angry"), ".csv"), {},
                                    "label(s) ['angry'] never seen in training"),
        "single class": ((good_train.assign(label="positive"), good_val.assign(label="positive"), ".csv"), {},
                         "a single class 'positive'"),
        "non-numeric scores": ((good_train, good_val, ".csv"), {"--metric": "pearson"},
                               "a regression needs numeric scores in column 'label'"),
        "empty texts": ((good_train.assign(text=[""] * 3 + list(good_train["text"][3:])), good_val, ".csv"), {},
                        "3 of 30 rows have an empty or missing text in column 'text' (first: row 0)"),
        "f1 with three classes": ((good_train, good_val, ".csv"), {"--metric": "f1"}, "metric f1 needs two classes"),
    }


@pytest.mark.parametrize("case", list(_bad(Path("/x"))))
def test_bad_data_is_one_line_exit_2_nothing_written(case, tmp_path, model_dir, capsys):
    frames, flags, needle = _bad(tmp_path)[case]
    train, validation = (write(tmp_path / "d", *frames[:2], frames[2]) if frames
                         else (tmp_path / "d" / "train.csv", tmp_path / "d" / "validation.csv"))
    if case == "unknown extension":
        (tmp_path / "d" / "train.xlsx").write_bytes(b"PK")
    args = {"--train-file": train, "--validation-file": validation} | flags
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(model_dir), *[str(x) for kv in args.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_finetuned_model_is_the_reference_as_it_is(tmp_path, files, tiny_tokenizer):
    from nxmiformer.models import load_model
    from nxmiformer.trials import evaluate, prepare_task_data

    # a classifier "fine-tuned outside nxmiformer": its own head and label names
    outside = tmp_path / "outside"
    torch.manual_seed(1)
    model = tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), num_labels=3,
                      id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    model.save_pretrained(outside)
    tiny_tokenizer.save_pretrained(outside)
    data = DataConfig(train_file=str(files[0]), validation_file=str(files[1]), max_length=16)
    dense = finetune_dense(data, DenseConfig(model=str(outside), finetuned=True), tmp_path / "cache", progress=False)
    own = evaluate(load_model(str(outside)), prepare_task_data(data.task_info, tiny_tokenizer, max_length=16,
                                                                 include_train=False), tiny_tokenizer)
    assert dense.primary == pytest.approx(own["primary"], abs=1e-9)  # no training: its own metric
    for name, value in load_model(str(outside)).state_dict().items():  # the warm start is the model itself
        assert torch.equal(load_model(str(dense.path)).state_dict()[name], value)
    # a head that does not fit the labels is a one-line error naming both
    wrong = tmp_path / "wrong"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), num_labels=3,
              id2label={0: "bad", 1: "good", 2: "meh"}).save_pretrained(wrong)
    with pytest.raises(NxmiError, match=r"labels its outputs \['bad', 'good', 'meh'\]; the data's labels are "
                                        r"\['negative', 'neutral', 'positive'\]"):
        finetune_dense(data, DenseConfig(model=str(wrong), finetuned=True), tmp_path / "cache", progress=False)
    two = tmp_path / "two"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(two)  # 2 outputs
    with pytest.raises(NxmiError, match="has 2 outputs; task reviews needs 3"):
        finetune_dense(data, DenseConfig(model=str(two), finetuned=True), tmp_path / "cache", progress=False)


def test_a_datasetdict_is_a_task(tmp_path):
    from nxmiformer.api import task

    data = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(_rows(20, 0)),
                                 "test": datasets.Dataset.from_pandas(_rows(6, 1))})
    info = task("reviews", data=data, validation_split="test", store=tmp_path)
    again = task("reviews", data=data, validation_split="test", store=tmp_path)
    assert info == again and info.label_names == CLASSES and Path(info.train_file).parent.parent == tmp_path
    with pytest.raises(NxmiError, match=r"no split\(s\) \['validation'\]; its splits: \['test', 'train'\]"):
        task("reviews", data=data, store=tmp_path)


def test_glue_presets_keep_their_cache_keys(tmp_path):
    from nxmiformer.trials.dense import data_fingerprint

    fields = data_fingerprint(DataConfig(task="sst2", data_dir=str(tmp_path)))
    assert set(fields) == {"task", "data_dir", "max_length", "train_size", "eval_size", "seed", "holdout_size",
                           "selection_size"}


@pytest.mark.slow
def test_the_chain_on_own_data(tmp_path, files, model_dir, capsys):
    """search -> pareto -> export -> train (no data flags) -> evaluate (no data flags) -> pack -> onnx."""
    ray = pytest.importorskip("ray")
    from nxmiformer.api import search, task

    reviews = task(train_file=files[0], validation_file=files[1], metric="macro_f1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result = search(model_dir, reviews, 0.8, out=tmp_path / "search", progress=False, trials=2, steps=4,
                        batch_size=8, lr=1e-3, max_length=16, train_size=None, eval_size=None, calib_size=8,
                        selection_size=8, dense_epochs=1.0, options=("dense:int8", "2:4:int8", "2:4:int4"),
                        profile_workers=0, concurrency=2, asha=False, cache_dir=str(tmp_path / "cache"))
    finally:
        ray.shutdown()
    assert result.plan is not None and len(result.results) == 2
    state = json.loads((tmp_path / "search" / "search.json").read_text())
    assert state["task"] == "reviews" and state["train_file"] == str(files[0])
    assert state["task_info"]["label_names"] == list(CLASSES) and state["task_info"]["primary_metric"] == "macro_f1"
    assert main(["pareto", "--results", str(tmp_path / "search"), "--target-ratio", "0.8"]) == 0
    plan = tmp_path / "best.json"
    assert main(["export", "--results", str(tmp_path / "search"), "--target-ratio", "0.8", "--out", str(plan)]) == 0
    capsys.readouterr()
    trained = tmp_path / "trained"
    assert main(["train", "--plan", str(plan), "--steps", "3", "--batch-size", "8", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(trained)]) == 0  # task and model from the plan
    assert json.loads((trained / "config.json").read_text())["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}
    capsys.readouterr()
    assert main(["evaluate", "--model", str(trained), "--device", "cpu", "--json"]) == 0  # task from task.json
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["task"] == "reviews" and metrics["primary"] == metrics["macro_f1"]
    assert main(["pack", "--model", str(trained), "--out", str(tmp_path / "packed")]) == 0
    assert main(["onnx", "--model", str(tmp_path / "packed"), "--out", str(tmp_path / "onnx")]) == 0
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}
    capsys.readouterr()
    # the ONNX directory with only the validation rows named
    assert main(["evaluate", "--model", str(tmp_path / "onnx"), "--task", "reviews", "--train-file", str(files[0]),
                 "--validation-file", str(files[1]), "--metric", "macro_f1", "--max-length", "16", "--json"]) == 0
    onnx_metrics = json.loads(capsys.readouterr().out)
    assert abs(onnx_metrics["accuracy"] - metrics["accuracy"]) <= 2 / 24  # int8 kernels: at most 2 rows differ


def test_the_api_trains_a_plan_on_own_data(tmp_path, files, model_dir):
    from nxmiformer.api import task, train
    from nxmiformer.models import load_model

    reviews = task(train_file=files[0], validation_file=files[1], metric="macro_f1")
    result = train("2:4:int8", model_dir, reviews, out=tmp_path / "small", steps=4, batch_size=8, lr=1e-3,
                   max_length=16, cache_dir=str(tmp_path / "cache"), device="cpu", progress=False)
    assert result.ratio_paper == pytest.approx(0.875) and result.metrics["primary"] == result.metrics["macro_f1"]
    saved = load_model(str(tmp_path / "small"))
    assert saved.config.id2label == dict(enumerate(CLASSES))
    assert (tmp_path / "small" / "plan.json").is_file() and (tmp_path / "small" / "task.json").is_file()


def test_a_finetuned_head_that_does_not_fit_is_one_line_exit_2(tmp_path, files, model_dir, capsys):
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(model_dir), "--finetuned", "--train-file", str(files[0]),
            "--validation-file", str(files[1]), "--out", str(out)]
    assert main(argv) == 2  # the tiny model has 2 outputs; the data 3 classes
    err = capsys.readouterr().err
    assert "has 2 outputs; task reviews needs 3 (negative, neutral, positive)" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_dataset_folder_is_a_task_with_its_splits(tmp_path):
    folder = tmp_path / "tweets"
    write(folder, _rows(30, 0), _rows(9, 1))  # train.csv and validation.csv: datasets names the splits by them
    info = describe_task(dataset=str(folder))
    assert info.source == "dataset" and info.name == "tweets" and info.label_names == CLASSES
    with pytest.raises(NxmiError, match=r"has no split\(s\) \['dev'\]; its splits: \['train', 'validation'\]"):
        describe_task(dataset=str(folder), validation_split="dev")
