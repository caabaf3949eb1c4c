"""The search end to end on a tiny model and synthetic SST-2 rows, on local and 2-node Ray."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from nxmiformer.cli import main
from nxmiformer.compression import CompressionPlan
from nxmiformer.search import SearchConfig, run_search
from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert, write_synthetic_task

ray = pytest.importorskip("ray")
from tests.faults import inject  # noqa: E402  (needs ray)

MENU = ("dense", "dense:int8", "2:4:int8", "2:4:int4", "4:8:int4", "1:4:int8")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("search")
    model_dir = root / "model"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    write_synthetic_task(root / "glue", "sst2")
    return root, model_dir


def config(assets, out, **changes):
    root, model_dir = assets
    base = dict(out=str(out), task="sst2", target_ratio=0.875, model=str(model_dir), data_dir=str(root / "glue"),
                max_length=16, train_size=None, eval_size=None, trials=4, steps=8, batch_size=8, lr=1e-3,
                options=MENU, calib_size=8, selection_size=8, dense_epochs=0.5, profile_workers=0, cache_dir=str(root / "cache"), concurrency=2)
    return SearchConfig(**(base | changes))


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_search_end_to_end(local_ray, assets, tmp_path):
    cfg = config(assets, tmp_path / "run", refine_trials=2)
    result = run_search(cfg, progress=False)
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == 6 and list(table.columns) == list(result.results.columns)
    assert table["trial_id"].is_unique
    assert set(table["status"]) <= {"completed", "stopped"}
    assert (table["ratio_paper"] >= 0.875 - 1e-9).all() and table["meets_target"].all()
    assert {"optimal", "grid", "uniform"} <= set(table["kind"])
    # stage 2: Optuna-sampled per-group plans, repaired to the constraint, measured like the rest
    refined = table[table["kind"] == "refined"]
    assert len(refined) == 2 and refined["primary"].notna().all()
    assert len(pd.read_parquet(tmp_path / "run" / "stage1.parquet")) == 4
    # the diverse plan changes at least a twelfth of the 12 modules against the optimum
    candidates = pd.read_parquet(tmp_path / "run" / "candidates.parquet")
    het = [CompressionPlan.from_json(j) for j in candidates.loc[candidates["kind"].isin(["optimal", "diverse"]), "plan_json"]]
    assert len(het) == 2 and sum(het[0].spec_for(m) != het[1].spec_for(m) for m in set(het[0]) | set(het[1])) >= 1
    provenance = json.loads((tmp_path / "run" / "search.json").read_text())["provenance"]
    assert provenance["dense_primary"] == result.results["dense_primary"].iloc[0]
    assert len(provenance["model_fingerprint"]) == 16 and provenance["dense_path"]
    for plan_json in table["plan_json"]:
        CompressionPlan.from_dict(json.loads(plan_json))  # every row carries a loadable plan
    assert result.best is not None and result.best["status"] == "completed"
    # decided on the selection rows (the objective), never on the validation rows it reports
    done = table[table["status"] == "completed"]
    measures = ["selection_primary", "selection_loss", "selection_loss_calibrated", "selection_kl"]
    assert done[measures].notna().all().all()
    n_val = len(pd.read_parquet(assets[0] / "glue" / "sst2" / "validation.parquet"))
    assert done["predictions"].map(lambda p: len(json.loads(p))).eq(n_val).all()  # for paired comparisons
    stored = json.loads((tmp_path / "run" / "search.json").read_text())
    assert stored["objective"] == "selection_loss_calibrated" and stored["prior_weight"] == cfg.prior_weight
    by_objective = done[done["selection_loss_calibrated"] == done["selection_loss_calibrated"].min()]
    if cfg.prior_weight == 0:  # the objective alone
        assert result.best["trial_id"] in set(by_objective["trial_id"])
    else:  # the rule written out: z-scores over the completed trials
        def z(column):
            return (done[column] - done[column].mean()) / done[column].std(ddof=0)
        score = -z("selection_loss_calibrated") - cfg.prior_weight * z("proxy_cost")
        assert result.best["trial_id"] == done.loc[score.idxmax(), "trial_id"]
    assert stored["selection_size"] == 8 and stored["proxy"] == "fisher"
    # the selection rows' predictions give the chosen trial's lead over the runner-up a paired SE
    assert done["selection_predictions"].map(lambda p: len(json.loads(p))).eq(8).all()
    choice = stored["choice"]
    runner_up = done.set_index("trial_id").loc[choice["runner_up"]]
    assert choice["trial_id"] == result.best["trial_id"] and runner_up["plan_json"] != result.best["plan_json"]
    assert choice["lead"] == pytest.approx(result.best["selection_primary"] - runner_up["selection_primary"])
    assert choice["se"] >= 0 and choice["rows"] == 8  # the lead is in the task metric: it may be negative
    # every plan priced by the search's proxy, whichever stage made it; stage 1 ranked its candidates by the same sum
    assert table["proxy_cost"].notna().all()
    stage1 = table[table["kind"] != "refined"]
    assert stage1["proxy_cost"].to_numpy() == pytest.approx(stage1["heuristic_score"].to_numpy(), rel=1e-9)
    # a prior on that cost moves the choice toward the cheapest plan; weighted heavily, it is the cheapest plan
    import dataclasses

    from nxmiformer.search.report import best_trial

    heavy = best_trial(table, dataclasses.replace(cfg, prior_weight=1e6))
    assert heavy["proxy_cost"] == done["proxy_cost"].min()
    # nxmi search and nxmi export name the same plan: one selection rule
    from nxmiformer.analysis import export_plan, load_results

    exported = export_plan(load_results(tmp_path / "run"), cfg.target_ratio, cfg.convention, tmp_path / "best.json")
    assert exported.meta["trial"]["trial_id"] == result.best["trial_id"]
    assert exported.to_json() == CompressionPlan(CompressionPlan.from_json(result.best["plan_json"]), meta=exported.meta).to_json()
    # a second search with the same model and task pays nothing for warm start and profile
    from nxmiformer.search import profile_sensitivity
    from nxmiformer.trials import finetune_dense

    dense = finetune_dense(cfg.data_config(), cfg.dense_config(), cfg.cache_root(), progress=False)
    assert dense.cached
    again = profile_sensitivity(dense.path, cfg.data_config(), cfg.options, cfg.calib_size, cache_dir=cfg.cache_root(),
                                progress=False)
    assert again.computed == 0 and again.cached == 12 * len(MENU)


def test_interrupted_search_resumes_without_losing_finished_trials(local_ray, assets, tmp_path):
    out = tmp_path / "run"
    marker, starts = tmp_path / "failed-once", tmp_path / "starts.log"
    faults = inject(out, marker=marker, after_reports=2, candidate=1, start_log=starts)
    with pytest.raises(ValueError, match="--resume"):
        run_search(config(assets, out, concurrency=1, asha=False, fail_fast=True), progress=False, wrap_trainable=faults)
    assert marker.exists() and not (out / "results.parquet").exists()
    # the resumed search reads its configuration (fail_fast included) from search.json
    result = run_search(config(assets, out, concurrency=1, asha=False), resume=True, progress=False,
                        wrap_trainable=faults)
    table = result.results
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    assert table["trial_id"].is_unique
    started = [line.split() for line in starts.read_text().splitlines()]
    assert [s[0] for s in started].count("0") == 1  # the trial that finished before the crash never re-ran
    assert ["1", "0"] in started and any(s[0] == "1" and s[1] != "0" for s in started)  # 1 resumed from its checkpoint


def test_a_search_interrupted_in_the_optuna_stage_resumes_it(local_ray, assets, tmp_path):
    out = tmp_path / "run"
    marker, starts = tmp_path / "failed-once", tmp_path / "starts.log"
    faults = inject(out, marker=marker, after_reports=1, kind="refined", start_log=starts)
    with pytest.raises(ValueError, match="--resume"):
        run_search(config(assets, out, trials=2, refine_trials=2, concurrency=1, asha=False, fail_fast=True),
                   progress=False, wrap_trainable=faults)
    assert marker.exists() and (out / "stage1.parquet").exists() and not (out / "results.parquet").exists()
    result = run_search(config(assets, out, trials=2, refine_trials=2, concurrency=1, asha=False), resume=True,
                        progress=False, wrap_trainable=faults)
    table = result.results
    assert len(table) == 4 and set(table["status"]) == {"completed"} and table["trial_id"].is_unique
    assert table["kind"].tolist().count("refined") == 2
    started = [line.split() for line in starts.read_text().splitlines()]
    assert [s[0] for s in started].count("0") == 1 and [s[0] for s in started].count("1") == 1  # stage 1 not re-run
    refined = [s for s in started if s[0] == "None"]
    assert any(s[1] != "0" for s in refined)  # the interrupted refined trial resumed from its checkpoint


def test_a_trial_with_a_nan_loss_is_recorded_and_the_search_goes_on(local_ray, assets, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_search(config(assets, out, trials=3, asha=False), progress=True,
                        wrap_trainable=inject(out, candidate=1, nonfinite=True))
    said = [line for line in capsys.readouterr().out.splitlines() if "trials failed" in line]
    assert len(said) == 1 and "1 of 3 trials failed:" in said[0] and "non-finite loss" in said[0]
    assert len(result.results) == 3
    failed = result.results[result.results["status"] == "error"]
    assert len(failed) == 1 and "non-finite loss" in failed["error"].iloc[0]
    assert failed["plan_summary"].iloc[0] and failed["ratio_paper"].iloc[0] >= 0.875 - 1e-9  # the plan it was running
    assert (result.results["status"] == "completed").sum() == 2
    assert result.best is not None and result.best["status"] == "completed"
    assert pd.read_parquet(tmp_path / "run" / "results.parquet")["status"].tolist().count("error") == 1


def test_the_default_profile_measures_fisher_only(local_ray, assets, tmp_path):
    out = tmp_path / "run"
    # in a cache of its own (no one-shot rows to reuse): oneshot is measured only when asked
    cfg = config(assets, out, trials=3, asha=False, cache_dir=str(tmp_path / "cache"))
    assert cfg.oneshot_profile is False and cfg.proxy == "fisher"
    result = run_search(cfg, progress=False)
    assert len(result.results) == 3 and (result.results["status"] == "completed").all()
    plans = [dict(CompressionPlan.from_json(p)) for p in result.results["plan_json"]]
    assert all(plans.count(p) == 1 for p in plans)  # no plan trained twice
    profile = pd.read_parquet(next((tmp_path / "cache" / "profiles").glob("*.parquet")))
    assert profile["fisher"].notna().all() and profile.loc[profile["option"] != "dense", "delta_loss"].isna().all()
    spearman = json.loads((out / "search.json").read_text())["proxy_spearman"]
    assert set(spearman) == {"trials", "oneshot", "fisher", "oneshot_trials", "fisher_trials"}
    assert spearman["fisher_trials"] == 3 and spearman["oneshot_trials"] == 0
    assert spearman["oneshot"] is None or math.isnan(spearman["oneshot"])  # not measured
    assert spearman["trials"] == 3 and isinstance(spearman["fisher"], float)


def test_a_refined_trial_that_fails_before_reporting_keeps_its_plan(local_ray, assets, tmp_path):
    out = tmp_path / "run"
    result = run_search(config(assets, out, trials=2, refine_trials=1, asha=False), progress=False,
                        wrap_trainable=inject(out, kind="refined", nonfinite=True))
    failed = result.results[result.results["status"] == "error"]
    assert len(failed) == 1 and failed["kind"].iloc[0] == "refined" and "non-finite loss" in failed["error"].iloc[0]
    assert failed["plan_summary"].iloc[0] and failed["meets_target"].iloc[0]  # the repaired plan it was given
    CompressionPlan.from_json(failed["plan_json"].iloc[0])


def test_a_search_of_another_version_is_not_resumed(assets, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "search.json").write_text(json.dumps(config(assets, out).to_dict() | {"inject_failure": None}))
    root, model_dir = assets
    assert main(["search", "--model", str(model_dir), "--task", "sst2", "--target-ratio", "0.8", "--resume",
                 "--out", str(out)]) == 2
    assert "search state version 1" in capsys.readouterr().err


@pytest.mark.parametrize("stored,expected", [
    (None, 0.0),  # written before --prior-weight existed: that search chose on its objective alone
    (0.0, 0.0),
    (2.5, 2.5),
])
def test_a_stored_search_keeps_the_prior_weight_it_chose_with(assets, tmp_path, stored, expected):
    from nxmiformer.search.config import STATE_VERSION

    fresh = config(assets, tmp_path)
    assert fresh.prior_weight == 1.0  # today's default, which an older search must not inherit
    state = fresh.to_dict() | {"state_version": STATE_VERSION}
    state.pop("prior_weight")
    (tmp_path / "search.json").write_text(json.dumps(state | ({} if stored is None else {"prior_weight": stored})))
    loaded = SearchConfig.load(tmp_path)
    assert loaded.prior_weight == expected and loaded.objective == state["objective"]


def test_search_places_trials_on_both_nodes_of_a_cluster(assets, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        result = run_search(config(assets, tmp_path / "run", trials=2, asha=False), progress=False)
        assert set(result.results["status"]) == {"completed"}
        assert result.results["node_id"].nunique() == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


BAD = [
    (["--target-ratio", "1.2"], "(0, 1)"),
    (["--target-ratio", "0"], "(0, 1)"),
    (["--target-ratio", "0.999"], "highest reachable is 0.9922"),  # the default menu reaches 1:8:int2
    (["--target-ratio", "0.8", "--options", "2:4:int8,9:4:int8"], "n=9"),
    (["--target-ratio", "0.8", "--cpus-per-trial", "0"], "cpus_per_trial"),
    (["--target-ratio", "0.8", "--refine-trials", "-1"], "refine_trials"),
    (["--target-ratio", "0.8", "--convention", "bytes"], "paper, storage"),
    (["--target-ratio", "0.8", "--proxy", "probe"], "unknown proxy 'probe'; allowed: oneshot, fisher"),
    (["--target-ratio", "0.8", "--menu", "auto"], "unknown menu 'auto'; allowed: fine, kernel"),
    (["--target-ratio", "0.8", "--task", "sst5"], "sst5"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_search_input(argv, needle, assets, tmp_path, capsys):
    root, model_dir = assets
    full = ["search", "--model", str(model_dir), "--task", "sst2", "--data-dir", str(root / "glue"), *argv,
            "--out", str(tmp_path / "out")]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_resume_without_a_search_is_an_error(tmp_path, assets, capsys):
    root, model_dir = assets
    assert main(["search", "--model", str(model_dir), "--task", "sst2", "--target-ratio", "0.8", "--resume",
                 "--out", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_kinds_filter_relabels_plans_found_by_several_generators():
    from nxmiformer.search.knapsack import generate_candidates, modules_frame
    from nxmiformer.search.stages import _of_kinds

    model = tiny_bert()
    modules = modules_frame(model)
    table = pd.DataFrame([{"module": m, "option": o, "score": float(i)} for m in modules["module"]
                          for i, o in enumerate(MENU)])
    candidates = generate_candidates(table, modules, 0.875, n_best=3)
    uniform = _of_kinds(candidates, ("uniform",))
    assert uniform and all(c.kind == "uniform" for c in uniform)
    assert len(uniform) == sum("uniform" in c.kinds for c in candidates)
    het = _of_kinds(candidates, ("optimal", "diverse"))
    assert {c.kind for c in het} <= {"optimal", "diverse"} and het[0].kind == "optimal"


@pytest.mark.parametrize("extra,expected", [
    ([], {"trials": 3, "refine_trials": 0, "steps": 60, "train_size": 2000, "oneshot_profile": False}),
    (["--proxy", "oneshot"], {"trials": 3, "proxy": "oneshot"}),
    (["--steps", "9", "--refine-trials=1"], {"trials": 3, "refine_trials": 1, "steps": 9, "train_size": 2000}),
    # argparse abbreviations are explicit flags too
    (["--step", "9", "--train-si=100"], {"trials": 3, "refine_trials": 0, "steps": 9, "train_size": 100}),
    (["--train-size", "none", "--lr", "0.001"], {"train_size": None, "lr": 0.001, "steps": 60}),
])
def test_quick_preset_fills_what_the_user_did_not_give(extra, expected, assets, tmp_path, monkeypatch):
    import nxmiformer.search as search
    from nxmiformer.errors import NxmiError

    seen = {}

    def fake_run_search(config, resume=False, progress=True, verbose=False):
        seen["config"] = config
        raise NxmiError("stop here")

    monkeypatch.setattr(search, "run_search", fake_run_search)
    root, model_dir = assets
    argv = ["search", "--preset", "quick", "--model", str(model_dir), "--task", "sst2", "--target-ratio", "0.8",
            "--data-dir", str(root / "glue"), *extra, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert {k: getattr(seen["config"], k) for k in expected} == expected


@pytest.mark.parametrize("changes,needle", [
    (dict(gpus_per_trial=-0.5), "gpus_per_trial must be a number >= 0, got -0.5"),
    (dict(gpus_per_trial="1"), "gpus_per_trial must be a number >= 0, got '1'"),
    (dict(gpus_per_trial=1.5), "whole number of GPUs, got 1.5"),
    (dict(device="cuda"), "device cuda needs gpus_per_trial > 0"),
    (dict(device="cpu", gpus_per_trial=0.5), "with device cpu"),
    (dict(device="gpu"), "device must be cpu, cuda, cuda:N or auto, got 'gpu'"),
])
def test_bad_device_settings(changes, needle, assets, tmp_path):
    from nxmiformer.errors import NxmiError

    with pytest.raises(NxmiError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        config(assets, tmp_path / "run", **changes)


@pytest.mark.parametrize("changes,expected", [
    ({}, {"cpu": 1}), (dict(cpus_per_trial=2, gpus_per_trial=0.25), {"cpu": 2, "gpu": 0.25}),
    (dict(gpus_per_trial=2.0, device="cuda"), {"cpu": 1, "gpu": 2.0}),
])
def test_trials_reserve_the_gpus_asked_for(changes, expected, assets, tmp_path):
    from nxmiformer.search.tune import trial_resources

    cfg = config(assets, tmp_path / "run", **changes)
    assert trial_resources(cfg) == expected
    assert cfg.trial_config().device == cfg.dense_config().device == cfg.device  # every stage runs there


@pytest.mark.parametrize("changes,n_trials,cpus", [
    ({}, 1, 2), ({}, 2, 1), ({}, 3, 1),  # 2 CPUs: a one-trial stage takes both, more trials one each
    (dict(cpus_per_trial=2), 3, 2),  # never fewer than asked for
    (dict(concurrency=1), 1, 1),  # an explicit concurrency keeps cpus_per_trial
    (dict(gpus_per_trial=0.5), 1, 1),
])
def test_a_stage_with_idle_cpus_shares_them_among_its_trials(changes, n_trials, cpus, local_ray, assets, tmp_path):
    from nxmiformer.search.tune import trial_resources

    cfg = config(assets, tmp_path / "run", **({"concurrency": None} | changes))
    assert trial_resources(cfg, n_trials)["cpu"] == cpus


def test_a_search_asking_for_gpus_on_a_cluster_without_any_is_refused_before_writing(assets, tmp_path, capsys,
                                                                                      monkeypatch):
    root, model_dir = assets
    out = tmp_path / "out"
    monkeypatch.setenv("NXMI_CACHE_DIR", str(root / "cache"))  # nxmi search's cache (no flag: the variable)
    argv = ["search", "--model", str(model_dir), "--task", "sst2", "--data-dir", str(root / "glue"), "--target-ratio",
            "0.8", "--max-length", "16", "--dense-epochs", "0.5", "--calib-size", "8", "--selection-size", "8",
            "--gpus-per-trial", "0.25", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the warm start's progress: the error, in one line
    assert last.startswith("nxmi search: error: gpus_per_trial 0.25 but no node of the Ray cluster has a GPU")
    assert not out.exists()


def test_device_cuda_without_a_gpu_is_a_clear_error():
    import torch

    from nxmiformer.errors import NxmiError
    from nxmiformer.trials.loop import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this process sees a GPU: device cuda is valid here")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(NxmiError, match="device cuda:1 but this process sees no GPU"):
        resolve_device("cuda:1")


def test_a_search_of_several_targets_chooses_a_plan_for_each(local_ray, assets, tmp_path):
    from nxmiformer.analysis import export_plan, load_results, select

    out = tmp_path / "run"
    cfg = config(assets, out, target_ratio="0.8,0.9", trials=2, refine_trials=2)
    assert cfg.target_ratio == (0.8, 0.9) and [t.value for t in cfg.targets] == [0.8, 0.9]
    result = run_search(cfg, progress=False)
    table = result.results
    stage1 = table[table["kind"] != "refined"]
    # each target its own candidates; a plan both proposed is trained once, for the higher target
    assert set(stage1["target_ratio"]) <= {0.8, 0.9} and stage1["target_ratio"].value_counts().max() <= 2
    assert (stage1["ratio_paper"] >= stage1["target_ratio"] - 1e-9).all() and stage1["plan_json"].is_unique
    refined = table[table["kind"] == "refined"]
    assert len(refined) == 2 and refined["target_ratio"].isna().all() and (refined["ratio_paper"] >= 0.8 - 1e-9).all()
    assert list(result.choices) == [0.8, 0.9] and result.best is result.choices[0.8]
    stored = json.loads((out / "search.json").read_text())
    assert stored["target_ratio"] == [0.8, 0.9] and stored["options"] == list(MENU)  # given: every target's menu
    assert SearchConfig.load(out).target_ratio == (0.8, 0.9)
    results = load_results([out])
    for target, chosen in result.choices.items():
        assert chosen is not None and chosen["ratio_paper"] >= target - 1e-9
        assert {"target_ratio": target, "trial_id": chosen["trial_id"]} in stored["choices"]
        # nxmi export at a target of the search writes the search's choice there
        again = select(results, target, metric=cfg.objective, prior_weight=cfg.prior_weight)
        assert again["trial_id"] == chosen["trial_id"]
        plan = export_plan(results, target, "paper", tmp_path / f"plan-{target}.json")
        assert plan.meta["trial"]["trial_id"] == chosen["trial_id"]
    # and between targets, the best plan meeting the ratio asked for
    between = export_plan(results, 0.85, "paper", tmp_path / "between.json")
    assert between.meta["ratio_paper"] >= 0.85 - 1e-9


def test_asha_compares_a_trial_only_with_the_trials_of_its_target():
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from nxmiformer.search.asha import TargetASHA

    args = dict(time_attr="step", metric="m", mode="max", max_t=10, grace_period=2, reduction_factor=2)
    trials = [SimpleNamespace(trial_id=f"t{k}", config={"candidate": {"target_ratio": target}})
              for k, target in enumerate([0.8, 0.8, 0.8, 0.9])]
    decisions = {}
    for scheduler in (TargetASHA(**args), ASHAScheduler(**args)):
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        # the 0.8 trials reach the rung first and well; the 0.9 trial reaches it last, the worst in absolute terms
        for trial, value in zip(trials, [0.9, 0.85, 0.8, 0.5]):
            decision = scheduler.on_trial_result(None, trial, {"step": 2, "m": value})
        decisions[type(scheduler).__name__] = decision
    # alone at its target it goes on; one ASHA over every target would stop it for its ratio
    assert decisions == {"TargetASHA": TrialScheduler.CONTINUE, "AsyncHyperBandScheduler": TrialScheduler.STOP}


TARGETS = [
    ("0.875", 0.875),
    ("0.9375,0.875", (0.875, 0.9375)),
    ("0.85:0.97:6", (0.85, 0.874, 0.898, 0.922, 0.946, 0.97)),
    ("0.875, 0.875 ,0.9", (0.875, 0.9)),
]


@pytest.mark.parametrize("text,expected", TARGETS, ids=[t[0] for t in TARGETS])
def test_target_ratio_takes_a_list_or_a_range(text, expected, assets, tmp_path):
    assert config(assets, tmp_path / "run", target_ratio=text).target_ratio == expected


BAD_TARGETS = [
    ("0.8:0.9", "bad target ratio '0.8:0.9'; allowed: a ratio in (0, 1), a list"),
    ("0.9:0.8:3", "bad target ratio '0.9:0.8:3'"),
    ("0.85:0.97:1", "LOW:HIGH:COUNT such as 0.85:0.97:6"),
    ("0.8,x", "bad target ratio '0.8,x'"),
    ("0.8,1.5", "(0, 1), got 1.5"),
    ("0.5:0.9:13", "13 target ratios in '0.5:0.9:13'; at most 12"),
]


@pytest.mark.parametrize("value,needle", BAD_TARGETS, ids=[b[0] for b in BAD_TARGETS])
def test_bad_target_lists_are_one_line_errors_before_anything_is_written(value, needle, assets, tmp_path, capsys):
    root, model_dir = assets
    assert main(["search", "--model", str(model_dir), "--task", "sst2", "--data-dir", str(root / "glue"),
                 "--target-ratio", value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_search_of_several_targets_resumes_without_losing_finished_trials(local_ray, assets, tmp_path):
    out = tmp_path / "run"
    marker, starts = tmp_path / "failed-once", tmp_path / "starts.log"
    faults = inject(out, marker=marker, after_reports=2, candidate=2, start_log=starts)
    several = dict(target_ratio="0.8,0.9", trials=2, concurrency=1)  # ASHA per target on, restored with the experiment
    with pytest.raises(ValueError, match="--resume"):
        run_search(config(assets, out, fail_fast=True, **several), progress=False, wrap_trainable=faults)
    assert marker.exists() and not (out / "results.parquet").exists()
    result = run_search(config(assets, out, **several), resume=True, progress=False, wrap_trainable=faults)
    table = result.results
    candidates = pd.read_parquet(out / "candidates.parquet")
    assert len(table) == len(candidates) and table["trial_id"].is_unique and "error" not in set(table["status"])
    assert sorted(table["target_ratio"]) == sorted(candidates["target_ratio"])
    started = [line.split() for line in starts.read_text().splitlines()]
    assert [s[0] for s in started].count("0") == 1 and [s[0] for s in started].count("1") == 1  # finished: not re-run
    assert any(s[0] == "2" and s[1] != "0" for s in started)  # the interrupted trial resumed from its checkpoint
    assert list(result.choices) == [0.8, 0.9]


def test_the_multi_objective_optuna_stage_resumes(local_ray, assets, tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "failed-once"
    faults = inject(out, marker=marker, after_reports=1, kind="refined")
    several = dict(target_ratio="0.8,0.9", trials=1, refine_trials=2, concurrency=1, asha=False)
    with pytest.raises(ValueError, match="--resume"):
        run_search(config(assets, out, fail_fast=True, **several), progress=False, wrap_trainable=faults)
    assert marker.exists() and (out / "stage1.parquet").exists() and not (out / "results.parquet").exists()
    table = run_search(config(assets, out, **several), resume=True, progress=False, wrap_trainable=faults).results
    refined = table[table["kind"] == "refined"]
    assert len(refined) == 2 and set(refined["status"]) == {"completed"} and table["trial_id"].is_unique
    assert (refined["ratio_paper"] >= 0.8 - 1e-9).all()  # repaired to the lowest target
