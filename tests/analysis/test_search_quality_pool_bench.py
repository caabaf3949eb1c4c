"""bench/search_quality_pool.py: pooling per-cell differences and the README's Markdown table, on hand-made cells."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.analysis.conftest import import_bench


@pytest.fixture(scope="module")
def pool_bench():
    return import_bench("search_quality_pool")


@pytest.mark.parametrize("differences, ses, mean, se_rows, se_cells, at_least_zero", [
    ([1.0], [0.5], 1.0, 0.5, math.nan, 1),                                     # one cell: no spread between cells
    ([1.0, 3.0], [1.0, 1.0], 2.0, math.sqrt(2) / 2, math.sqrt(2) / math.sqrt(2), 2),
    ([-1.0, 0.0, 4.0], [0.3, 0.4, 1.2], 1.0, math.sqrt(0.09 + 0.16 + 1.44) / 3,
     math.sqrt(7.0) / math.sqrt(3), 2),                                       # sd of (-1, 0, 4) is sqrt(7); 0 counts
])
def test_pool_mean_and_both_standard_errors(pool_bench, differences, ses, mean, se_rows, se_cells, at_least_zero):
    got = pool_bench.pool(differences, ses)
    assert got["cells"] == len(differences) and got["at_least_zero"] == at_least_zero
    assert got["mean"] == pytest.approx(mean)
    assert got["se_rows"] == pytest.approx(se_rows)
    assert got["se_cells"] == pytest.approx(se_cells, nan_ok=True)


def cell(seed, task, target, chosen, family=0.5, objective="selection_loss_calibrated"):
    return {"run": f"r{seed}", "seed": seed, "task": task, "target": target, "arm": "fine",
            "baselines": "uniform,grid", "objective": objective, "dense": 0.81234, "search_plan": "4:8:int3 x20, 2:8:int2 x16",
            "baseline": "grid", "baseline_plan": "4:8:int2 x36", "chosen": chosen, "chosen_se": 1.0,
            "family_baseline": "grid", "family": family, "family_se": 0.8,
            "retention_fine": 97.0 + chosen, "retention_uniform": 95.5, "retention_grid": 97.0}


TABLE = pd.DataFrame([cell(5, "sst2", 0.96875, -0.5, objective="selection_primary"), cell(4, "sst2", 0.96875, 1.5),
                      cell(4, "mrpc", 0.96875, 2.0), cell(4, "sst2", 0.9375, 3.0)])


def test_groups_pool_every_cell_each_target_and_each_task(pool_bench):
    got = {key: sorted(group["chosen"]) for key, group in pool_bench.groups(TABLE)}
    assert got == {("all", ""): [-0.5, 1.5, 2.0, 3.0], ("all", 0.9375): [3.0], ("all", 0.96875): [-0.5, 1.5, 2.0],
                   ("mrpc", 0.96875): [2.0], ("sst2", 0.9375): [3.0], ("sst2", 0.96875): [-0.5, 1.5]}
    one_target = TABLE[TABLE["target"] == 0.96875]
    assert [key for key, _ in pool_bench.groups(one_target)] == [("all", ""), ("mrpc", 0.96875), ("sst2", 0.96875)]


def test_markdown_rows_sorted_with_each_arm_and_the_pooled_means(pool_bench):
    text = pool_bench.markdown(TABLE)
    lines = text.splitlines()
    assert lines[0].startswith("| target | task | seed | dense | chose on | fine: chosen plan | fine | uniform | grid |")
    rows = [line for line in lines[2:6]]
    assert [r.split(" | ")[:3] for r in rows] == [["| 93.75%", "sst2", "4"], ["| 96.875%", "mrpc", "4"],
                                                   ["| 96.875%", "sst2", "4"], ["| 96.875%", "sst2", "5"]]
    assert "| 0.8123 | calibrated loss |" in rows[1] and "| metric |" in rows[3]
    assert "| 96.50% | 95.50% | 97.00% | grid: 4:8:int2 x36 | **-0.50 +- 1.00** | +0.50 +- 0.80 |" in rows[3]
    pooled = {line.split(" | ")[0]: line for line in lines if line.startswith("| all") or line.startswith("| sst2 96")}
    assert pooled["| all"] == "| all | 4 | +1.50 (0.74) | 3 of 4 | +0.50 (0.00) |"   # sd(-0.5, 1.5, 2, 3) / 2 = 0.736
    assert pooled["| all 96.875%"].startswith("| all 96.875% | 3 | +1.00 (")
    assert pooled["| sst2 96.875%"] == "| sst2 96.875% | 2 | +0.50 (1.00) | 1 of 2 | +0.50 (0.00) |"


def test_markdown_marks_cells_read_from_an_older_table(pool_bench):
    older = TABLE.drop(columns=["objective", "dense", "retention_uniform"]).head(1)
    row = pool_bench.markdown(older).splitlines()[2]
    assert "| nan | ? |" in row and "| nan% |" in row


@pytest.mark.parametrize("flag", ["--markdown", "--csv"])
def test_an_output_in_a_missing_directory_is_refused_before_any_work(tmp_path, flag):
    script = Path(__file__).resolve().parents[2] / "bench" / "search_quality_pool.py"
    out = tmp_path / "missing" / "table.out"
    run = subprocess.run([sys.executable, str(script), str(tmp_path), "--data-dir", str(tmp_path), flag, str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == f"cannot write {out}: its directory does not exist"
    assert not out.parent.exists()
