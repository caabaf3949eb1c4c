"""Loading one or several search output directories into one table."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nxmiformer.analysis import REQUIRED_COLUMNS, load_results
from nxmiformer.errors import NxmiError
from tests.analysis.conftest import RESULT_COLUMNS, synthetic_results, write_search_dir


def test_the_schema_is_one_typed_definition_with_a_meaning_per_column():
    from nxmiformer.records import TrialRecord

    schema = TrialRecord.describe()
    assert schema["column"].tolist() == RESULT_COLUMNS == TrialRecord.columns()
    assert set(REQUIRED_COLUMNS) <= set(RESULT_COLUMNS)
    assert schema["meaning"].str.len().gt(10).all() and schema["dtype"].isin(["object", "float64", "int64", "bool"]).all()


def test_a_results_table_of_the_previous_version_is_read(tmp_path):
    old = synthetic_results(0).drop(columns=["record_version", "admm_distance", "admm_mask_agreement"])
    results = load_results(write_search_dir(tmp_path / "v1", old))
    assert results["record_version"].eq(1).all() and results["admm_distance"].isna().all()
    assert results["primary"].equals(synthetic_results(0)["primary"])


def test_missing_values_take_the_schema_defaults_and_bad_types_are_one_line(tmp_path):
    table = synthetic_results(0).astype({"meets_target": object, "steps": float})
    table.loc[0, "meets_target"], table.loc[0, "steps"] = None, np.nan
    results = load_results(write_search_dir(tmp_path / "holes", table))
    assert results.loc[0, "meets_target"] == False and results.loc[0, "steps"] == 0  # noqa: E712
    with pytest.raises(NxmiError, match="column steps does not hold int64"):
        load_results(write_search_dir(tmp_path / "bad", synthetic_results(0).assign(steps="eight")))


@pytest.mark.parametrize("version,missing", [
    (2, ["predictions", "selection_predictions", "selection_loss_calibrated", "proxy_cost"]),
    (3, ["selection_predictions", "selection_loss_calibrated", "proxy_cost"]),
    (4, ["selection_loss_calibrated", "proxy_cost"]),
    (5, ["proxy_cost"]),
])
def test_an_older_table_reads_without_the_columns_it_lacks(tmp_path, version, missing):
    old = synthetic_results(0).drop(columns=missing).assign(record_version=version)
    results = load_results(write_search_dir(tmp_path / f"v{version}", old))
    assert results["record_version"].eq(version).all()
    assert all(results[column].eq("").all() for column in missing if column.endswith("predictions"))
    assert all(results[column].isna().all() for column in missing if not column.endswith("predictions"))


def test_a_results_table_of_a_newer_version_is_refused_naming_it(tmp_path):
    from nxmiformer.records import RECORD_VERSION

    newer = RECORD_VERSION + 1
    new = synthetic_results(0).assign(record_version=newer)
    with pytest.raises(NxmiError, match=f"trial-record version {newer}"):
        load_results(write_search_dir(tmp_path / "newer", new))


def test_the_search_writes_and_analysis_reads_the_same_records(tmp_path):
    from nxmiformer.records import TrialRecord, read_records, records_frame, write_records

    record = TrialRecord.from_report({"primary": 0.8, "step": 8, "plan_json": "{}", "accuracy": 0.8, "node_id": "n"},
                                     trial_id="t0", status="completed", fallback={"dense_primary": 0.9, "kind": "grid"})
    path = write_records(records_frame([record]), tmp_path / "results.parquet")
    back = read_records(path)
    assert back.dtypes.to_dict() == records_frame([record]).dtypes.to_dict()
    pd.testing.assert_frame_equal(back, records_frame([record]))
    assert back.iloc[0]["metrics_json"] == '{"accuracy": 0.8}' and back.iloc[0]["kind"] == "grid"


def test_importing_analysis_leaves_search_and_trials_alone():
    code = ("import sys, nxmiformer.analysis; "
            "print(sorted(m for m in sys.modules if m.startswith(('nxmiformer.search', 'nxmiformer.trials'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_several_searches_in_one_table(tmp_path):
    a = write_search_dir(tmp_path / "a", synthetic_results(0), task="sst2", model="m1")
    b = write_search_dir(tmp_path / "b", synthetic_results(1), task="sst2", model="m2",
                         provenance={"model_fingerprint": "abc123", "dense_primary": 0.91})
    results = load_results([a, str(b)])
    assert len(results) == 2 * len(synthetic_results(0))
    assert list(results.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    by_search = results.groupby("search")
    assert by_search["search_dir"].first().to_dict() == {"a": str(a.resolve()), "b": str(b.resolve())}
    assert by_search["model"].first().to_dict() == {"a": "m1", "b": "m2"}
    assert results.loc[results["search"] == "b", "model_fingerprint"].eq("abc123").all()
    assert results.loc[results["search"] == "a", "model_fingerprint"].isna().all()
    assert results["task"].eq("sst2").all()
    # failed trials are kept, and marked
    assert results["failed"].equals(results["status"].eq("error")) and results["failed"].any()


def test_provenance_fills_a_missing_dense_baseline(tmp_path):
    table = synthetic_results(0).assign(dense_primary=np.nan)
    results = load_results(write_search_dir(tmp_path / "s", table, provenance={"dense_primary": 0.91}))
    assert results["dense_primary"].eq(0.91).all()


def test_searches_with_one_name_are_told_apart_by_path(tmp_path):
    a = write_search_dir(tmp_path / "x" / "run", synthetic_results(0))
    b = write_search_dir(tmp_path / "y" / "run", synthetic_results(1))
    assert set(load_results([a, b])["search"]) == {str(a.resolve()), str(b.resolve())}
    assert set(load_results(a)["search"]) == {"run"}


def _no_parquet(tmp_path):
    (tmp_path / "s").mkdir()
    return tmp_path / "s"


def _no_search_json(tmp_path):
    path = write_search_dir(tmp_path / "s", synthetic_results(0))
    (path / "search.json").unlink()
    return path


def _bad_columns(tmp_path):
    return write_search_dir(tmp_path / "s", synthetic_results(0).drop(columns=["primary", "kind"]))


def _empty(tmp_path):
    return write_search_dir(tmp_path / "s", pd.DataFrame(columns=RESULT_COLUMNS))


BAD = [
    ("missing dir", lambda tmp: tmp / "nope", "search output directory not found"),
    ("no results.parquet", _no_parquet, "no results.parquet in"),
    ("no search.json", _no_search_json, "no search.json"),
    ("not a results table", _bad_columns, "lacks column(s) kind, primary"),
    ("empty results", _empty, "no trials in"),
]


@pytest.mark.parametrize("label,make,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_search_dirs(label, make, needle, tmp_path):
    path = make(tmp_path)
    with pytest.raises(NxmiError) as info:
        load_results([write_search_dir(tmp_path / "good", synthetic_results(0)), path])
    assert needle in str(info.value) and str(path.resolve()) in str(info.value)


def test_no_dirs_is_an_error():
    with pytest.raises(NxmiError, match="no search output directory"):
        load_results([])


@pytest.mark.parametrize("key,first,second,read,needle", [
    ("objective", "selection_loss", "selection_primary", "search_objective",
     "the searches decided on different objectives (selection_loss, selection_primary); choose one with --metric"),
    ("prior_weight", 0.0, 1.0, "search_prior_weight",
     "the searches chose with different prior weights (0.0, 1.0); choose one with --prior-weight"),
])
def test_searches_that_chose_differently_are_named(tmp_path, key, first, second, read, needle):
    from nxmiformer.analysis import results as module

    one = write_search_dir(tmp_path / "a", synthetic_results(0), **{key: first})
    two = write_search_dir(tmp_path / "b", synthetic_results(1), **{key: second})
    assert getattr(module, read)(load_results(one)) == first  # one search: its own setting
    with pytest.raises(NxmiError) as info:
        getattr(module, read)(load_results([one, two]))
    assert str(info.value) == needle
