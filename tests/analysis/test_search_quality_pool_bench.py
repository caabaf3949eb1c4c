"""bench/search_quality_pool.py: the joint bootstrap over shared validation rows, the better baseline
chosen on the selection rows, the choice lead in-sample and held out, and the README's Markdown
tables, on hand-made records."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nxmiformer.compression import CompressionPlan
from nxmiformer.trials import compute_metrics
from tests.analysis.conftest import import_bench, synthetic_results, write_search_dir

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "search_quality_pool.py"


@pytest.fixture(scope="module")
def pool_bench():
    return import_bench("search_quality_pool")


# --- pooling -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("differences, mean, se_cells, at_least_zero", [
    ([1.0], 1.0, math.nan, 1),                                     # one cell: no spread between cells
    ([1.0, 3.0], 2.0, math.sqrt(2) / math.sqrt(2), 2),
    ([-1.0, 0.0, 4.0], 1.0, math.sqrt(7.0) / math.sqrt(3), 2),     # sd of (-1, 0, 4) is sqrt(7); 0 counts
    ([-1.0, math.nan, 0.0, 4.0], 1.0, math.sqrt(7.0) / math.sqrt(3), 2),  # a cell without the figure is left out
])
def test_pool_mean_and_spread_between_cells(pool_bench, differences, mean, se_cells, at_least_zero):
    got = pool_bench.pool(differences)
    assert got["cells"] == len([d for d in differences if not math.isnan(d)])
    assert got["at_least_zero"] == at_least_zero
    assert got["mean"] == pytest.approx(mean)
    assert got["se_cells"] == pytest.approx(se_cells, nan_ok=True)
    assert got["cells_joint"] == 0 and math.isnan(got["se"])  # no bootstrap draws given


def test_pool_joint_se_is_the_spread_of_the_replicates_mean(pool_bench):
    draws = [np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.0, 1.0, 4.0, 3.0])]
    got = pool_bench.pool([1.0, 2.0], draws)
    assert got["se"] == pytest.approx(np.std([1.0, 1.0, 3.0, 3.0], ddof=1))
    assert got["cells_joint"] == 2 and got["mean_joint"] == pytest.approx(1.5)


def test_pool_joint_se_covers_only_the_cells_with_draws(pool_bench):
    """A cell from a CSV summary (no per-row predictions: no draws) joins the mean and se_cells only."""
    draws = [np.array([0.0, 2.0]), None, np.array([1.0, 3.0])]
    got = pool_bench.pool([1.0, 5.0, 2.0], draws)
    assert got["cells"] == 3 and got["mean"] == pytest.approx(8 / 3)
    assert got["cells_joint"] == 2 and got["mean_joint"] == pytest.approx(1.5)
    assert got["se"] == pytest.approx(np.std([0.5, 2.5], ddof=1))


def _cell_difference(pool_bench, task, first, second, labels, draws=1000, seed=0):
    """A cell's difference first - second (points) on every bootstrap replicate of its rows."""
    scores = pool_bench.task_scores(task, [first, second], labels, draws, seed)
    return 100 * (scores[:, 0] - scores[:, 1])


def test_two_perfectly_correlated_cells_pool_to_one_cells_se(pool_bench):
    """Two cells scored on the same validation rows with the same per-row differences: the joint
    bootstrap gives the pooled mean the SE of one cell, not 1/sqrt(2) of it (what sd/sqrt(cells) or
    independent cells would claim)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    first = np.where(rng.random(400) < 0.85, labels, 1 - labels)
    second = np.where(rng.random(400) < 0.80, labels, 1 - labels)
    scores = pool_bench.task_scores("sst2", [first, second, first.copy(), second.copy()], labels, 1000)
    cells = [100 * (scores[:, 0] - scores[:, 1]), 100 * (scores[:, 2] - scores[:, 3])]
    one = float(np.std(cells[0][1:], ddof=1))
    got = pool_bench.pool([c[0] for c in cells], [c[1:] for c in cells])
    assert got["se"] == pytest.approx(one, rel=1e-12)
    assert got["se_cells"] == 0.0  # the old figure sees no noise at all


def test_independent_cells_on_disjoint_rows_pool_to_about_one_over_sqrt2(pool_bench):
    """Two cells on disjoint row sets (resampled independently, as two tasks are): the pooled SE is
    about a cell's SE / sqrt(2)."""
    rng = np.random.default_rng(2)
    cells = []
    for task in ("sst2", "rte"):  # two tasks: disjoint rows, independent resamples within a replicate
        labels = rng.integers(0, 2, 600)
        first = np.where(rng.random(600) < 0.85, labels, 1 - labels)
        second = np.where(rng.random(600) < 0.80, labels, 1 - labels)
        cells.append(_cell_difference(pool_bench, task, first, second, labels, draws=4000))
    single = [float(np.std(c[1:], ddof=1)) for c in cells]
    got = pool_bench.pool([c[0] for c in cells], [c[1:] for c in cells])
    assert got["se"] == pytest.approx(math.sqrt(single[0] ** 2 + single[1] ** 2) / 2, rel=0.06)
    assert got["se"] / (sum(single) / 2) == pytest.approx(1 / math.sqrt(2), rel=0.08)


def test_task_scores_resample_every_model_alike_and_tasks_apart(pool_bench):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    model = rng.integers(0, 2, 50)
    scores = pool_bench.task_scores("sst2", [model, model.copy()], labels, 20)
    assert scores.shape == (21, 2) and np.array_equal(scores[:, 0], scores[:, 1])
    assert scores[0, 0] == pytest.approx(compute_metrics("sst2", model, labels)["primary"])
    other = pool_bench.task_scores("rte", [model], labels, 20)  # same rows, another task: other resamples
    assert not np.array_equal(other[1:, 0], scores[1:, 0])
    again = pool_bench.task_scores("sst2", [model], labels, 20)
    assert np.array_equal(again[:, 0], scores[:, 0])  # the seed decides


@pytest.mark.parametrize("task", ["sst2", "mrpc", "cola"])
def test_task_scores_match_compute_metrics_on_each_resample(pool_bench, task):
    """The counted fast path (accuracy; MRPC's mean of accuracy and F1) and the per-resample path
    (CoLA's MCC) both give compute_metrics' value on each replicate's rows."""
    import zlib

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    models = [rng.integers(0, 2, 60), np.zeros(60, dtype=int), rng.normal(size=(60, 2))]  # ids, no positive, logits
    scores = pool_bench.task_scores(task, models, labels, 8, seed=5)
    samples = np.random.default_rng(np.random.SeedSequence([5, zlib.crc32(task.encode())])).integers(0, 60, (8, 60))
    for r, rows in enumerate([np.arange(60)] + list(samples)):
        for j, model in enumerate(models):
            assert scores[r, j] == pytest.approx(compute_metrics(task, model[rows], labels[rows])["primary"], abs=1e-12)


# --- the choices ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quality():
    return import_bench("search_quality")


@pytest.mark.parametrize("objective, rows, expected", [
    ("selection_loss_calibrated", {"uniform": (0.40, 0.5), "grid": (0.35, 0.6)}, "grid"),    # lowest loss
    ("selection_primary", {"uniform": (0.80, 0.5), "grid": (0.78, 0.4)}, "uniform"),       # highest metric
    ("selection_primary", {"uniform": (0.80, 0.5), "grid": (0.80, 0.4)}, "grid"),          # tie: lower loss
    ("selection_primary", {"uniform": (0.80, 0.5), "grid": (0.80, 0.5)}, "uniform"),       # then the first
    ("selection_primary", {"uniform": (math.nan, 0.1), "grid": (0.70, 0.9)}, "grid"),      # NaN never wins
])
def test_better_on_selection(quality, objective, rows, expected):
    chosen = {arm: pd.Series({objective: value, "selection_loss": loss}) for arm, (value, loss) in rows.items()}
    assert quality.better_on_selection(chosen, objective) == expected


PLANS = [CompressionPlan({"bert.encoder.layer.0.attention.self.query": spec}).to_json(indent=None)
         for spec in ("2:4:int8", "2:4:int4", "4:8:int4", "1:4:int8", "dense:int8", "dense:int4")]


def write_arm(path: Path, labels: np.ndarray, correct: list[float], selection: list[float], seed: int,
              rng: np.random.Generator, choice: dict | None = None) -> Path:
    """A finished arm: one completed trial per ``correct`` rate (validation predictions right on about
    that share of the rows) with ``selection`` its selection_primary (what the arm chooses on)."""
    n = len(correct)
    frame = synthetic_results(seed, n=n, duplicates=0)
    predictions = [np.where(rng.random(len(labels)) < c, labels, 1 - labels) for c in correct]
    primary = [compute_metrics("sst2", p, labels)["primary"] for p in predictions]
    frame = frame.assign(status="completed", error="", ratio_paper=0.9, ratio_storage=0.88, primary=primary,
                         retention=[p / 0.8 for p in primary], dense_primary=0.8, selection_primary=selection,
                         selection_loss=[1 - s for s in selection], plan_json=PLANS[:n],
                         plan_summary=[f"plan {i}" for i in range(n)],
                         predictions=[json.dumps(p.tolist()) for p in predictions])
    config = {"task": "sst2", "target_ratio": 0.875, "seed": seed, "trials": n, "steps": 8, "selection_size": 100,
              "objective": "selection_primary", "prior_weight": 0.0}
    if choice:
        config["choice"] = choice | {"trial_id": frame["trial_id"].iloc[int(np.argmax(selection))]}
    return write_search_dir(path, frame, **config)


@pytest.fixture
def two_runs(tmp_path):
    """Two seeds' runs of one SST-2 cell on a 300-row validation split. Each arm's trials in one
    order by selection_primary; the uniform arm's choice is worse on validation than the grid's,
    but better on the selection rows. Seed 2 repeats seed 1's predictions exactly (same rng)."""
    labels = np.arange(300) % 2
    glue = tmp_path / "glue" / "sst2"
    glue.mkdir(parents=True)
    pd.DataFrame({"sentence": ["a"] * 300, "label": labels, "idx": range(300)}).to_parquet(glue / "validation.parquet")
    runs = []
    for seed in (1, 2):
        rng = np.random.default_rng(0)
        run = tmp_path / f"run{seed}"
        write_arm(run / "sst2-0.875-fine", labels, [0.9, 0.8, 0.85], [0.9, 0.7, 0.8], seed, rng,
                  choice={"runner_up": "x", "lead": 0.05, "se": 0.02})
        write_arm(run / "sst2-0.875-uniform", labels, [0.7, 0.75], [0.9, 0.6], seed, rng)   # chooses 0.7
        write_arm(run / "sst2-0.875-grid", labels, [0.8, 0.6], [0.8, 0.7], seed, rng)       # chooses 0.8
        runs.append(str(run))
    return runs, str(tmp_path / "glue"), labels


def test_measure_chooses_the_baseline_on_the_selection_rows_and_views_the_lead_held_out(pool_bench, two_runs):
    runs, data_dir, labels = two_runs
    cells = pool_bench.collect(runs)
    rows = pool_bench.measure_all(cells, data_dir, draws=200)
    assert len(rows) == 2
    row = rows[0]
    # uniform's choice leads grid's on the selection rows (0.9 against 0.8), though it scores lower on validation
    assert row["baseline"] == "uniform" and row["baseline_valrule"] == "grid"
    assert row["chosen"] == pytest.approx(row["retention_fine"] - row["retention_uniform"])
    assert row["chosen_valrule"] == pytest.approx(row["retention_fine"] - row["retention_grid"])
    assert row["chosen"] > row["chosen_valrule"]
    # the choice's lead: in-sample from search.json, held out: the same two trials on validation
    assert row["choice_lead"] == pytest.approx(5.0) and row["choice_se"] == pytest.approx(2.0)
    done = pool_bench.read_arm(Path(runs[0]) / "sst2-0.875-fine")
    assert (done["chosen"], done["runner_up"]) == (0, 2)  # by selection_primary 0.9, then 0.8 (on another plan)
    first, second = (np.asarray(json.loads(done["done"]["predictions"].iloc[i])) for i in (0, 2))
    expected = 100 * (compute_metrics("sst2", first, labels)["primary"] - compute_metrics("sst2", second, labels)["primary"])
    assert row["choice_heldout"] == pytest.approx(expected)
    assert row["choice_heldout_se"] > 0
    # the two seeds' cells are the same plans on the same rows: pooled, they have one cell's SE
    table = pd.DataFrame(rows)
    for name in ("chosen", "chosen_valrule", "family", "choice_heldout"):
        got = pool_bench.pool(table[name], table[f"{name}_draws"])
        assert got["se"] == pytest.approx(table[f"{name}_se"].iloc[0], rel=1e-9)
        assert got["se_cells"] == pytest.approx(0.0, abs=1e-9)


def test_main_writes_both_rules_and_counts_csv_cells(two_runs, tmp_path):
    runs, data_dir, _ = two_runs
    markdown, table = tmp_path / "pooled.md", tmp_path / "pooled.csv"
    run = subprocess.run([sys.executable, str(SCRIPT), runs[0], "--data-dir", data_dir, "--draws", "50",
                          "--markdown", str(markdown), "--csv", str(table)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "joint bootstrap" in run.stdout and "in-sample" in run.stdout
    text = markdown.read_text()
    assert "| cells | n | chosen: mean | se (joint bootstrap) | se_cells | chosen >= 0 |" in text
    assert "choice lead, in-sample: mean | choice lead, held out: mean |" in text
    written = pd.read_csv(table)
    assert not any(c.endswith("_draws") for c in written.columns)
    # seed 2's cell read back from that CSV: it joins the mean, not the joint bootstrap, and is counted
    run = subprocess.run([sys.executable, str(SCRIPT), runs[1], "--data-dir", data_dir, "--draws", "50",
                          "--cells", str(table.with_name("seed1.csv"))], capture_output=True, text=True)
    assert run.returncode == 2 and "no such file" in run.stderr
    written.assign(seed=1).to_csv(table.with_name("seed1.csv"), index=False)
    written.to_csv(table, index=False)
    run = subprocess.run([sys.executable, str(SCRIPT), runs[1], "--data-dir", data_dir, "--draws", "50",
                          "--cells", str(table.with_name("seed1.csv"))], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "1 of 2 cells come from CSV summaries (--cells) without per-row predictions" in run.stdout
    assert "over the 1 cells with predictions" in run.stdout


def test_a_table_written_before_the_selection_rule_counts_as_the_validation_rule(pool_bench, tmp_path):
    old = pd.DataFrame([{"seed": 1, "task": "sst2", "target": 0.96875, "search_plan": "p", "baseline": "grid",
                         "baseline_plan": "q", "chosen": 1.5, "chosen_se": 1.0, "family_baseline": "grid",
                         "family": 0.5, "family_se": 0.8}])
    old.to_csv(tmp_path / "old.csv", index=False)
    got = pool_bench.earlier_cells(str(tmp_path / "old.csv")).iloc[0]
    assert got["chosen_valrule"] == 1.5 and got["baseline_valrule"] == "grid" and got["arm"] == "search"
    assert math.isnan(got["chosen"]) and math.isnan(got["family"]) and bool(got["from_csv"])


# --- the Markdown tables -------------------------------------------------------------------------------------------

def cell(seed, task, target, chosen, family=0.5, objective="selection_loss_calibrated"):
    return {"run": f"r{seed}", "seed": seed, "task": task, "target": target, "arm": "fine",
            "baselines": "uniform,grid", "objective": objective, "dense": 0.81234, "search_plan": "4:8:int3 x20, 2:8:int2 x16",
            "baseline": "grid", "baseline_plan": "4:8:int2 x36", "chosen": chosen, "chosen_se": 1.0,
            "chosen_valrule": chosen - 1.0, "chosen_valrule_se": 1.1,
            "family_baseline": "grid", "family": family, "family_se": 0.8, "choice_lead": 0.4, "choice_se": 0.3,
            "choice_heldout": -0.1, "choice_heldout_se": 0.2,
            "retention_fine": 97.0 + chosen, "retention_uniform": 95.5, "retention_grid": 97.0}


TABLE = pd.DataFrame([cell(5, "sst2", 0.96875, -0.5, objective="selection_primary"), cell(4, "sst2", 0.96875, 1.5),
                      cell(4, "mrpc", 0.96875, 2.0), cell(4, "sst2", 0.9375, 3.0)])


def test_groups_pool_every_cell_each_target_and_each_task(pool_bench):
    got = {key: sorted(group["chosen"]) for key, group in pool_bench.groups(TABLE)}
    assert got == {("all", ""): [-0.5, 1.5, 2.0, 3.0], ("all", 0.9375): [3.0], ("all", 0.96875): [-0.5, 1.5, 2.0],
                   ("mrpc", 0.96875): [2.0], ("sst2", 0.9375): [3.0], ("sst2", 0.96875): [-0.5, 1.5]}
    one_target = TABLE[TABLE["target"] == 0.96875]
    assert [key for key, _ in pool_bench.groups(one_target)] == [("all", ""), ("mrpc", 0.96875), ("sst2", 0.96875)]


def test_markdown_rows_sorted_with_each_arm_both_rules_and_the_leads(pool_bench):
    text = pool_bench.markdown(TABLE)
    lines = text.splitlines()
    assert lines[0].startswith("| target | task | seed | dense | chose on | fine: chosen plan | fine | uniform | grid |")
    assert "| choice lead, selection rows (in-sample) | choice lead, validation (held out) |" in lines[0]
    rows = lines[2:6]
    assert [r.split(" | ")[:3] for r in rows] == [["| 93.75%", "sst2", "4"], ["| 96.875%", "mrpc", "4"],
                                                   ["| 96.875%", "sst2", "4"], ["| 96.875%", "sst2", "5"]]
    assert "| 0.8123 | calibrated loss |" in rows[1] and "| metric |" in rows[3]
    assert ("| 96.50% | 95.50% | 97.00% | grid: 4:8:int2 x36 | **-0.50 +- 1.00** | -1.50 +- 1.10 | +0.50 +- 0.80 "
            "| +0.40 +- 0.30 | -0.10 +- 0.20 |") in rows[3]
    pooled = [line for line in lines if line.startswith("| all |")]
    # no draws in a hand-made table: the joint SE is NaN; se_cells is sd(-0.5, 1.5, 2, 3) / 2 = 0.736
    assert pooled[0] == "| all | 4 | +1.50 | - | 0.74 | 3 of 4 | +0.50 | - | 0.74 |"
    assert pooled[1].startswith("| all | 4 | +0.50 |") and pooled[1].endswith("| +0.40 | -0.10 | - |")


def test_markdown_marks_cells_read_from_an_older_table(pool_bench):
    older = TABLE.drop(columns=["objective", "dense", "retention_uniform", "choice_heldout"]).head(1)
    row = pool_bench.markdown(older).splitlines()[2]
    assert "| nan | ? |" in row and "| nan% |" in row and row.endswith("| - |")


@pytest.mark.parametrize("flag", ["--markdown", "--csv"])
def test_an_output_in_a_missing_directory_is_refused_before_any_work(tmp_path, flag):
    out = tmp_path / "missing" / "table.out"
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--data-dir", str(tmp_path), flag, str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == f"cannot write {out}: its directory does not exist"
    assert not out.parent.exists()
