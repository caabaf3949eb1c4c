"""bench/objectives.py: re-deciding kept runs on each selection-row objective, on hand-made records."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tests.analysis.conftest import import_bench


@pytest.fixture(scope="module")
def objectives():
    return import_bench("objectives")


def arm(prefix, retention, primary, loss, calibrated, kl=None):
    n = len(retention)
    return pd.DataFrame({
        "trial_id": [f"{prefix}{i}" for i in range(n)], "status": "completed", "ratio_paper": 0.96875,
        "retention": retention, "primary": [0.9 * r for r in retention], "selection_primary": primary,
        "selection_loss": loss, "selection_loss_calibrated": calibrated,
        "selection_kl": kl if kl is not None else [float("nan")] * n})


# retention over both arms, lowest first: g2 .93, g0 .94, f0 .95, g1 .955, f2 .96, f1 .97. The calibrated loss
# falls as retention rises (agreement +1), the raw loss rises with it (-1); the metric picks f2 and g0.
CELL = {"fine": arm("f", [0.95, 0.97, 0.96], [0.90, 0.88, 0.91], [0.3, 0.6, 0.5], [0.4, 0.1, 0.2]),
        "grid": arm("g", [0.94, 0.955, 0.93], [0.90, 0.89, 0.85], [0.2, 0.4, 0.1], [0.5, 0.3, 0.6])}


@pytest.mark.parametrize("objective, agreement, regret, difference", [
    ("selection_primary", None, (1.0 + 1.5) / 2, 2.0),          # f2 (.96) and g0 (.94)
    ("selection_loss", -1.0, (2.0 + 2.5) / 2, 2.0),             # f0 (.95) and g2 (.93)
    ("selection_loss_calibrated", 1.0, 0.0, 1.5),               # f1 (.97) and g1 (.955)
])
def test_cell_table_redecides_each_arm(objectives, objective, agreement, regret, difference):
    rows = {r["objective"]: r for r in objectives.cell_table(CELL, "fine")}
    assert "selection_kl" not in rows  # a record version without it: left out, not scored on NaN
    row = rows[objective]
    assert row["trials"] == 6
    if agreement is not None:
        assert row["agreement"] == pytest.approx(agreement)
    assert row["regret"] == pytest.approx(regret)
    assert row["difference"] == pytest.approx(difference)


def test_within_arm_agreement(objectives):
    rows = {r["objective"]: r for r in objectives.cell_table(CELL, "fine")}
    # the calibrated loss ranks both arms' trials perfectly; the metric -0.5 inside fine, +0.5 inside grid
    assert rows["selection_loss_calibrated"]["within"] == pytest.approx(1.0)
    assert rows["selection_primary"]["within_fine"] == pytest.approx(-0.5)
    assert rows["selection_primary"]["within_grid"] == pytest.approx(0.5)
    assert rows["selection_primary"]["within"] == pytest.approx(0.0)


def test_derived_choices_use_the_proxy_cost(objectives):
    cell = {"fine": CELL["fine"].assign(heuristic_score=[1.0, 3.0, 2.0]),
            "grid": CELL["grid"].assign(heuristic_score=[2.0, 1.0, 3.0])}
    rows = {r["objective"]: r for r in objectives.cell_table(cell, "fine")}
    # the proxy alone: f0 (.95) and g1 (.955)
    assert rows["proxy"]["regret"] == pytest.approx((2.0 + 0.0) / 2)
    assert rows["proxy"]["difference"] == pytest.approx(-0.5)
    # z sums inside each arm, worked by hand: fine (0.11, 0.16, -0.27) picks f2 (.96), grid (0.27, -2.56, 2.29) g1
    assert rows["calibrated+proxy"]["regret"] == pytest.approx((1.0 + 0.0) / 2)
    assert rows["calibrated+proxy"]["difference"] == pytest.approx(0.5)
    # over the cell's six trials, z over all six: (-0.93, -0.24, -0.88, 0.88, -1.52, 2.69) against retention
    assert rows["calibrated+proxy"]["agreement"] == pytest.approx(17 / 35)
    assert "proxy" not in {r["objective"] for r in objectives.cell_table(CELL, "fine")}  # no proxy cost recorded


def test_cell_without_the_search_arm_has_no_difference(objectives):
    rows = objectives.cell_table({"grid": CELL["grid"]}, "fine")
    assert all(math.isnan(r["difference"]) for r in rows)
    assert [r["regret"] for r in rows] == pytest.approx([100 * (0.955 - 0.94), 100 * (0.955 - 0.93), 0.0])


def test_pooled_mean_and_se_over_cells(objectives):
    table = pd.DataFrame({"objective": ["a", "a", "a", "b"], "agreement": [0.2, 0.4, 0.9, 0.5],
                          "regret": [1.0, 2.0, 3.0, 0.0], "difference": [1.0, -1.0, float("nan"), 2.0]})
    got = objectives.pooled(table).set_index("objective")
    assert got.loc["a", "cells"] == 3 and got.loc["a", "difference_cells"] == 2
    assert got.loc["a", "regret"] == pytest.approx(2.0)
    assert got.loc["a", "regret_se"] == pytest.approx(1.0 / math.sqrt(3))
    assert got.loc["a", "difference_se"] == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert got.loc["a", "difference_ge_0"] == 1
    assert math.isnan(got.loc["b", "agreement_se"])  # one cell: no spread
