"""bench/: the product benchmarks only, each importing public names of nxmiformer that exist; every
script parses --help; search_quality.py's baselines repeat the kept records' menus; and the pooled
search-quality table committed under bench/results is what the kept records give."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.analysis.conftest import import_bench

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SCRIPTS = ("cpu_serving", "front_search", "gpu_check", "own_data", "pack_size", "profile_cache", "ray_scaling", "recovery", "scale_estimate",
           "search_quality", "search_quality_pool", "step_overhead")


def test_bench_holds_the_product_benchmarks():
    assert sorted(p.stem for p in BENCH.glob("*.py")) == sorted(("_common",) + SCRIPTS)


@pytest.mark.parametrize("script", ("_common",) + SCRIPTS)
def test_scripts_import_only_public_names_that_exist(script):
    """No ``from nxmiformer... import _x``, no ``module._x``, and every imported module and name
    exists (an import inside a function fails only when it runs)."""
    tree = ast.parse((BENCH / f"{script}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nxmiformer"):
            module = importlib.import_module(node.module)
            assert not any(part.startswith("_") for part in node.module.split(".")), node.module
            for alias in node.names:
                assert not alias.name.startswith("_"), f"{script}: {node.module}.{alias.name}"
                assert hasattr(module, alias.name), f"{script}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("nxmiformer") and "._" in a.name for a in node.names)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            assert node.attr == "_asdict", f"{script} line {node.lineno}: {ast.unparse(node)}"  # namedtuple API


@pytest.mark.parametrize("args", [[f"{s}.py", "--help"] for s in SCRIPTS]
                         + [["recovery.py", "--specs", "2:4:int8,2:4:int4", "--scales", "lsq", "--seeds", "0", "--help"]])
def test_scripts_parse_help(args):
    """Every script starts and parses its arguments (the Makefile's bench target among them)."""
    run = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage:" in run.stdout


@pytest.fixture(scope="module")
def quality():
    return import_bench("search_quality")


def test_auto_menu_is_the_kept_baselines_menu(quality):
    """The former --menu auto, computed in the bench, is the option list of every kept uniform and grid arm."""
    assert quality.auto_menu(0.96875) == ("dense:int2", "4:8:int4", "2:4:int4", "2:8:int4", "1:4:int4", "4:8:int2",
                                          "2:4:int2", "1:8:int8", "1:8:int4", "1:4:int2", "2:8:int2", "1:8:int2")
    kept = sorted(RESULTS.glob("runs/*/*-uniform/search.json")) + sorted(RESULTS.glob("runs/*/*-grid/search.json"))
    assert kept
    for path in kept:
        stored = json.loads(path.read_text())
        assert list(quality.auto_menu(stored["target_ratio"])) == list(stored["options"]), path


def test_arm_options(quality):
    assert quality.arm_options("grid", 0.9375) == quality.auto_menu(0.9375)
    assert quality.arm_options("uniform", 0.9375, "fine") is None
    assert quality.arm_options("fine", 0.9375) is None  # the search's default menu
    from nxmiformer.search import SearchConfig

    config = SearchConfig(out="x", target_ratio=0.96875, kinds=("grid",), options=quality.arm_options("grid", 0.96875))
    assert config.options == quality.auto_menu(0.96875)


POOLED_RUNS = ([f"search_quality_9375_seed{s}" for s in (4, 5, 6, 7)]
               + [f"search_quality_96875_seed{s}" for s in range(4, 17)])


def test_the_kept_runs_are_the_pooled_tables():
    assert sorted(p.name for p in (RESULTS / "runs").iterdir()) == sorted(POOLED_RUNS)


def test_the_committed_pooled_table_is_what_the_kept_records_give(tmp_path):
    """The README's table (bench/results/search_quality_pooled.md), computed again from the kept runs."""
    glue = ROOT.parent / "shared" / "data" / "glue"
    if not (glue / "sst2").is_dir() or not (glue / "mrpc").is_dir():
        pytest.skip(f"GLUE validation labels not at {glue}")
    out = tmp_path / "pooled.md"
    run = subprocess.run([sys.executable, str(BENCH / "search_quality_pool.py"),
                          *(str(RESULTS / "runs" / r) for r in POOLED_RUNS), "--data-dir", str(glue),
                          "--markdown", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    assert out.read_text() == (RESULTS / "search_quality_pooled.md").read_text()


@pytest.mark.parametrize("arm", ["fine", "optuna", "uniform", "grid"])
def test_every_arm_is_a_valid_search(quality, tmp_path, arm):
    """Each arm's SearchConfig is accepted by this nxmiformer (no removed option), with the arm's
    kinds and menu and the same settings otherwise."""
    import argparse

    args = argparse.Namespace(data_dir=str(tmp_path), train_size=2000, selection_size=500, seed=14, budget=6,
                              stage2=2, steps=120, calib_size=128, cache_dir=None, proxy="fisher",
                              baseline_menu="auto", oneshot=False)
    config = quality.arm_config(args, "sst2", 0.96875, arm, tmp_path)
    assert config.out == str(tmp_path / f"sst2-0.96875-{arm}") and config.kinds == quality.ARMS[arm]
    assert (config.trials, config.refine_trials) == ((4, 2) if arm == "optuna" else (6, 0))
    assert config.asha is False and config.eval_size is None and config.oneshot_profile is False
    if arm in quality.BASELINES:
        assert config.options == quality.auto_menu(0.96875)
    else:
        from nxmiformer.search import menu_for

        assert config.menu == "fine" and config.options == menu_for("fine", 32 * (1 - 0.96875))


HV_CASES = [  # (ratio, retention, status) points; the hypervolume by a fine grid count is the reference
    ("one point", [(0.9, 0.95, "completed")]),
    ("a staircase", [(0.875, 1.0, "completed"), (0.9375, 0.97, "completed"), (0.96875, 0.9, "completed")]),
    ("dominated and stopped points add nothing", [(0.9, 0.95, "completed"), (0.88, 0.9, "completed"),
                                                  (0.95, 0.99, "stopped")]),
    ("below the reference", [(0.84, 0.99, "completed"), (0.9, 0.79, "completed")]),
]


@pytest.mark.parametrize("label,points", HV_CASES, ids=[c[0] for c in HV_CASES])
def test_front_search_hypervolume_matches_a_grid_count(label, points):
    import numpy as np
    import pandas as pd

    front = import_bench("front_search")
    table = pd.DataFrame(points, columns=["ratio_paper", "retention", "status"])
    x, y = np.meshgrid(np.linspace(0.85, 1.0, 601)[:-1] + 0.000125, np.linspace(0.8, 1.05, 1001)[:-1] + 0.000125)
    done = table[table["status"] == "completed"]
    covered = np.zeros_like(x, dtype=bool)
    for r, m in zip(done["ratio_paper"], done["retention"]):
        covered |= (x <= r) & (y <= m)
    expected = covered.mean() * 0.15 * 0.25
    assert front.hypervolume(table, 0.85, 0.80) == pytest.approx(expected, abs=2e-4)
