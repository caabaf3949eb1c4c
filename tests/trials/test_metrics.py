"""Tests for nxmiformer.trials.metrics against values computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from nxmiformer.errors import NxmiError
from nxmiformer.trials import TASKS, compute_metrics, primary_metric
from nxmiformer.trials.metrics import paired_difference

# --- Hand-computed references ----------------------------------------------------------------
#
# MCC (cola). labels = [1,1,1,0,0,0,1,0], preds = [1,1,0,0,0,1,1,0]
#   TP = 3 (pos 0,1,6), FN = 1 (pos 2), TN = 3 (pos 3,4,7), FP = 1 (pos 5)
#   MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 8/16
MCC_LABELS = [1, 1, 1, 0, 0, 0, 1, 0]
MCC_PREDS = [1, 1, 0, 0, 0, 1, 1, 0]
# Second case: labels = [1,1,0,0,0,0], preds = [1,0,0,0,0,1]
#   TP = 1, FN = 1, TN = 3, FP = 1 -> (3 - 1) / sqrt(2*2*4*4) = 2/8 = 0.25
#
# F1 (mrpc/qqp). labels = [1,1,1,1,0,0], preds = [1,1,1,0,1,0]
#   TP = 3, FN = 1, FP = 1, TN = 1; precision = 3/4, recall = 3/4, F1 = 0.75
#   accuracy = 4/6 = 2/3; combined = (0.75 + 2/3) / 2 = 17/24
F1_LABELS = [1, 1, 1, 1, 0, 0]
F1_PREDS = [1, 1, 1, 0, 1, 0]
#
# Pearson / Spearman (stsb). preds x = [1,2,3,4], labels y = [2,4,5,9]
#   mean x = 2.5, mean y = 5; dx = [-1.5,-0.5,0.5,1.5], dy = [-3,-1,0,4]
#   sum dx*dy = 4.5 + 0.5 + 0 + 6 = 11; sum dx^2 = 5; sum dy^2 = 26
#   pearson = 11 / sqrt(5 * 26) = 11 / sqrt(130); y is increasing in x, so spearman = 1
PEARSON_A = 11 / math.sqrt(130)
# Second case: x = [1,2,3,4], y = [1,3,2,4] (values are their own ranks, so both agree)
#   d = rank differences = [0,-1,1,0], sum d^2 = 2; spearman = 1 - 6*2 / (4*(16-1)) = 0.8
#   pearson: dx = [-1.5,-0.5,0.5,1.5], dy = [-1.5,0.5,-0.5,1.5]
#            sum dx*dy = 2.25 - 0.25 - 0.25 + 2.25 = 4; sum dx^2 = sum dy^2 = 5 -> 4/5 = 0.8


@pytest.mark.parametrize(
    ("task", "predictions", "labels", "expected"),
    [
        ("cola", MCC_PREDS, MCC_LABELS, {"mcc": 0.5}),
        ("cola", [1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0], {"mcc": 0.25}),
        ("cola", [0, 1, 0, 1], [0, 1, 0, 1], {"mcc": 1.0}),
        ("cola", [1, 0, 1, 0], [0, 1, 0, 1], {"mcc": -1.0}),
        ("mrpc", F1_PREDS, F1_LABELS, {"accuracy": 2 / 3, "f1": 0.75, "combined": 17 / 24}),
        # qqp: labels [0,1,1,0], preds [0,1,0,0]: TP=1, FN=1, FP=0 -> P=1, R=1/2, F1=2/3;
        # accuracy 3/4; combined = (3/4 + 2/3)/2 = 17/24
        ("qqp", [0, 1, 0, 0], [0, 1, 1, 0], {"accuracy": 0.75, "f1": 2 / 3, "combined": 17 / 24}),
        (
            "stsb",
            [1.0, 2.0, 3.0, 4.0],
            [2.0, 4.0, 5.0, 9.0],
            {"pearson": PEARSON_A, "spearmanr": 1.0, "combined": (PEARSON_A + 1) / 2},
        ),
        (
            "stsb",
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 3.0, 2.0, 4.0],
            {"pearson": 0.8, "spearmanr": 0.8, "combined": 0.8},
        ),
        ("sst2", [0, 1, 1, 0], [0, 1, 0, 0], {"accuracy": 0.75}),
        ("mnli", [0, 1, 2, 2, 1], [0, 1, 2, 0, 0], {"accuracy": 0.6}),
        ("qnli", [1, 1, 1, 1, 1], [1, 0, 1, 0, 1], {"accuracy": 0.6}),
        ("rte", [0, 0], [1, 1], {"accuracy": 0.0}),
        ("wnli", [1], [1], {"accuracy": 1.0}),
    ],
)
def test_against_hand_computed_values(task, predictions, labels, expected):
    metrics = compute_metrics(task, predictions, labels)
    assert set(metrics) == {*expected, "primary"}
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12)
        assert type(metrics[name]) is float
    assert metrics["primary"] == metrics[primary_metric(task)]


@pytest.mark.parametrize(
    ("task", "primary"),
    [
        ("cola", "mcc"),
        ("sst2", "accuracy"),
        ("mrpc", "combined"),
        ("qqp", "combined"),
        ("stsb", "combined"),
        ("mnli", "accuracy"),
        ("qnli", "accuracy"),
        ("rte", "accuracy"),
        ("wnli", "accuracy"),
    ],
)
def test_primary_key_for_every_task(task, primary):
    assert primary_metric(task) == primary
    if task == "stsb":
        predictions, labels = [0.5, 1.5, 4.0], [1.0, 2.0, 3.0]
    else:
        predictions, labels = [0, 1, 1], [0, 1, 0]
    metrics = compute_metrics(task, predictions, labels)
    assert "primary" in metrics and primary in metrics
    assert metrics["primary"] == metrics[primary]


def test_every_registered_task_is_covered():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}


@pytest.mark.parametrize(
    ("task", "logits", "labels"),
    [
        # argmax rows: [0, 1, 0, 1] (ties do not occur)
        ("sst2", [[2.0, 1.0], [0.0, 3.0], [1.0, -1.0], [0.1, 0.2]], [0, 1, 1, 1]),
        ("cola", [[2.0, 1.0], [0.0, 3.0], [1.0, -1.0], [0.1, 0.2]], [0, 1, 1, 1]),
        ("mrpc", [[2.0, 1.0], [0.0, 3.0], [1.0, -1.0], [0.1, 0.2]], [0, 1, 1, 1]),
        # argmax rows: [2, 0, 1]
        ("mnli", [[0.0, 1.0, 5.0], [3.0, 1.0, 2.0], [0.0, 0.5, 0.4]], [2, 0, 0]),
    ],
)
def test_logits_equal_argmax_predictions(task, logits, labels):
    argmax = np.asarray(logits).argmax(axis=1)
    assert compute_metrics(task, logits, labels) == compute_metrics(task, argmax, labels)
    assert compute_metrics(task, torch.tensor(logits), torch.tensor(labels)) == compute_metrics(
        task, argmax, labels
    )


@pytest.mark.parametrize(
    "predictions",
    [
        [1.0, 2.0, 3.0, 4.0],
        [[1.0], [2.0], [3.0], [4.0]],
        np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32),
        torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.bfloat16),
    ],
)
def test_stsb_accepts_n_and_n_by_1(predictions):
    metrics = compute_metrics("stsb", predictions, [2.0, 4.0, 5.0, 9.0])
    assert metrics["pearson"] == pytest.approx(PEARSON_A, abs=1e-6)
    assert metrics["spearmanr"] == pytest.approx(1.0)


# Degenerate inputs: the metric is undefined (0/0); the documented answer is 0.0, never NaN,
# and no warning either (warnings are errors inside this test).
@pytest.mark.parametrize(
    ("task", "predictions", "labels", "key"),
    [
        ("cola", [1, 1, 1, 1], [0, 1, 0, 1], "mcc"),
        ("cola", [0, 0, 0, 0], [0, 1, 0, 1], "mcc"),
        ("cola", [0, 1, 0, 1], [1, 1, 1, 1], "mcc"),
        ("stsb", [2.5, 2.5, 2.5], [1.0, 2.0, 3.0], "pearson"),
        ("stsb", [2.5, 2.5, 2.5], [1.0, 2.0, 3.0], "spearmanr"),
        ("stsb", [1.0, 2.0, 3.0], [4.0, 4.0, 4.0], "pearson"),
        ("stsb", [2.5, 2.5, 2.5], [1.0, 2.0, 3.0], "combined"),
        ("mrpc", [0, 0, 0], [1, 0, 1], "f1"),
        ("qqp", [1, 0, 1], [0, 0, 0], "f1"),
    ],
)
def test_degenerate_cases_give_zero_not_nan(task, predictions, labels, key):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = compute_metrics(task, predictions, labels)
    assert metrics[key] == 0.0
    assert not any(math.isnan(v) for v in metrics.values())


@pytest.mark.parametrize(
    ("task", "predictions", "labels", "fragment"),
    [
        ("sst2", [0, 1, 1], [0, 1], "3 examples but labels hold 2"),
        ("sst2", [[0.1, 0.2, 0.3]], [0], r"\[N, 2\]"),
        ("mnli", [[0.1, 0.2]], [0], r"\[N, 3\]"),
        ("sst2", np.zeros((2, 2, 2)), [0, 1], "shape"),
        ("sst2", [0, 2], [0, 1], r"class id\(s\) \[2\]"),
        ("rte", [0, 1], [-1, 1], r"class id\(s\) \[-1\]"),
        ("cola", [0.5, 1.0], [0, 1], "integer class ids"),
        ("stsb", [[1.0, 2.0]], [1.0], r"\[N\] or \[N, 1\]"),
        ("stsb", [1.0, 2.0], [1.0], "2 examples but labels hold 1"),
        ("qnli", [], [], "empty"),
        ("sst-2", [0], [0], "unknown GLUE task 'sst-2'"),
    ],
)
def test_bad_inputs_raise_with_the_offending_value(task, predictions, labels, fragment):
    with pytest.raises(NxmiError, match=fragment):
        compute_metrics(task, predictions, labels)


# --- paired_difference ------------------------------------------------------------------------


def _paired_accuracy_se(first, second, labels) -> float:
    """Independent reference: the standard error of a mean of per-row differences in correctness."""
    d = (np.asarray(first) == labels).astype(float) - (np.asarray(second) == labels).astype(float)
    return float(d.std(ddof=0) / math.sqrt(len(d)))


def test_paired_difference_matches_the_analytic_paired_error_and_is_tighter_than_unpaired():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 2000)
    first = np.where(rng.random(2000) < 0.85, labels, 1 - labels)
    second = np.where(rng.random(2000) < 0.05, 1 - first, first)  # a similar model: 5% of rows flipped
    lead, se = paired_difference("sst2", first, second, labels, draws=2000)
    assert lead == pytest.approx((first == labels).mean() - (second == labels).mean(), abs=1e-12)
    assert se == pytest.approx(_paired_accuracy_se(first, second, labels), rel=0.1)
    unpaired = math.sqrt(sum(p * (1 - p) for p in ((first == labels).mean(), (second == labels).mean())) / 2000)
    assert se < unpaired / 2


@pytest.mark.parametrize("task,first,second,labels,lead", [
    ("sst2", [1, 0, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1], 0.0),  # the same predictions: no difference, no noise
    ("mrpc", F1_PREDS, [1] * 6, F1_LABELS, 17 / 24 - (0.8 + 4 / 6) / 2),  # combined: F1 0.8, accuracy 4/6
])
def test_paired_difference_of_the_primary_metric(task, first, second, labels, lead):
    got, se = paired_difference(task, first, second, labels, draws=50)
    assert got == pytest.approx(lead, abs=1e-12)
    assert se == 0.0 if first == second else se > 0


@pytest.mark.parametrize("kwargs,fragment", [
    ({"second": [1, 0, 1]}, "same rows"),
    ({"draws": 1}, "draws must be an int >= 2"),
])
def test_paired_difference_rejects_bad_input(kwargs, fragment):
    args = {"task": "sst2", "first": [1, 0, 1, 1], "second": [1, 0, 0, 1], "labels": [1, 1, 0, 1]} | kwargs
    with pytest.raises(NxmiError, match=fragment):
        paired_difference(**args)
