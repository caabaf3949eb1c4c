"""bench/learned_arm.py: the learned plans against a kept cell's arms, on hand-made records."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tests.analysis.conftest import import_bench
from tests.analysis.test_diverse_arm_bench import FINE, GRID, UNIFORM, arm


@pytest.fixture(scope="module")
def learned_arm():
    return import_bench("learned_arm")


# FINE's optimum f0 is .95 and its choice f1 .97; the better baseline's choice is grid's g1, .955
LEARNED = arm("l", "calibrated", ["abba", "abbb"], [0.96, 0.94], [0.2, 0.3], [1.0, 2.0])


@pytest.mark.parametrize("optimum, minus_optimum", [
    (None, [1.0, -1.0]),                                  # the fine arm's first trial
    (FINE.iloc[2].copy(), [0.0, -2.0]),                   # a given one (another warm start's optimum)
])
def test_differences_per_learned_plan(learned_arm, monkeypatch, optimum, minus_optimum):
    monkeypatch.setattr(learned_arm, "_paired_standard_error", lambda *args: 0.004)  # half a point of 0.8
    table = learned_arm.differences("sst2", {"fine": FINE, "uniform": UNIFORM, "grid": GRID}, LEARNED, None, optimum)
    assert table["retention"].tolist() == pytest.approx([96.0, 94.0])
    assert table["minus_optimum"].tolist() == pytest.approx(minus_optimum)
    assert table["minus_fine_choice"].tolist() == pytest.approx([-1.0, -3.0])
    assert table["minus_baseline"].tolist() == pytest.approx([0.5, -1.5])
    assert (table["baseline"] == "grid").all()
    ses = table[["minus_optimum_se", "minus_fine_choice_se", "minus_baseline_se"]].to_numpy().ravel().tolist()
    assert ses == pytest.approx([0.5] * 6)


def test_a_cell_without_an_arm_is_a_one_line_error(learned_arm, tmp_path):
    with pytest.raises(SystemExit, match="no kept fine arm at .*sst2-0.96875-fine"):
        learned_arm.cell_arms(tmp_path, "sst2")


def test_pooled_per_plan_of_the_stage(learned_arm):
    cells = [pd.DataFrame({"minus_optimum": [-1.0, 0.5], "minus_fine_choice": [0.0, 0.0], "minus_baseline": [1.0, 2.0]}),
             pd.DataFrame({"minus_optimum": [-3.0], "minus_fine_choice": [1.0], "minus_baseline": [3.0]})]
    rows = learned_arm.pooled(cells).set_index(["plan", "minus"])
    assert rows.loc[(1, "optimum"), "mean"] == pytest.approx(-2.0)
    assert rows.loc[(1, "optimum"), "se_cells"] == pytest.approx(1.0)
    assert rows.loc[(1, "fine_choice"), "cells > 0"] == 1
    assert rows.loc[(2, "optimum"), "cells"] == 1 and math.isnan(rows.loc[(2, "optimum"), "se_cells"])
