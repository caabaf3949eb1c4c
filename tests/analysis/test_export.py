"""export_plan and train_command on synthetic searches (the real round trip is in test_cli.py)."""

from __future__ import annotations

import shlex

import pytest

from nxmiformer.analysis import export_plan, load_results, select, train_command
from nxmiformer.compression import CompressionPlan
from nxmiformer.errors import NxmiError
from tests.analysis.conftest import PLAN, synthetic_results, write_search_dir

COMMANDS = [
    ("defaults omitted", {"task": "sst2", "model": "default", "max_length": 64, "seed": 0, "kd_alpha": 0.0,
                          "data_dir": None, "cache_dir": None},
     "nxmi train --task sst2 --model default --plan p.json --max-length 64 --seed 0 --out o"),
    ("everything given", {"task": "mrpc", "model": "/m dir", "data_dir": "/glue", "max_length": 128, "seed": 3,
                          "dense_epochs": 2.0, "batch_size": 16, "lr": 5e-5, "kd_alpha": 0.5, "cache_dir": "/c",
                          "train_size": 4000, "eval_size": 500, "steps": 200},
     "nxmi train --task mrpc --model '/m dir' --plan p.json --data-dir /glue --max-length 128 --seed 3 "
     "--dense-epochs 2.0 --batch-size 16 --lr 5e-05 --kd-alpha 0.5 --cache-dir /c --out o"),
]


@pytest.mark.parametrize("label,config,expected", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_train_command(label, config, expected):
    assert train_command(config, "p.json", "o") == expected


def test_export_records_provenance(tmp_path):
    search = write_search_dir(tmp_path / "search", synthetic_results(0), model="/models/tiny", kd_alpha=0.0,
                              provenance={"model_fingerprint": "f00d", "dense_primary": 0.9})
    results = load_results(search)
    plan = export_plan(results, 0.85, "storage", tmp_path / "out" / "plan.json", metric="retention")
    chosen = select(results, 0.85, "storage", "retention")
    assert plan == PLAN and CompressionPlan.load(tmp_path / "out" / "plan.json").meta == plan.meta
    assert plan.meta["search"]["model_fingerprint"] == "f00d" and plan.meta["search"]["model"] == "/models/tiny"
    assert plan.meta["trial"]["trial_id"] == chosen["trial_id"] and plan.meta["trial"]["dense_primary"] == 0.9
    assert plan.meta["selection"]["convention"] == "storage" and plan.meta["selection"]["metric"] == "retention"
    argv = shlex.split(plan.meta["train_command"])
    assert argv[argv.index("--out") + 1] == str(tmp_path / "out" / "plan-trained")
    assert "--data-dir" not in argv and "--kd-alpha" not in argv


def test_export_needs_the_search_dir(tmp_path):
    with pytest.raises(NxmiError, match="load_results"):
        export_plan(synthetic_results(0), 0.85, "paper", tmp_path / "plan.json")
    assert not (tmp_path / "plan.json").exists()
