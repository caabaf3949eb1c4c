"""Task metrics, computed with scikit-learn and SciPy: the GLUE presets' and those a user's task
may rank on (``accuracy``, ``f1``, ``macro_f1``, ``mcc``; ``pearson``, ``spearman``).

| task                        | keys returned                            | ``primary``  |
|-----------------------------|------------------------------------------|--------------|
| cola                        | ``mcc``                                  | ``mcc``      |
| mrpc, qqp                   | ``accuracy``, ``f1``, ``combined``       | ``combined`` |
| stsb                        | ``pearson``, ``spearmanr``, ``combined`` | ``combined`` |
| sst2, mnli, qnli, rte, wnli | ``accuracy``                             | ``accuracy`` |

``combined`` is the GLUE leaderboard's task score: the mean of F1 and accuracy (mrpc, qqp), or of
Pearson and Spearman correlation (stsb). ``f1`` is binary F1 of the positive class (class id 1:
for a user's two classes, the second of its sorted label names); ``macro_f1`` the unweighted mean
of every class's F1. A user's classification task reports accuracy, macro_f1 and mcc (and f1
with two classes); a regression pearson and spearman.
For mnli the caller computes metrics once per validation split (matched, mismatched).
All metrics are "higher is better".
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from nxmiformer.errors import NxmiError
from nxmiformer.trials.data import TaskInfo, get_task

__all__ = ["bootstrap_primary", "compute_metrics", "paired_difference", "primary_metric"]


def primary_metric(task: str | TaskInfo) -> str:
    """The name of the metric that ranks models on ``task`` (also returned as ``"primary"``)."""
    return get_task(task).primary_metric


def _to_numpy(values: object, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        # NumPy has no bfloat16; widen low-precision floats before converting.
        values = values.detach().cpu()
        values = (values.double() if values.is_floating_point() else values).numpy()
    array = np.asarray(values)
    if array.size == 0:
        raise NxmiError(f"{what} is empty; metrics need at least one example")
    return array


def _as_class_predictions(predictions: np.ndarray, info: TaskInfo) -> np.ndarray:
    if predictions.ndim == 2:
        if predictions.shape[1] != info.num_labels:
            raise NxmiError(
                f"task {info.name!r} has {info.num_labels} classes but the logits have shape "
                f"{tuple(predictions.shape)}; expected [N, {info.num_labels}] logits or [N] labels"
            )
        return predictions.argmax(axis=1)
    if predictions.ndim == 1:
        return _as_class_labels(predictions, info, "predictions")
    raise NxmiError(
        f"predictions for task {info.name!r} must have shape [N, {info.num_labels}] (logits) or "
        f"[N] (class ids), got {tuple(predictions.shape)}"
    )


def _as_class_labels(values: np.ndarray, info: TaskInfo, what: str) -> np.ndarray:
    if values.ndim != 1:
        raise NxmiError(f"{what} must have shape [N], got {tuple(values.shape)}")
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        raise NxmiError(f"{what} for task {info.name!r} must be integer class ids")
    ids = values.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= info.num_labels)]
    if bad.size:
        raise NxmiError(
            f"{what} for task {info.name!r} hold class id(s) {sorted(set(bad.tolist()))[:5]} "
            f"outside 0..{info.num_labels - 1}"
        )
    return ids


def _as_scores(values: np.ndarray, what: str) -> np.ndarray:
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise NxmiError(
            f"{what} of a regression must have shape [N] or [N, 1], got {tuple(values.shape)}"
        )
    return values.astype(np.float64)


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    # Correlation with a constant input is undefined (SciPy returns NaN and warns); a model that
    # predicts a constant has no skill, so score it 0.0 and keep NaN out of results tables.
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    value = float(fn(x, y)[0])
    return value if math.isfinite(value) else 0.0


def compute_metrics(task: str | TaskInfo, predictions: object, labels: object) -> dict[str, float]:
    """Compute the metrics of ``task`` (see the module docstring) plus ``"primary"``.

    Args:
        task: A GLUE config name or a :class:`~nxmiformer.trials.data.TaskInfo`.
        predictions: Classification: logits ``[N, num_labels]`` (argmax is taken) or class ids
            ``[N]``. stsb: scores ``[N]`` or ``[N, 1]``. NumPy arrays, lists or torch tensors.
        labels: ``[N]`` gold class ids (floats for stsb). For mnli pass one validation split.

    Returns:
        Plain Python floats keyed by metric name, and ``"primary"`` (a copy of the task's
        primary metric).

    Degenerate inputs never produce NaN: MCC is 0.0 when predictions or labels are constant,
    Pearson/Spearman are 0.0 when either side is constant, and F1 is 0.0 when no positive is
    predicted or present.

    Raises:
        NxmiError: shapes or lengths do not match, logits have the wrong class count, class ids
            are out of range, or an input is empty.
    """
    info = get_task(task)
    predictions = _to_numpy(predictions, "predictions")
    labels = _to_numpy(labels, "labels")

    if info.is_regression:
        preds, gold = _as_scores(predictions, "predictions"), _as_scores(labels, "labels")
    else:
        preds = _as_class_predictions(predictions, info)
        gold = _as_class_labels(labels, info, "labels")
    if preds.shape[0] != gold.shape[0]:
        raise NxmiError(
            f"predictions hold {preds.shape[0]} examples but labels hold {gold.shape[0]}"
        )

    metrics = {name: _METRICS[name](preds, gold) for name in info.metric_names if name != "combined"}
    if "combined" in info.metric_names:  # GLUE's task score: the mean of its two metrics
        pair = ("pearson", "spearmanr") if info.is_regression else ("accuracy", "f1")
        metrics["combined"] = (metrics[pair[0]] + metrics[pair[1]]) / 2
    metrics["primary"] = metrics[info.primary_metric]
    return metrics


def _mcc(preds: np.ndarray, gold: np.ndarray) -> float:
    mcc = float(matthews_corrcoef(gold, preds))
    return mcc if math.isfinite(mcc) else 0.0


# metric name -> f(predictions, gold); class ids for the classification metrics, scores for the rest
_METRICS = {
    "accuracy": lambda p, g: float(accuracy_score(g, p)),
    "f1": lambda p, g: float(f1_score(g, p, pos_label=1, average="binary", zero_division=0.0)),
    "macro_f1": lambda p, g: float(f1_score(g, p, average="macro", zero_division=0.0)),
    "mcc": _mcc,
    "pearson": lambda p, g: _correlation(pearsonr, p, g),
    "spearmanr": lambda p, g: _correlation(spearmanr, p, g),
    "spearman": lambda p, g: _correlation(spearmanr, p, g),
}


def bootstrap_primary(task: str | TaskInfo, predictions: list, labels: object, draws: int = 1000,
                      seed: int = 0) -> np.ndarray:
    """``task``'s primary metric of several models' ``predictions`` (each as
    :func:`compute_metrics` takes them) on the same rows: row 0 on ``labels`` as given, then one
    row per bootstrap resample of the rows (``draws``, with ``seed``), the same rows for every
    model, so that differences between the columns are paired. Shape ``[draws + 1, models]``.

    Raises:
        NxmiError: the inputs differ in length, or ``draws`` < 2.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise NxmiError(f"draws must be an int >= 2, got {draws!r}")
    labels = _to_numpy(labels, "labels")
    models = [_to_numpy(p, "predictions") for p in predictions]
    if any(len(p) != len(labels) for p in models):
        raise NxmiError(f"paired predictions need the same rows: got {', '.join(str(len(p)) for p in models)} "
                        f"and {len(labels)} labels")
    rng = np.random.default_rng(seed)
    samples = [np.arange(len(labels))] + [rng.integers(0, len(labels), len(labels)) for _ in range(draws)]
    return np.array([[compute_metrics(task, p[rows], labels[rows])["primary"] for p in models] for rows in samples])


def paired_difference(task: str | TaskInfo, first: object, second: object, labels: object, draws: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """The difference in ``task``'s primary metric between two models' predictions on the same
    rows (``first`` minus ``second``, as :func:`compute_metrics` takes them), and its bootstrap
    standard error: the rows are resampled together for both models, so what both get right or
    wrong cancels (a paired difference; far tighter than two independent errors for similar
    models). ``draws`` resamples with ``seed`` (:func:`bootstrap_primary`).

    Raises:
        NxmiError: the three inputs differ in length, or ``draws`` < 2.
    """
    scores = bootstrap_primary(task, [first, second], labels, draws, seed)
    difference = scores[:, 0] - scores[:, 1]
    return float(difference[0]), float(np.std(difference[1:], ddof=1))
