"""bench/retest.py: kept trials matched with their retests, and the noise against the spread, by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nxmiformer.compression import CompressionPlan
from tests.analysis.conftest import import_bench


@pytest.fixture(scope="module")
def retest():
    return import_bench("retest")


def plan(option, other="dense"):
    return CompressionPlan({"a": option, "b": other})


def records(plans, values, status="completed"):
    """Trials whose MEASURES all equal ``values`` (one per plan), with the plans' JSON."""
    return pd.DataFrame({"plan_json": [p.to_json() for p in plans], "plan_summary": [p.summary() for p in plans],
                         "status": status, "primary": 0.8, "selection_loss": values,
                         "selection_loss_calibrated": values, "selection_primary": values, "retention": values})


def test_pairs_match_on_the_plan_not_its_formatting(retest):
    plans = [plan("2:4:int4"), plan("2:4:int4", "1:4:int2"), plan("1:4:int2")]
    kept = records(plans, [0.1, 0.2, 0.3]).assign(arm=["fine", "fine", "grid"])
    # the retests in another order and JSON layout; one plan without a retest is left out
    again = records(plans[:2][::-1], [0.25, 0.15]).assign(plan_json=[p.to_json(indent=None) for p in plans[:2][::-1]])
    table = retest.pairs(kept, again)
    assert table["arm"].tolist() == ["fine", "fine"]
    assert table["selection_loss_kept"].tolist() == pytest.approx([0.1, 0.2])
    assert table["selection_loss_retest"].tolist() == pytest.approx([0.15, 0.25])


def test_reliability_noise_against_spread(retest):
    kept = [1.0, 2.0, 3.0, 4.0]
    again = [1.5, 1.5, 3.5, 3.5]  # differences +-0.5 around no shift
    table = pd.DataFrame({"arm": ["fine", "fine", "grid", "grid"]}
                         | {f"{m}_kept": kept for m in retest.MEASURES} | {f"{m}_retest": again for m in retest.MEASURES})
    row = retest.reliability(table).iloc[0]
    noise = np.std([0.5, -0.5, 0.5, -0.5], ddof=1) / math.sqrt(2)
    between = math.sqrt((np.var(kept, ddof=1) + np.var(again, ddof=1)) / 2)
    assert row["shift"] == pytest.approx(0.0)
    assert row["noise_sd"] == pytest.approx(noise)
    assert row["between_sd"] == pytest.approx(between)
    assert row["noise / between"] == pytest.approx(noise / between)
    assert row["retest_spearman"] == pytest.approx(2 / math.sqrt(5))  # ranks 1-4 against tied pairs
    assert row["fine_noise_sd"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert row["fine_between_sd"] == pytest.approx(math.sqrt((0.5 + 0.0) / 2))


def test_a_shift_common_to_every_plan_is_not_noise(retest):
    kept = [1.0, 2.0, 3.0, 5.0]
    table = pd.DataFrame({"arm": ["fine", "fine", "grid", "grid"]} | {f"{m}_kept": kept for m in retest.MEASURES}
                         | {f"{m}_retest": [k + 0.7 for k in kept] for m in retest.MEASURES})
    row = retest.reliability(table).iloc[0]
    assert row["shift"] == pytest.approx(0.7)
    assert row["noise_sd"] == pytest.approx(0.0, abs=1e-12) and row["retest_spearman"] == pytest.approx(1.0)
    assert row["between_sd"] == pytest.approx(np.std(kept, ddof=1))


@pytest.mark.parametrize("text, expected", [
    ("1001,1002", [1001, 1002]), ("7", [7]), (" 3, 4 ", [3, 4]),
    ("", None), ("1001,1001", None), ("a,2", None), ("-1", None),
])
def test_seed_list(retest, text, expected):
    import argparse

    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError, match="--trial-seeds"):
            retest.seed_list(text)
    else:
        assert retest.seed_list(text) == expected


@pytest.mark.parametrize("run, task, baseline, kept", [
    # the README's per-cell table: fine's chosen retention minus the better baseline's, in points
    ("search_quality_96875_seed8", "sst2", "uniform", -0.56),
    ("search_quality_96875_seed11", "mrpc", "grid", -1.23),
    ("search_quality_96875_seed14", "sst2", "grid", -0.99),
    ("search_quality_96875_seed12", "mrpc", "grid", +3.13),
])
def test_chosen_plans_are_the_pair_the_cell_compares(retest, run, task, baseline, kept):
    from tests.analysis.conftest import BENCH

    chosen = retest.chosen_plans(BENCH / "results" / "runs" / run, task)
    assert chosen["arm"].tolist() == ["fine", baseline]
    assert 100 * (chosen["retention"][0] - chosen["retention"][1]) == pytest.approx(kept, abs=0.006)


def test_seed_differences_and_their_mean(retest):
    fine, grid = plan("2:4:int4", "1:4:int2"), plan("2:4:int2", "2:4:int2")
    kept = records([fine, grid], [0.95, 0.96]).assign(arm=["fine", "grid"])
    table = pd.concat([retest.pairs(kept, records([fine, grid], again)).assign(seed=seed)
                       for seed, again in ((1001, [0.97, 0.96]), (1002, [0.955, 0.965]))], ignore_index=True)
    differences = retest.seed_differences(table)
    assert differences["seed"].tolist() == ["kept", "1001", "1002"]
    assert differences["difference"].tolist() == pytest.approx([-1.0, 1.0, -1.0])
    summary = retest.over_seeds(differences)
    assert summary["mean"] == pytest.approx(-1 / 3)
    assert summary["se_seeds"] == pytest.approx(np.std([-1.0, 1.0, -1.0], ddof=1) / math.sqrt(3))
    assert summary["seeds >= 0"] == 1 and summary["seeds"] == 3
