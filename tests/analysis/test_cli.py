"""nxmi pareto / nxmi export on a real small search, the export -> nxmi train round trip, and
bad input (one line on stderr, exit code 2, nothing written)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import matplotlib.image
import pytest

from nxmiformer.analysis import load_results, pareto_front, plot_plan, select
from nxmiformer.cli import main
from nxmiformer.compression import CompressionPlan
from tests.analysis.conftest import synthetic_results, write_search_dir


def png_shape(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    return matplotlib.image.imread(path).shape[:2]


def pixels(fig, dpi: int = 100) -> tuple[int, int]:
    width, height = fig.get_size_inches() * dpi
    return round(height), round(width)


def test_pareto_command(search_dir, tmp_path, capsys):
    plot, heatmap = tmp_path / "front.png", tmp_path / "pics" / "plan.png"
    assert main(["pareto", "--results", str(search_dir), "--target-ratio", "0.875", "--plot", str(plot),
                 "--heatmap", str(heatmap)]) == 0
    out = capsys.readouterr().out
    results = load_results(search_dir)
    config = json.loads((search_dir / "search.json").read_text())
    objective, weight = config["objective"], config["prior_weight"]
    assert objective == "selection_loss_calibrated"  # the search's default
    front, chosen = pareto_front(results), select(results, 0.875, metric=objective, prior_weight=weight)
    assert (f"Pareto front (paper ratio vs validation primary; completed trials): {len(front)} plan(s) at "
            f"{front['ratio_paper'].round(6).nunique()} distinct ratio(s)") in out
    assert all(trial in out for trial in front["trial_id"])
    # the selection decides on the search's objective, on the selection rows, as nxmi search did
    how = objective + (f" with prior weight {weight:g} on the proxy cost" if weight else "")
    assert f"selected on {how} for >= 87.50% (paper): trial {chosen['trial_id']}" in out
    assert png_shape(plot) == (480, 1400)  # two panels: the selection objective, the validation metric
    assert png_shape(heatmap) == pixels(plot_plan(chosen))


def test_pareto_without_a_target_draws_the_best_front_plan(search_dir, tmp_path, capsys):
    heatmap = tmp_path / "plan.png"
    assert main(["pareto", "--results", str(search_dir), "--convention", "storage", "--metric", "retention",
                 "--heatmap", str(heatmap)]) == 0
    out = capsys.readouterr().out
    best = pareto_front(load_results(search_dir), "storage", "retention").iloc[0]
    assert "selected" not in out and f"plan of trial {best['trial_id']}" in out
    assert png_shape(heatmap) == pixels(plot_plan(best))


def test_export_then_train_round_trip(search_dir, tmp_path, capsys):
    out = tmp_path / "best_plan.json"
    assert main(["export", "--results", str(search_dir), "--target-ratio", "0.875", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    stored = json.loads(out.read_text())
    assert stored["schema"] == "nxmiformer.plan" and stored["version"] == 1
    plan, config = CompressionPlan.load(out), json.loads((search_dir / "search.json").read_text())
    chosen = select(load_results(search_dir), 0.875, metric=config["objective"],  # the search's own rule
                    prior_weight=config["prior_weight"])
    assert plan == CompressionPlan.from_json(chosen["plan_json"])

    meta = plan.meta
    assert (meta["ratio_paper"], meta["ratio_storage"]) == (chosen["ratio_paper"], chosen["ratio_storage"])
    assert meta["selection"] == {"target_ratio": 0.875, "convention": "paper", "metric": "selection_loss_calibrated",
                                 "prior_weight": config["prior_weight"], "include_stopped": False}
    assert meta["search"]["dir"] == str(search_dir.resolve())
    assert {k: meta["search"][k] for k in ("task", "model", "data_dir", "max_length", "seed")} == {
        k: config[k] for k in ("task", "model", "data_dir", "max_length", "seed")}
    assert meta["trial"]["trial_id"] == chosen["trial_id"] and meta["trial"]["kind"] == chosen["kind"]
    assert meta["trial"]["primary"] == chosen["primary"] and meta["trial"]["retention"] == chosen["retention"]
    assert meta["trial"]["steps"] == 6 and meta["trial"]["dense_primary"] == chosen["dense_primary"]
    assert meta["train_command"] in printed

    # the stored command trains the plan fully: no --train-size / --eval-size / --steps limits
    argv = shlex.split(meta["train_command"])
    assert argv[:2] == ["nxmi", "train"] and not {"--train-size", "--eval-size", "--steps"} & set(argv)
    assert argv[argv.index("--plan") + 1] == str(out) and argv[argv.index("--model") + 1] == config["model"]
    assert argv[argv.index("--max-length") + 1] == "16" and argv[argv.index("--data-dir") + 1] == config["data_dir"]
    # run it, shortened for the test
    assert main([*argv[1:], "--steps", "2", "--train-size", "16"]) == 0
    trained = Path(argv[argv.index("--out") + 1])
    assert trained == tmp_path / "best_plan-trained"
    assert CompressionPlan.load(trained / "plan.json") == plan
    assert CompressionPlan.load(trained / "plan.json").meta == meta
    assert json.loads((trained / "metrics.json").read_text())["ratio_paper"] == pytest.approx(meta["ratio_paper"])

    # an existing plan file is never overwritten
    before = out.read_text()
    capsys.readouterr()
    assert main(["export", "--results", str(search_dir), "--target-ratio", "0.8", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize("stored,flag,weight", [
    (None, None, 0.0),  # a search from before the prior: the metric alone
    (1.5, None, 1.5),  # the search's own prior weight
    (1.5, "0", 0.0),  # the flag wins
    (0.0, "2", 2.0),
])
def test_export_and_pareto_choose_with_the_searchs_prior_weight(stored, flag, weight, tmp_path, capsys):
    config = {"objective": "selection_loss_calibrated"} | ({} if stored is None else {"prior_weight": stored})
    search = write_search_dir(tmp_path / "search", synthetic_results(1), **config)
    extra = [] if flag is None else ["--prior-weight", flag]
    expected = select(load_results(search), 0.85, metric="selection_loss_calibrated", prior_weight=weight)
    assert main(["export", "--results", str(search), "--target-ratio", "0.85", "--out", str(tmp_path / "p.json"),
                 *extra]) == 0
    meta = CompressionPlan.load(tmp_path / "p.json").meta
    assert meta["selection"]["prior_weight"] == weight and meta["trial"]["trial_id"] == expected["trial_id"]
    assert main(["pareto", "--results", str(search), "--target-ratio", "0.85", *extra]) == 0
    out = capsys.readouterr().out
    how = "selection_loss_calibrated" + (f" with prior weight {weight:g} on the proxy cost" if weight else "")
    assert f"selected on {how} for >= 85.00% (paper): trial {expected['trial_id']}" in out


def test_a_strong_prior_changes_the_choice_on_these_results(tmp_path):
    # the parametrized test above would pass with the flag ignored if the prior never moved the choice
    results = load_results(write_search_dir(tmp_path / "search", synthetic_results(1)))
    plain = select(results, 0.85, metric="selection_loss_calibrated")
    strong = select(results, 0.85, metric="selection_loss_calibrated", prior_weight=2.0)
    assert plain["trial_id"] != strong["trial_id"] and strong["proxy_cost"] < plain["proxy_cost"]


@pytest.fixture
def synthetic_dir(tmp_path):
    return write_search_dir(tmp_path / "search", synthetic_results(0))


COMMON_BAD = [
    ("unknown convention", ["--target-ratio", "0.85", "--convention", "bytes"], "unknown ratio convention 'bytes'; allowed: paper, storage"),
    ("unknown metric", ["--target-ratio", "0.85", "--selection-metric", "f1"],
     "unknown metric 'f1'; allowed: primary, retention, selection_primary, selection_loss, selection_loss_calibrated, selection_kl"),
    ("ratio above 1", ["--target-ratio", "1.5"], "target ratio must be a number in (0, 1), got 1.5"),
    ("ratio 0", ["--target-ratio", "0"], "(0, 1), got 0.0"),
    ("ratio 1", ["--target-ratio", "1"], "(0, 1), got 1.0"),
    ("target unmet", ["--target-ratio", "0.99"], "highest reached is 0.9500"),
    ("empty results", ["--results", "{empty}", "--target-ratio", "0.85"], "no trials in"),
    ("missing dir", ["--results", "{tmp}/nope", "--target-ratio", "0.85"], "search output directory not found"),
    ("negative prior weight", ["--target-ratio", "0.85", "--prior-weight", "-1"],
     "prior_weight must be a finite number >= 0 (0: the metric alone), got -1.0"),
    ("NaN prior weight", ["--target-ratio", "0.85", "--prior-weight", "nan"], "got nan"),
]
PARETO_BAD = [*COMMON_BAD, ("not a png", ["--plot", "{tmp}/front.jpg"], "--plot must name a .png file"),
              ("bad target list", ["--target-ratio", "0.8:0.9"], "bad target ratio '0.8:0.9'; allowed: a ratio in (0, 1)")]
EXPORT_BAD = [
    *COMMON_BAD,
    ("not json", ["--target-ratio", "0.85", "--out", "{tmp}/best_plan"], "must be a .json file"),
    ("existing out", ["--target-ratio", "0.85", "--out", "{tmp}/taken.json"], "taken.json already exists"),
]


def _run_bad(command, argv, needle, synthetic_dir, empty_search_dir, tmp_path, capsys, defaults):
    argv = [a.format(tmp=tmp_path, empty=empty_search_dir) for a in argv]
    if "--results" not in argv:
        argv = ["--results", str(synthetic_dir), *argv]
    full = [command, *argv] + [a for flag, value in defaults.items() if flag not in argv for a in (flag, value)]
    (tmp_path / "taken.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(full) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and err.startswith(f"nxmi {command}: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert (tmp_path / "taken.json").read_text() == "{}"


@pytest.mark.parametrize("label,argv,needle", PARETO_BAD, ids=[b[0] for b in PARETO_BAD])
def test_bad_pareto_input(label, argv, needle, synthetic_dir, empty_search_dir, tmp_path, capsys):
    defaults = {"--plot": str(tmp_path / "front.png"), "--heatmap": str(tmp_path / "plan.png")}
    _run_bad("pareto", argv, needle, synthetic_dir, empty_search_dir, tmp_path, capsys, defaults)


@pytest.mark.parametrize("label,argv,needle", EXPORT_BAD, ids=[b[0] for b in EXPORT_BAD])
def test_bad_export_input(label, argv, needle, synthetic_dir, empty_search_dir, tmp_path, capsys):
    _run_bad("export", argv, needle, synthetic_dir, empty_search_dir, tmp_path, capsys,
             {"--out": str(tmp_path / "best_plan.json")})


@pytest.mark.parametrize("argv", [["export", "--results", "x", "--target-ratio", "abc", "--out", "p.json"],
                                  ["export", "--results", "x", "--out", "p.json"], ["pareto"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--help" in err


@pytest.mark.parametrize("given", [None, "0.8,0.875"])
def test_pareto_of_a_search_of_several_targets_chooses_at_each(given, tmp_path, capsys):
    table = synthetic_results(0)
    search = write_search_dir(tmp_path / "front", table, target_ratio=[0.8, 0.875],
                              objective="selection_loss_calibrated", prior_weight=1.0)
    plot = tmp_path / "front.png"
    extra = ["--target-ratio", given] if given else []
    assert main(["pareto", "--results", str(search), *extra, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    results = load_results(search)
    for target in (0.8, 0.875):
        chosen = select(results, target, metric="selection_loss_calibrated", prior_weight=1.0)
        assert f"for >= {target:.2%} (paper): trial {chosen['trial_id']} " in out
    assert plot.is_file() and "distinct ratio(s)" in out
