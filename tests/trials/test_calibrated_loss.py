"""Tests for nxmiformer.trials.loop.calibrated_loss against hand-computed values and a brute-force
search over temperatures (classification) or numpy's least-squares fit (regression)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nxmiformer.trials.loop import calibrated_loss, task_loss


def _brute_force(logits: np.ndarray, labels: np.ndarray) -> float:
    """The cross-entropy minimised over a log grid of 40,001 temperatures (1e-4 to 1e4): every 50th
    of them, then the 101 around the best of those."""
    x, y = torch.tensor(logits, dtype=torch.float64), torch.tensor(labels)
    temperatures = torch.logspace(-4, 4, 40001, dtype=torch.float64)
    losses = torch.stack([torch.nn.functional.cross_entropy(x / t, y) for t in temperatures[::50]])
    near = int(losses.argmin()) * 50  # refine around the coarse minimum
    window = temperatures[max(near - 50, 0): near + 51]
    return float(min(torch.nn.functional.cross_entropy(x / t, y) for t in window))


def _noisy(classes: int, seed: int, rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    logits = rng.normal(size=(rows, classes)) + 1.5 * np.eye(classes)[labels]
    return logits, labels


# hand-computed: one row right and one wrong by the same margin, so CE(b) = (log(1+e^-b) + log(1+e^b)) / 2,
# smallest at b = 1/T = 0: log 2. Separable rows: the loss falls to 0 as T -> 0. Constant logits: log(classes)
@pytest.mark.parametrize("logits,labels,expected", [
    ([[1.0, 0.0], [0.0, 1.0]], [0, 0], math.log(2)),
    ([[2.0, 0.0], [0.0, 2.0]], [0, 1], 0.0),
    ([[0.3, 0.3, 0.3]] * 4, [0, 1, 2, 0], math.log(3)),
])
def test_hand_computed_values(logits, labels, expected):
    assert calibrated_loss(np.array(logits), np.array(labels), regression=False) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("classes,seed", [(2, 0), (2, 1), (3, 2), (5, 3)])
@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_equals_the_best_temperature_on_a_grid_and_ignores_the_scale(classes, seed, scale):
    logits, labels = _noisy(classes, seed)
    reference = _brute_force(logits, labels)
    calibrated = calibrated_loss(scale * logits, labels, regression=False)
    assert calibrated == pytest.approx(reference, rel=1e-5)
    plain = float(task_loss(torch.tensor(scale * logits), torch.tensor(labels), regression=False))
    assert calibrated <= plain + 1e-12


@pytest.mark.parametrize("a,b", [(1.0, 0.0), (-3.0, 2.0), (0.01, -5.0)])
def test_regression_is_the_residual_of_the_least_squares_affine_fit(a, b):
    rng = np.random.default_rng(7)
    target = rng.uniform(0, 5, 200)
    score = 0.4 * target + rng.normal(scale=0.5, size=200)
    slope, intercept = np.polyfit(score, target, 1)
    reference = float(np.mean((slope * score + intercept - target) ** 2))
    assert calibrated_loss((a * score + b)[:, None], target, regression=True) == pytest.approx(reference, rel=1e-9)
    exact = calibrated_loss((2 * target + 1)[:, None], target, regression=True)
    assert exact == pytest.approx(0.0, abs=1e-20)
