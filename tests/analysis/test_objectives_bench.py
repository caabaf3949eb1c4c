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
