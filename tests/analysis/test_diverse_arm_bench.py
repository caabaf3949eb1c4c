"""bench/diverse_arm.py: a second fine arm set against a kept cell, on hand-made records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tests.analysis.conftest import import_bench

MODULES = [f"m{i}" for i in range(4)]


@pytest.fixture(scope="module")
def diverse():
    return import_bench("diverse_arm")


def arm(prefix, kind, plans, retention, calibrated, cost, dense=0.8):
    """An arm's completed trials; ``plans`` are one option per module (a string of option letters)."""
    n = len(plans)
    return pd.DataFrame({
        "trial_id": [f"{prefix}{i}" for i in range(n)], "status": "completed", "kind": kind, "ratio_paper": 0.96875,
        "plan_json": [json.dumps({"modules": dict(zip(MODULES, p))}) for p in plans], "plan_summary": plans,
        "retention": retention, "primary": [dense * r for r in retention], "dense_primary": dense,
        "selection_loss_calibrated": calibrated, "proxy_cost": cost, "predictions": [f"{prefix}{i}" for i in range(n)]})


@pytest.mark.parametrize("plans, expected", [
    (["aaaa", "aaab", "bbbb"], (1 + 4 + 3) / 3),
    (["aaaa", "aaaa"], 0.0),
    (["abab"], math.nan),   # one plan: no pair
])
def test_spread_is_the_mean_pairwise_hamming_distance(diverse, plans, expected):
    frame = arm("f", "diverse", plans, [0.9] * len(plans), [0.5] * len(plans), [1.0] * len(plans))
    assert diverse.spread(frame) == pytest.approx(expected, nan_ok=True)


# retention .95 .97 .96: the calibrated loss and the proxy cost both rate f1 best, so calibrated+proxy picks it
FINE = arm("f", "optimal", ["aaaa", "aaab", "aabb"], [0.95, 0.97, 0.96], [0.4, 0.1, 0.2], [3.0, 1.0, 2.0])
# the new arm: same first plan (the optimum), and rates n2 (.94) best
NEW = arm("n", "optimal", ["aaaa", "bbba", "bbbb"], [0.95, 0.98, 0.94], [0.4, 0.3, 0.1], [3.0, 2.0, 1.0])
UNIFORM = arm("u", "uniform", ["aaaa", "bbbb"], [0.93, 0.92], [0.1, 0.2], [1.0, 2.0])
GRID = arm("g", "grid", ["abab", "baba"], [0.90, 0.955], [0.5, 0.1], [2.0, 1.0])


def test_arm_row_chooses_on_calibrated_plus_proxy(diverse):
    row = diverse.arm_row(FINE)
    assert row["chosen"] == pytest.approx(97.0)
    assert row["chosen_kind"] == "optimal"
    assert row["mean"] == pytest.approx(96.0)
    assert row["mean_se"] == pytest.approx(1.0 / math.sqrt(3))
    assert row["best"] == pytest.approx(97.0)
    assert row["within"] == pytest.approx(1.0)  # its rule orders the arm's trials as validation does
    assert row["trials"] == 3


def test_cell_rows_differences_and_pairing_checks(diverse, monkeypatch):
    # the paired SE reads the validation labels; here a fixed 0.008 (0.01 of the 0.8 dense figure: 1 point)
    monkeypatch.setattr(diverse, "_paired_standard_error", lambda *args: 0.008)
    arms = {"fine": FINE, "uniform": UNIFORM, "grid": GRID}
    rows, cell = diverse.cell_rows("mrpc", arms, NEW, "h12", data_dir=None)
    chosen = {r["arm"]: r["chosen"] for r in rows}
    assert chosen == pytest.approx({"fine": 97.0, "uniform": 93.0, "grid": 95.5, "h12": 94.0})
    assert cell["baseline"] == "grid"                    # the better baseline's choice
    assert cell["h12 - fine"] == pytest.approx(-3.0)
    assert cell["fine - baseline"] == pytest.approx(1.5)
    assert cell["h12 - baseline"] == pytest.approx(-1.5)
    assert cell["h12 mean - fine mean"] == pytest.approx((0.95 + 0.98 + 0.94) / 3 * 100 - 96.0)
    assert cell["fine se"] == pytest.approx(1.0) and cell["h12 se"] == pytest.approx(1.0)
    assert cell["same_optimum"] and cell["optimum_old"] == pytest.approx(cell["optimum_new"])
    assert cell["dense_old"] == pytest.approx(cell["dense_new"])
    moved = NEW.assign(plan_summary=["bbbb", "bbba", "aaaa"], dense_primary=0.81)  # another first plan and warm start
    _, cell = diverse.cell_rows("mrpc", arms, moved, "h12", data_dir=None)
    assert not cell["same_optimum"] and cell["dense_new"] == pytest.approx(81.0)


@pytest.mark.parametrize("values, mean, se, at_least_zero", [
    ([1.0, 2.0, 3.0], 2.0, 1.0 / math.sqrt(3), 3),
    ([-1.0, 0.0, 1.0, 2.0], 0.5, math.sqrt(5 / 3) / 2, 3),
    ([0.5], 0.5, math.nan, 1),   # one cell: no spread between cells
])
def test_pooled_over_cells(diverse, values, mean, se, at_least_zero):
    row = diverse.pooled(pd.DataFrame({"d": values}), ["d"]).iloc[0]
    assert row["cells"] == len(values)
    assert row["mean"] == pytest.approx(mean)
    assert row["se_cells"] == pytest.approx(se, nan_ok=True)
    assert row[">= 0"] == at_least_zero


def test_a_run_without_its_kept_pair_is_a_one_line_error(diverse, tmp_path, monkeypatch, capsys):
    run = tmp_path / "h12" / "search_quality_no_such_run"
    run.mkdir(parents=True)
    monkeypatch.setattr("sys.argv", ["diverse_arm.py", str(run), "--data-dir", str(tmp_path)])
    assert diverse.main() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no kept run" in err and "search_quality_no_such_run" in err
