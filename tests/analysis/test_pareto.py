"""Pareto front and selection against brute force on random tables (ties and duplicates included)."""

from __future__ import annotations

import itertools
import math
import statistics

import pandas as pd
import pytest

from nxmiformer.analysis import eligible, pareto_front, select
from nxmiformer.errors import NxmiError
from tests.analysis.conftest import synthetic_results


def brute_eligible(table, column, metric, include_stopped):
    """{index: (ratio, metric, trial id)} of the completed (and stopped) trials with finite values."""
    statuses = {"completed", "stopped"} if include_stopped else {"completed"}
    return {i: (row[column], row[metric], row["trial_id"]) for i, row in table.to_dict("index").items()
            if row["status"] in statuses and math.isfinite(row[column]) and math.isfinite(row[metric])}


def brute_front(table, column, metric, include_stopped):
    """Every eligible point that no eligible point beats on one axis while matching the other."""
    pool = brute_eligible(table, column, metric, include_stopped)
    return sorted(i for i, (x, y, _) in pool.items() if not any(
        xj >= x and yj >= y and (xj > x or yj > y) for xj, yj, _ in pool.values()))


def brute_select(table, target, column, metric, include_stopped):
    pool = {i: p for i, p in brute_eligible(table, column, metric, include_stopped).items() if p[0] >= target - 1e-9}
    best = None
    for i, (x, y, trial) in pool.items():
        if best is None:
            best = i
            continue
        bx, by, btrial = pool[best]
        if (y, x) > (by, bx) or ((y, x) == (by, bx) and trial < btrial):
            best = i
    return best


# (seed, ratio levels, metric levels, duplicates): few levels make many ties, None draws a continuum
TABLES = [(seed, r, m, d) for seed, (r, m, d) in itertools.product(
    range(4), [(3, 3, 4), (5, 6, 3), (None, 4, 2), (4, None, 5), (None, None, 0), (2, 2, 6)])]
SETTINGS = list(itertools.product(["paper", "storage"], ["primary", "retention"], [False, True]))


@pytest.mark.parametrize("seed,ratio_levels,metric_levels,duplicates", TABLES)
def test_front_matches_brute_force(seed, ratio_levels, metric_levels, duplicates):
    table = synthetic_results(seed, ratio_levels=ratio_levels, metric_levels=metric_levels, duplicates=duplicates)
    for convention, metric, include_stopped in SETTINGS:
        column = f"ratio_{convention}"
        front = pareto_front(table, convention, metric, include_stopped)
        assert sorted(front.index) == brute_front(table, column, metric, include_stopped)
        assert front[column].is_monotonic_increasing and front[metric].is_monotonic_decreasing
        assert set(front["status"]) <= ({"completed", "stopped"} if include_stopped else {"completed"})


@pytest.mark.parametrize("seed,ratio_levels,metric_levels,duplicates", TABLES)
def test_select_matches_brute_force_and_lies_on_the_front(seed, ratio_levels, metric_levels, duplicates):
    table = synthetic_results(seed, ratio_levels=ratio_levels, metric_levels=metric_levels, duplicates=duplicates)
    for (convention, metric, include_stopped), target in itertools.product(SETTINGS, [0.8, 0.85, 0.875, 0.9]):
        column = f"ratio_{convention}"
        expected = brute_select(table, target, column, metric, include_stopped)
        if expected is None:
            with pytest.raises(NxmiError, match="highest reached"):
                select(table, target, convention, metric, include_stopped)
            continue
        chosen = select(table, target, convention, metric, include_stopped)
        assert chosen.name == expected
        assert chosen.name in pareto_front(table, convention, metric, include_stopped).index


def _table(points, status="completed"):
    """A minimal results table from (ratio, primary) points; trial ids t0, t1, ..."""
    frame = pd.DataFrame(points, columns=["ratio_paper", "primary"])
    return frame.assign(trial_id=[f"t{i}" for i in range(len(frame))], status=status, kind="optimal",
                        ratio_storage=frame["ratio_paper"] - 0.02, retention=frame["primary"] / 0.9)


FRONT_CASES = [
    # (points, front trial ids sorted by ratio), by hand
    ("single point", [(0.9, 0.8)], ["t0"]),
    ("exact duplicates of a front point are all kept", [(0.9, 0.8), (0.9, 0.8), (0.8, 0.7)], ["t0", "t1"]),
    ("same ratio, lower metric is dominated", [(0.9, 0.8), (0.9, 0.7)], ["t0"]),
    ("same metric, lower ratio is dominated", [(0.9, 0.8), (0.85, 0.8)], ["t0"]),
    ("a trade-off keeps both", [(0.9, 0.7), (0.85, 0.8)], ["t1", "t0"]),
    ("duplicates of a dominated point all go", [(0.9, 0.8), (0.85, 0.7), (0.85, 0.7)], ["t0"]),
    ("ratios within float noise tie", [(0.875, 0.8), (0.875 + 1e-12, 0.8)], ["t0", "t1"]),
    ("a staircase", [(0.8, 0.9), (0.85, 0.85), (0.85, 0.8), (0.9, 0.85), (0.95, 0.6), (0.92, 0.6)],
     ["t0", "t3", "t4"]),
    ("NaN and inf metrics are not eligible", [(0.9, float("nan")), (0.8, 0.7), (0.95, float("inf"))], ["t1"]),
    ("nothing eligible: an empty front", [(0.9, float("nan"))], []),
]


@pytest.mark.parametrize("label,points,expected", FRONT_CASES, ids=[c[0] for c in FRONT_CASES])
def test_front_by_hand(label, points, expected):
    front = pareto_front(_table(points))
    assert list(front["trial_id"]) == expected


def test_stopped_and_failed_trials():
    table = pd.concat([_table([(0.9, 0.8)]), _table([(0.95, 0.9)], status="stopped").assign(trial_id="s"),
                       _table([(0.99, 0.99)], status="error").assign(trial_id="e")], ignore_index=True)
    assert list(pareto_front(table)["trial_id"]) == ["t0"]
    assert list(pareto_front(table, include_stopped=True)["trial_id"]) == ["s"]
    assert select(table, 0.85)["trial_id"] == "t0"
    assert select(table, 0.85, include_stopped=True)["trial_id"] == "s"
    assert list(eligible(table, include_stopped=True)["trial_id"]) == ["t0", "s"]


SELECT_TIES = [
    ("higher metric wins", [(0.9, 0.7), (0.88, 0.8)], "t1"),
    ("equal metric: higher ratio wins", [(0.88, 0.8), (0.9, 0.8)], "t1"),
    ("equal metric and ratio: first trial id wins", [(0.9, 0.8), (0.9, 0.8)], "t0"),
    ("below the target never wins", [(0.8, 0.99), (0.9, 0.5)], "t1"),
    ("the target is met within 1e-9", [(0.875 - 1e-10, 0.9), (0.9, 0.5)], "t0"),
]


@pytest.mark.parametrize("label,points,expected", SELECT_TIES, ids=[c[0] for c in SELECT_TIES])
def test_select_tie_break(label, points, expected):
    assert select(_table(points), 0.875)["trial_id"] == expected


BAD = [
    ("unknown convention", dict(convention="bytes"), "unknown ratio convention 'bytes'; allowed: paper, storage"),
    ("unknown metric", dict(metric="f1"), "unknown metric 'f1'; allowed: primary, retention"),
    ("ratio 0", dict(target_ratio=0), "(0, 1), got 0"),
    ("ratio 1", dict(target_ratio=1.0), "(0, 1), got 1.0"),
    ("ratio above 1", dict(target_ratio=1.5), "(0, 1), got 1.5"),
    ("negative ratio", dict(target_ratio=-0.2), "(0, 1), got -0.2"),
    ("NaN ratio", dict(target_ratio=float("nan")), "(0, 1), got nan"),
    ("ratio as text", dict(target_ratio="0.8"), "(0, 1), got '0.8'"),
    ("ratio as bool", dict(target_ratio=True), "(0, 1), got True"),
    ("target unmet", dict(target_ratio=0.95), "highest reached is 0.9000"),
]


@pytest.mark.parametrize("label,changes,needle", BAD, ids=[b[0] for b in BAD])
def test_select_bad_input(label, changes, needle):
    kwargs = dict(target_ratio=0.875, convention="paper", metric="primary") | changes
    with pytest.raises(NxmiError) as info:
        select(_table([(0.9, 0.8), (0.85, 0.9)]), **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def brute_select_with_prior(table, target, column, metric, include_stopped, weight):
    """The prior's rule written out: z-scores (population SD) over the eligible trials that meet the target, a
    missing cost at z 0."""
    pool = {i: v for i, v in brute_eligible(table, column, metric, include_stopped).items() if v[0] >= target - 1e-9}
    sign = -1 if metric.startswith("selection_loss") or metric == "selection_kl" else 1
    values = {i: sign * m for i, (_, m, _) in pool.items()}
    costs = {i: table.loc[i, "proxy_cost"] for i in pool}
    known = [c for c in costs.values() if math.isfinite(c)]

    def z(x, xs):
        mean = statistics.fmean(xs)
        spread = statistics.pstdev(xs)
        return (x - mean) / (spread if spread > 0 else 1.0)

    score = {i: z(values[i], list(values.values())) - weight * (z(costs[i], known) if math.isfinite(costs[i]) else 0.0)
             for i in pool}
    meets = list(pool)
    # the highest score, then the higher ratio, then the first trial id
    return min(meets, key=lambda i: (-score[i], -pool[i][0], pool[i][2]), default=None)


@pytest.mark.parametrize("seed,ratio_levels,metric_levels,duplicates", TABLES[::3])
@pytest.mark.parametrize("weight", [0.5, 1.0, 3.0])
def test_select_with_a_prior_matches_its_rule_written_out(seed, ratio_levels, metric_levels, duplicates, weight):
    table = synthetic_results(seed, ratio_levels=ratio_levels, metric_levels=metric_levels, duplicates=duplicates)
    table.loc[table.index[::7], "proxy_cost"] = float("nan")  # unpriced plans sit at the mean cost
    for metric, include_stopped in itertools.product(["primary", "selection_loss_calibrated"], [False, True]):
        for target in (0.8, 0.875):
            expected = brute_select_with_prior(table, target, "ratio_paper", metric, include_stopped, weight)
            if expected is None:
                continue
            chosen = select(table, target, "paper", metric, include_stopped, prior_weight=weight)
            assert chosen.name == expected, (metric, include_stopped, target)


PRIOR_CASES = [
    # (label, (ratio, primary, proxy cost) points, prior weight, expected trial)
    ("weight 0: the metric alone", [(0.9, 0.80, 5.0), (0.9, 0.79, 1.0)], 0.0, "t0"),
    ("weight 1: a cheaper plan a little worse wins", [(0.9, 0.80, 5.0), (0.9, 0.79, 1.0), (0.9, 0.70, 3.0)], 1.0, "t1"),
    ("weight 1: a much better metric at a middling cost wins", [(0.9, 0.95, 2.0), (0.9, 0.70, 1.0), (0.9, 0.72, 3.0)],
     1.0, "t0"),
    ("weight 1: the same metric at the highest cost loses", [(0.9, 0.95, 3.0), (0.9, 0.70, 1.0), (0.9, 0.72, 2.0)],
     1.0, "t1"),
    ("equal costs: the metric decides", [(0.9, 0.80, 2.0), (0.9, 0.79, 2.0)], 5.0, "t0"),
    ("score ties: the higher ratio wins", [(0.88, 0.8, 1.0), (0.9, 0.8, 1.0)], 1.0, "t1"),
    ("an unpriced plan sits at the mean cost", [(0.9, 0.80, float("nan")), (0.9, 0.80, 1.0), (0.9, 0.80, 3.0)], 1.0,
     "t1"),
    ("below the target never wins", [(0.8, 0.99, 0.0), (0.9, 0.5, 9.0)], 1.0, "t1"),
]


@pytest.mark.parametrize("label,points,weight,expected", PRIOR_CASES, ids=[c[0] for c in PRIOR_CASES])
def test_select_with_a_prior_by_hand(label, points, weight, expected):
    table = _table([p[:2] for p in points]).assign(proxy_cost=[p[2] for p in points])
    assert select(table, 0.875, prior_weight=weight)["trial_id"] == expected


@pytest.mark.parametrize("weight,needle", [
    (-0.5, "got -0.5"), (float("nan"), "got nan"), (float("inf"), "got inf"), ("1", "got '1'"), (True, "got True"),
])
def test_a_bad_prior_weight_is_one_line(weight, needle):
    with pytest.raises(NxmiError) as info:
        select(_table([(0.9, 0.8)]).assign(proxy_cost=1.0), 0.875, prior_weight=weight)
    assert "prior_weight must be a finite number >= 0" in str(info.value) and needle in str(info.value)


def test_a_prior_needs_the_proxy_cost():
    for table in (_table([(0.9, 0.8)]), _table([(0.9, 0.8)]).assign(proxy_cost=float("nan"))):
        with pytest.raises(NxmiError, match="needs the plans' proxy_cost, which these results lack"):
            select(table, 0.875, prior_weight=1.0)
    assert select(_table([(0.9, 0.8)]), 0.875, prior_weight=0)["trial_id"] == "t0"  # no prior: no cost needed


@pytest.mark.parametrize("call", [lambda t: select(t, 0.8), lambda t: pareto_front(t)], ids=["select", "front"])
def test_empty_results_are_an_error(call):
    with pytest.raises(NxmiError, match="no trials in the results"):
        call(_table([]))


def test_no_eligible_trial_is_an_error_naming_the_statuses():
    table = _table([(0.9, float("nan")), (0.95, 0.9)]).assign(status=["completed", "error"])
    with pytest.raises(NxmiError, match=r"no completed trial .* \(1 completed, 1 error\)"):
        select(table, 0.8)


def test_primary_metrics_of_different_tasks_are_not_compared():
    table = _table([(0.9, 0.8), (0.85, 0.9)]).assign(task=["sst2", "cola"])
    for call in (lambda: pareto_front(table), lambda: select(table, 0.8)):
        with pytest.raises(NxmiError, match="tasks cola, sst2"):
            call()
    assert len(pareto_front(table, metric="retention")) == 2
