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


def test_required_columns_are_the_runners():
    from nxmiformer.search.runner import RESULT_COLUMNS as RUNNER_COLUMNS

    assert set(REQUIRED_COLUMNS) <= set(RUNNER_COLUMNS)
    assert RESULT_COLUMNS == RUNNER_COLUMNS  # the synthetic tables follow the runner


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
