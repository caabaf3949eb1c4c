"""Fixtures of the analysis tests: synthetic results tables, and one real small search."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nxmiformer.compression import CompressionPlan
from nxmiformer.records import RECORD_VERSION, TrialRecord
from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert, write_synthetic_task

MENU = ("dense", "dense:int8", "2:4:int8", "2:4:int4", "4:8:int4", "1:4:int8")
RESULT_COLUMNS = TrialRecord.columns()
KINDS = ("optimal", "diverse", "grid", "uniform")
PLAN = CompressionPlan({"bert.encoder.layer.0.attention.self.query": "2:4:int8",
                        "bert.encoder.layer.1.output.dense": "dense:int4"})


def synthetic_results(seed: int, n: int = 30, ratio_levels: int | None = 5, metric_levels: int | None = 6,
                      duplicates: int = 3) -> pd.DataFrame:
    """A random results table in the runner's schema.

    ``*_levels`` draw ratios / metrics from that many values (ties), ``None`` from a continuum;
    ``duplicates`` rows are exact copies (but the trial id) of others. About 20% of trials are
    stopped, 10% failed (no metrics), and a few completed ones carry a NaN metric.
    """
    rng = np.random.default_rng(seed)

    def draw(levels, low, high):
        return rng.choice(np.linspace(low, high, levels), n) if levels else rng.uniform(low, high, n)

    paper = draw(ratio_levels, 0.80, 0.95)
    storage = paper - draw(ratio_levels, 0.01, 0.04)
    primary = draw(metric_levels, 0.5, 0.9)
    status = rng.choice(["completed", "stopped", "error"], n, p=[0.7, 0.2, 0.1])
    primary = np.where(status == "error", np.nan, primary)
    primary[rng.choice(n, 2, replace=False)] = np.nan  # completed or not, a trial without a metric
    frame = pd.DataFrame({
        "trial_id": [f"t{i:03d}" for i in range(n)], "status": status,
        "error": np.where(status == "error", "RuntimeError: boom", ""), "kind": rng.choice(KINDS, n),
        "heuristic_score": rng.uniform(0, 1, n), "proxy_cost": rng.uniform(0, 1, n), "plan_json": PLAN.to_json(indent=None), "plan_summary": PLAN.summary(),
        "ratio_paper": paper, "ratio_storage": storage, "meets_target": paper >= 0.875, "target_ratio": 0.875,
        "primary": primary,
        "retention": primary / 0.9, "dense_primary": 0.9, "metrics_json": "{}", "steps": 8, "wall_time": 1.0,
        "node_id": "", "selection_primary": primary - rng.uniform(0, 0.05, n), "selection_loss": 1.0 - primary,
        "selection_loss_calibrated": 0.9 - primary,
        "selection_kl": rng.uniform(0, 0.3, n), "admm_distance": rng.uniform(0, 0.5, n), "admm_mask_agreement": rng.uniform(0.7, 1.0, n),
        "duplicate_of": "", "predictions": "", "selection_predictions": "", "record_version": RECORD_VERSION,
    })
    copies = frame.sample(duplicates, random_state=seed).assign(trial_id=lambda f: f["trial_id"] + "-copy")
    return pd.concat([frame, copies], ignore_index=True)[RESULT_COLUMNS]


def write_search_dir(path: Path, table: pd.DataFrame, **config) -> Path:
    """A search output directory holding ``table`` and a search.json of ``config``."""
    path.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path / "results.parquet", index=False)
    defaults = {"task": "sst2", "target_ratio": 0.875, "convention": "paper", "model": "default",
                "data_dir": None, "max_length": 64, "seed": 0}
    (path / "search.json").write_text(json.dumps(defaults | config))
    return path


@pytest.fixture(scope="session")
def search_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """One real small search (4 trials of 6 steps on a tiny BERT and synthetic SST-2 rows), run
    once per session on a local 2-CPU Ray that is shut down right after."""
    ray = pytest.importorskip("ray")
    from nxmiformer.search import SearchConfig, run_search

    root = tmp_path_factory.mktemp("analysis-search")
    model_dir = root / "model"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    write_synthetic_task(root / "glue", "sst2")
    config = SearchConfig(out=str(root / "search"), task="sst2", target_ratio=0.875, model=str(model_dir),
                          data_dir=str(root / "glue"), max_length=16, train_size=None, eval_size=None, trials=4,
                          steps=6, batch_size=8, lr=1e-3, options=MENU, calib_size=8, selection_size=8, dense_epochs=0.5,
                          asha=False, profile_workers=0, cache_dir=str(root / "cache"), concurrency=2)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        run_search(config, progress=False)
    finally:
        if started:
            ray.shutdown()
    return root / "search"


@pytest.fixture
def empty_search_dir(tmp_path) -> Path:
    """A search output directory whose results table has no rows."""
    return write_search_dir(tmp_path / "empty-search", pd.DataFrame(columns=RESULT_COLUMNS))


BENCH = Path(__file__).resolve().parents[2] / "bench"


def import_bench(name: str):
    """A ``bench/`` script imported as a module (the bench directory on ``sys.path`` while it
    loads, as when the script runs)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
