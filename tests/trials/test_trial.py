"""End-to-end trials on a tiny random BERT and synthetic GLUE tables (seconds each)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nxmiformer.compression import CompressionPlan, compressed_modules, quantize_to_int
from nxmiformer.trials import DataConfig, DenseConfig, NonFiniteLoss, TrialConfig, finetune_dense, run_trial
from tests.conftest import tiny_bert
from tests.conftest import SPECIAL_TOKENS, WORDS

REPORT_KEYS = {"step", "phase", "primary", "retention", "loss", "ratio_paper", "ratio_storage", "admm_residual"}


@pytest.fixture
def make_config(tiny_model_dir, synthetic_glue_dir, tmp_path):
    def make(task="sst2", **changes):
        data = DataConfig(task=task, data_dir=str(synthetic_glue_dir), max_length=16, seed=0)
        dense = DenseConfig(model=str(tiny_model_dir), steps=4, batch_size=8)
        base = dict(data=data, dense=dense, steps=8, batch_size=8, lr=1e-3, admm_interval=2, eval_every=3,
                    cache_dir=str(tmp_path / "cache"), threads=1)
        return TrialConfig(**(base | changes))

    return make


def test_dense_warm_start_is_cached(make_config):
    config = make_config()
    first = finetune_dense(config.data, config.dense, config.cache_dir, progress=False)
    assert not first.cached and (first.path / "dense.json").is_file()
    again = finetune_dense(config.data, config.dense, config.cache_dir, progress=False)
    assert again.cached and again.path == first.path and again.metrics == first.metrics
    # a different hyper-parameter is a different warm start
    other = finetune_dense(config.data, DenseConfig(model=config.dense.model, steps=5, batch_size=8), config.cache_dir, progress=False)
    assert not other.cached and other.path != first.path


def test_trial_reports_phases_and_ends_hardened(make_config):
    config = make_config()
    rows = []
    result = run_trial("2:4:int8", config, report=lambda row, state: rows.append(row), keep_model=True)
    assert [r["phase"] for r in rows] == ["admm", "projected", "qat", "final"]
    assert [r["step"] for r in rows] == [3, 4, 6, 8]
    for row in rows:
        assert REPORT_KEYS <= set(row) and "accuracy" in row
    assert rows[0]["admm_residual"] > 0
    assert result.ratio_paper == 0.875 and result.steps == 8
    assert result.retention == pytest.approx(result.primary / result.dense_primary)
    assert result.metrics["primary"] == rows[-1]["primary"]
    # measured on the hardened model: exactly 2:4 and on the INT8 grid
    for module in compressed_modules(result.model).values():
        w = module.effective_weight().detach()
        assert torch.all((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2)
        q, scale = quantize_to_int(w, 8)
        torch.testing.assert_close(q.float() * scale[:, None], w, rtol=0, atol=1e-6)


def test_same_seed_same_result(make_config):
    config = make_config(kd_alpha=0.5)
    a = run_trial("4:8:int4", config, keep_model=True)
    b = run_trial("4:8:int4", config, keep_model=True)
    assert a.history == b.history
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("resume_at_phase", ["admm", "projected", "qat"])
def test_resume_from_state_equals_uninterrupted(make_config, resume_at_phase):
    config = make_config()
    states = {}
    full = run_trial("2:4:int8", config, keep_model=True,
                     report=lambda row, state: states.setdefault(row["phase"], state()))
    resumed = run_trial("2:4:int8", config, keep_model=True, resume=states[resume_at_phase])
    assert resumed.history == full.history
    for (name, pa), (_, pb) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)


def test_resume_from_any_report(make_config):
    """Every report's state resumes exactly, also the ADMM row just before the projection."""
    config = make_config(eval_every=2)
    rows, states = [], []
    full = run_trial("2:4:int8", config, keep_model=True,
                     report=lambda row, state: (rows.append(row), states.append(state())))
    assert [(r["step"], r["phase"]) for r in rows] == [(2, "admm"), (4, "admm"), (4, "projected"), (6, "qat"), (8, "final")]
    for state in states[:-1]:
        resumed = run_trial("2:4:int8", config, keep_model=True, resume=state)
        assert resumed.history == full.history
        for (name, pa), (_, pb) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)


def test_summary_is_the_trial_record(make_config):
    config = make_config()
    dense = finetune_dense(config.data, config.dense, config.cache_dir, progress=False)
    result = run_trial("2:4:int8", config, dense=dense)
    summary = json.loads(json.dumps(result.summary(config, dense=dense.metrics)))
    assert list(summary) == ["task", "plan", "steps", "dense", "compressed", "retention", "ratio_paper",
                             "ratio_storage", "admm_residual", "admm_at_projection", "wall_time", "trial_config",
                             "history"]
    assert summary["task"] == "sst2" and summary["plan"] == result.plan.summary() and summary["steps"] == 8
    assert summary["dense"] == dense.metrics and summary["compressed"] == result.metrics
    assert TrialConfig.from_dict(summary["trial_config"]) == config
    assert [r["phase"] for r in summary["history"]] == ["admm", "projected", "qat", "final"]


@pytest.mark.parametrize(
    "changes,phases",
    [(dict(steps=0), ["final"]),  # one-shot projection
     (dict(admm_fraction=0.0), ["qat", "qat", "final"]),  # masked QAT without ADMM
     (dict(admm_fraction=1.0, eval_every=0), ["final"])],  # ADMM all the way, projected at the end
)
def test_method_variants(make_config, changes, phases):
    rows = []
    result = run_trial("2:4:int4", make_config(**changes), report=lambda row, state: rows.append(row))
    assert [r["phase"] for r in rows] == phases
    assert result.ratio_paper == 0.9375


@pytest.mark.parametrize("task,keys", [("stsb", {"pearson", "spearmanr"}), ("mnli", {"accuracy", "validation_mismatched/accuracy"}), ("cola", {"mcc"})])
def test_other_tasks(make_config, task, keys, synthetic_glue_dir):
    import pandas as pd

    from nxmiformer.trials.data import get_task
    from nxmiformer.trials.metrics import compute_metrics

    rows = []
    result = run_trial("2:4:int8", make_config(task=task, steps=4), report=lambda row, state: rows.append(row))
    assert keys <= set(result.metrics) and "predictions" not in result.metrics
    # the final predictions (class ids; float32 scores for stsb) give the first split's metric again
    split = get_task(task).validation_splits[0]
    labels = pd.read_parquet(synthetic_glue_dir / task / f"{split}.parquet")["label"].to_numpy()
    again = compute_metrics(task, json.loads(rows[-1]["predictions"]), labels)["primary"]
    assert again == pytest.approx(result.primary, abs=1e-6)


def test_heterogeneous_plan(make_config, tiny_model_dir):
    model = tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS))
    plan = CompressionPlan.by_component(model, {"query": "2:4:int4", "ffn_in": "4:8:int8", "ffn_out": "dense:int8"})
    result = run_trial(plan, make_config(steps=4))
    assert 0 < result.ratio_paper < 0.875


def test_nan_loss_is_reported(make_config, monkeypatch):
    import nxmiformer.trials.loop as loop_module

    config = make_config(kd_alpha=0.0)
    dense = finetune_dense(config.data, config.dense, config.cache_dir, progress=False)
    monkeypatch.setattr(loop_module, "task_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLoss, match="non-finite loss nan at step 0"):
        run_trial("2:4:int8", config, dense=dense)


@pytest.mark.parametrize(
    "changes,word",
    [(dict(steps=-1), "steps"), (dict(admm_fraction=1.5), "admm_fraction"), (dict(kd_alpha=2.0), "kd_alpha"),
     (dict(rho=0.0), "rho"), (dict(batch_size=0), "batch_size"), (dict(admm_mode="prox"), "admm_mode"),
     (dict(admm_mode="decoupled", rho_max=2.0), "rho_max"), (dict(rho=2.0), "rho_max"), (dict(device="gpu"), "device")],
)
def test_bad_trial_config(make_config, changes, word):
    with pytest.raises(ValueError, match=word):
        make_config(**changes)


def test_config_round_trips_as_dict(make_config):
    config = make_config()
    again = TrialConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="unknown trial config key"):
        TrialConfig.from_dict(config.to_dict() | {"stepz": 3})


def test_warm_start_of_a_headless_checkpoint_is_reproducible(tmp_path, tiny_tokenizer, synthetic_glue_dir):
    """A base encoder (no classifier weights) gets a new head; it must be seeded so the cache
    key and the warm start repeat across calls and processes."""
    from transformers import BertModel

    from tests.conftest import tiny_bert_config

    base = tmp_path / "base"
    torch.manual_seed(0)
    BertModel(tiny_bert_config(vocab_size=len(SPECIAL_TOKENS) + len(WORDS))).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    data = DataConfig(task="sst2", data_dir=str(synthetic_glue_dir), max_length=16)
    dense = DenseConfig(model=str(base), steps=2, batch_size=8)
    torch.manual_seed(123)  # whatever the global RNG state was before
    a = finetune_dense(data, dense, tmp_path / "c1", progress=False)
    torch.manual_seed(456)
    b = finetune_dense(data, dense, tmp_path / "c2", progress=False)
    assert a.key == b.key and a.metrics == b.metrics


ADMM_KEYS = {"admm_primal", "admm_dual", "admm_distance", "admm_mask_agreement", "admm_rho"}


@pytest.mark.parametrize("mode", ["penalty", "decoupled"])
def test_admm_diagnostics_are_reported_and_frozen_at_projection(make_config, mode):
    rows = []
    config = make_config(steps=40, eval_every=5, admm_interval=None, admm_mode=mode)
    result = run_trial("2:4:int4", config, report=lambda row, state: rows.append(row))
    admm_rows = [r for r in rows if r["phase"] == "admm"]
    later = [r for r in rows if r["phase"] != "admm"]
    assert admm_rows and later
    for row in rows:
        assert ADMM_KEYS <= set(row)
    # after the projection every row carries the values measured just before it
    assert all(r["admm_distance"] == result.admm_at_projection["admm_distance"] for r in later)
    assert result.admm_residual == result.admm_at_projection["admm_primal"]
    if mode == "decoupled":  # the short decoupled schedule reaches the set
        assert admm_rows[0]["admm_distance"] > 0.1
        assert result.admm_at_projection["admm_distance"] < 0.05
        assert result.admm_at_projection["admm_mask_agreement"] > 0.99


def test_lsq_scales_train_after_the_projection(make_config):
    result = run_trial("2:4:int4:lsq", make_config(steps=8, admm_fraction=0.0), keep_model=True)
    modules = compressed_modules(result.model)
    trained = [m for m in modules.values() if m.scale is not None]
    assert len(trained) == len(modules)
    # the scales moved from their start (the max-abs of the projected weights) and still read back
    moved = [float((m.scale.detach() - m.weight.detach().mul(m.mask).abs().amax(1) / 7).abs().max()) for m in trained]
    assert max(moved) > 0
    for m in trained:
        w = m.effective_weight().detach()
        q, scale = quantize_to_int(w, 4)
        torch.testing.assert_close(q.float() * scale[:, None], w, rtol=0, atol=1e-6)


def test_max_scales_have_no_trained_parameter(make_config):
    result = run_trial("2:4:int4:max", make_config(steps=4, admm_fraction=0.0), keep_model=True)
    assert all(m.scale is None for m in compressed_modules(result.model).values())


def test_trials_report_the_selection_rows_and_the_kl_from_the_dense_model(make_config, synthetic_glue_dir):
    import dataclasses

    config = make_config()
    config = config.replace(data=dataclasses.replace(config.data, holdout_size=4, selection_size=8), eval_every=0,
                            eval_at=(6,))
    rows = []
    run_trial("2:4:int4", config, report=lambda row, state: rows.append(row))
    assert [r["step"] for r in rows] == [4, 6, 8]  # projection, eval_at, final
    for row in rows:
        assert {"selection_primary", "selection_loss", "selection_kl"} <= set(row) and row["selection_kl"] >= 0
        assert 0 < row["selection_loss_calibrated"] <= row["selection_loss"] + 1e-12
    # only the final report carries the validation predictions, and they give its metric again
    assert ["predictions" in r for r in rows] == [False, False, True]
    import pandas as pd

    from nxmiformer.trials.metrics import compute_metrics

    predictions = json.loads(rows[-1]["predictions"])
    labels = pd.read_parquet(synthetic_glue_dir / "sst2" / "validation.parquet")["label"].to_numpy()
    assert len(predictions) == len(labels) and set(predictions) <= {0, 1}
    assert compute_metrics("sst2", predictions, labels)["primary"] == pytest.approx(rows[-1]["primary"])
    # the dense model's logits on the selection rows are computed once and cached beside the warm start
    dense = finetune_dense(config.data, config.dense, config.cache_dir, progress=False)
    assert len(list(dense.path.glob("selection-*.npy"))) == 1
    # the final report also carries the selection rows' predictions, which give selection_primary again
    from nxmiformer.models import load_tokenizer
    from nxmiformer.trials.data import prepare_task_data

    assert ["selection_predictions" in r for r in rows] == [False, False, True]
    data = config.data
    selection = prepare_task_data("sst2", load_tokenizer(str(dense.path)), data_dir=data.data_dir, train_size=data.train_size,
                                  seed=data.seed, holdout_size=4, selection_size=8, include_train=False).selection
    chosen = json.loads(rows[-1]["selection_predictions"])
    assert len(chosen) == 8
    assert compute_metrics("sst2", chosen, selection["labels"])["primary"] == pytest.approx(rows[-1]["selection_primary"])
    assert {"selection_primary", "selection_loss"} <= set(dense.metrics)
    # the uncompressed model has no divergence from itself
    same = run_trial("dense", config.replace(steps=0))
    assert same.metrics["selection_kl"] == pytest.approx(0.0, abs=1e-6)


def test_dense_warm_start_stops_when_the_selection_loss_stops_improving(make_config):
    import dataclasses
    import json

    config = make_config()
    data = dataclasses.replace(config.data, holdout_size=4, selection_size=8)
    bounded = DenseConfig(model=config.dense.model, epochs=20, batch_size=8, lr=5e-3, patience=1)
    dense = finetune_dense(data, bounded, config.cache_dir, progress=False)
    meta = json.loads((dense.path / "dense.json").read_text())
    per_epoch = -(-28 // 8)  # 40 synthetic rows less 12 held out, batch 8
    assert 1 <= meta["steps"] < 20 * per_epoch  # stopped before the bound, at its best check


def test_a_cached_selection_reference_does_not_change_the_trial(make_config):
    """The first trial computes the dense selection logits, later ones read them from the cache:
    both must train the same (evaluation leaves the random state alone)."""
    config = make_config(data=dataclasses.replace(make_config().data, selection_size=8))
    cold = run_trial("2:4:int8", config, keep_model=True)  # computes and caches the reference
    warm = run_trial("2:4:int8", config, keep_model=True)  # reads it
    assert cold.history == warm.history


def test_evaluation_leaves_the_random_state_alone(tiny_model_dir, synthetic_glue_dir):
    from nxmiformer.models import load_model, load_tokenizer
    from nxmiformer.trials.data import prepare_task_data
    from nxmiformer.trials.loop import predict

    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = prepare_task_data("sst2", tokenizer, data_dir=str(synthetic_glue_dir), max_length=16, include_train=False)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    predict(load_model(str(tiny_model_dir)), data.eval["validation"], tokenizer)
    assert torch.equal(torch.get_rng_state(), before)
