"""The Ray Tune trainable on a local 2-CPU Ray: concurrency and restart from checkpoint."""

from __future__ import annotations

import pytest

from nxmiformer.compression import CompressionPlan
from nxmiformer.trials import DataConfig, DenseConfig, TrialConfig, finetune_dense
from nxmiformer.trials.trainable import trial_trainable
from tests.conftest import tiny_bert
from tests.conftest import SPECIAL_TOKENS, WORDS

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from tests.faults import inject  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer, synthetic_glue_dir):
    root = tmp_path_factory.mktemp("tune")
    model_dir = root / "model"
    model = tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS))
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = DataConfig(task="sst2", data_dir=str(synthetic_glue_dir), max_length=16)
    dense_cfg = DenseConfig(model=str(model_dir), steps=2, batch_size=8)
    config = TrialConfig(data=data, dense=dense_cfg, steps=12, batch_size=8, lr=1e-3, admm_interval=2, eval_every=4,
                         cache_dir=str(root / "cache"))
    dense = finetune_dense(data, dense_cfg, config.cache_dir, progress=False)
    return root, model, config, dense


def _tuner(trainable_config, storage, name, max_failures=0, trainable=trial_trainable):
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=trainable_config,
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


def test_two_trials_run_concurrently_with_one_thread_each(module_ray, setup):
    root, model, config, dense = setup
    plans = [{"plan": CompressionPlan.uniform(model, s).to_dict(), "kind": "uniform"} for s in ("2:4:int8", "4:8:int4")]
    results = _tuner({"candidate": tune.grid_search(plans), "trial": config.to_dict(), "dense_path": str(dense.path)},
                     root / "runs", "concurrent").fit()
    assert not results.errors
    frame = results.get_dataframe()
    assert len(frame) == 2
    assert set(frame["phase"]) == {"final"} and set(frame["step"]) == {12}
    assert sorted(frame["ratio_paper"]) == [0.875, 0.9375]
    assert set(frame["threads"]) == {1}
    # each trial reports the plan it trained, in the trial record's field names
    assert sorted(frame["plan_summary"]) == sorted(CompressionPlan.from_dict(p["plan"]).summary() for p in plans)
    assert set(frame["kind"]) == {"uniform"}
    starts = frame["timestamp"] - frame["time_total_s"]
    assert starts.max() < frame["timestamp"].min()  # the two trials overlapped in time


def test_crashed_trial_restarts_from_its_checkpoint(module_ray, setup):
    root, model, config, dense = setup
    marker = root / "crashed-once"
    space = {"candidate": {"plan": CompressionPlan.uniform(model, "2:4:int8").to_dict()}, "trial": config.to_dict(),
             "dense_path": str(dense.path)}
    results = _tuner(space, root / "runs", "crash", max_failures=1,
                     trainable=inject(marker=marker, after_reports=2)(trial_trainable)).fit()
    assert marker.exists()  # it did crash
    assert not results.errors
    final = results[0].metrics
    assert final["phase"] == "final" and final["step"] == 12
    assert final["resumed_from_step"] == 6  # second report: the hard projection at step 6
