"""bench/fisher_variants.py: the Fisher estimates against closed forms and bounds, on a tiny BERT."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from nxmiformer.compression import CompressionPlan, compressible_modules
from nxmiformer.models import load_model, load_tokenizer
from nxmiformer.trials.config import DataConfig
from nxmiformer.trials.data import make_dataloader, prepare_task_data
from nxmiformer.trials.loop import model_inputs
from tests.analysis.conftest import import_bench
from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert, write_synthetic_task

ROWS = 16


@pytest.fixture(scope="module")
def variants():
    return import_bench("fisher_variants")


@pytest.fixture
def setup(tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "model"
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    write_synthetic_task(tmp_path / "glue", "sst2")
    data = DataConfig(task="sst2", data_dir=str(tmp_path / "glue"), max_length=16)
    names = {cm.name for cm in compressible_modules(load_model(str(model_dir)))}
    return model_dir, SimpleNamespace(data_config=lambda: data), names


@pytest.mark.parametrize("text, expected", [
    ("batch8-128", ("batch8", 128)), ("row-512", ("row", 512)), ("expected-1", ("expected", 1)),
    ("kl-128", ("kl", 128)), ("loss-32", ("loss", 32)), ("kl-0", None), ("rows-128", None), ("row-0", None), ("row-x", None), ("row", None), ("-128", None),
])
def test_parse_variant(variants, text, expected):
    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError, match=text):
            variants.parse_variant(text)
    else:
        assert variants.parse_variant(text) == expected


def test_expected_fisher_matches_the_binary_closed_form(variants, setup):
    # two classes: grad log p0 = p1 * grad(z0 - z1) and grad log p1 = -p0 * grad(z0 - z1), so the
    # expectation over the model's own labels is p0 * p1 * grad(z0 - z1)^2, summed over the rows
    model_dir, config, names = setup
    got = variants.fishers(variants.load_cell(model_dir, config), names, [("expected", ROWS)])["expected-16"]
    model = load_model(str(model_dir)).eval()
    tokenizer = load_tokenizer(str(model_dir))
    data = config.data_config()
    calib = prepare_task_data("sst2", tokenizer, data_dir=data.data_dir, max_length=data.max_length, seed=data.seed,
                              include_train=False, holdout_size=ROWS).holdout
    weights = {cm.name: cm.module.weight for cm in compressible_modules(model)}
    reference = {name: torch.zeros_like(w) for name, w in weights.items()}
    for batch in make_dataloader(calib, tokenizer, 1):
        logits = model(**model_inputs(batch, "cpu")).logits[0]
        p = torch.softmax(logits.detach(), -1)
        model.zero_grad(set_to_none=True)
        (logits[0] - logits[1]).backward()
        for name, w in weights.items():
            reference[name] += p[0] * p[1] * w.grad ** 2
    assert set(got) == names
    for name in names:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-4, atol=1e-12)


def test_micro_batches_square_a_mean_that_cancels(variants, setup):
    # Jensen, per micro-batch of 8 rows: (mean of the rows' gradients)^2 <= mean of their squares,
    # so today's estimate is at most the per-row one over 8, everywhere, and strictly below somewhere
    model_dir, config, names = setup
    got = variants.fishers(variants.load_cell(model_dir, config), names, [("batch8", ROWS), ("row", ROWS)])
    from nxmiformer.search import profile
    assert profile.FISHER_BATCH == 8  # restored
    below = False
    for name in names:
        batch8, row = got["batch8-16"][name], got["row-16"][name]
        assert (batch8 <= row / 8 + 1e-12 + 1e-5 * row.abs()).all()
        below |= bool((batch8 < 0.99 * row / 8).any())
    assert below


def test_variant_tables_weigh_one_projection_by_every_diagonal(variants, setup):
    model_dir, config, names = setup
    module = sorted(names)[0]
    shape = load_model(str(model_dir)).get_submodule(module).weight.shape
    ones, twos = {module: torch.ones(shape)}, {module: 2 * torch.ones(shape)}
    pairs = [(module, "dense"), (module, "2:4:int4")]
    moves = variants.weight_moves(variants.load_cell(model_dir, config), pairs)
    tables = variants.variant_tables(pairs, moves, {"a": ones, "b": twos})
    a = tables["a"].set_index("option")["fisher"]
    b = tables["b"].set_index("option")["fisher"]
    assert a["dense"] == 0 and a["2:4:int4"] > 0
    assert b["2:4:int4"] == pytest.approx(2 * a["2:4:int4"])


def test_score_is_spearman_with_the_metric_flipped(variants):
    options = ("dense:int8", "2:4:int8", "2:4:int4", "1:4:int2")
    plans = [CompressionPlan({"m": o}).to_json() for o in options]
    trials = pd.DataFrame({"plan_json": plans, "selection_loss": [0.1, 0.2, 0.3, 0.4],
                           "selection_loss_calibrated": [0.4, 0.3, 0.2, 0.1], "primary": [0.9, 0.8, 0.7, 0.6]})
    table = pd.DataFrame({"module": "m", "option": options, "fisher": [1.0, 2.0, 3.0, 4.0]})
    assert variants.score(trials, table) == pytest.approx(
        {"selection_loss": 1.0, "selection_loss_calibrated": -1.0, "primary": 1.0})


def test_row_products_are_each_rows_first_order_loss_change(variants, setup):
    # independent reference: a central finite difference of row i's loss along W - proj(W)
    from nxmiformer.compression import LayerSpec, project
    from nxmiformer.trials.loop import task_loss

    model_dir, config, names = setup
    pairs = [(sorted(names)[0], "2:4:int4"), (sorted(names)[-1], "1:4:int2"), (sorted(names)[1], "dense")]
    cell = variants.load_cell(model_dir, config)
    products = variants.row_products(cell, pairs, variants.weight_moves(cell, pairs), 4)
    assert products.shape == (4, 3) and (products[:, 2] == 0).all()  # an identity option moves nothing
    model = load_model(str(model_dir)).eval().double()
    tokenizer = load_tokenizer(str(model_dir))
    data = config.data_config()
    calib = prepare_task_data("sst2", tokenizer, data_dir=data.data_dir, max_length=data.max_length, seed=data.seed,
                              include_train=False, holdout_size=4).holdout
    eps = 1e-4
    for k, (module, option) in enumerate(pairs[:2]):
        weight = model.get_submodule(module).weight
        original = weight.detach().clone()
        move = original - project(original.float(), LayerSpec.parse(option)).double()
        for i, batch in enumerate(make_dataloader(calib, tokenizer, 1)):
            losses = []
            for sign in (1, -1):
                with torch.no_grad():
                    weight.copy_(original + sign * eps * move)
                    losses.append(float(task_loss(model(**model_inputs(batch, "cpu")).logits, batch["labels"], False)))
            with torch.no_grad():
                weight.copy_(original)
            assert products[i, k] == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-3, abs=1e-7)


def test_a_plan_of_one_compressed_module_costs_its_rowdot(variants):
    # plan-level cost sum_i (sum_m s_i)^2: with every other module dense it is the module's own sum_i s_i^2;
    # with two, the cross term 2 * sum_i s_i(a) s_i(b) enters
    pairs = [("a", "2:4:int4"), ("a", "dense"), ("b", "1:4:int2"), ("b", "dense")]
    products = np.array([[1.0, 0.0, -2.0, 0.0], [3.0, 0.0, 1.0, 0.0]])
    trials = pd.DataFrame({"plan_json": [CompressionPlan({"a": "2:4:int4"}).to_json(),
                                         CompressionPlan({"a": "2:4:int4", "b": "1:4:int2"}).to_json()]})
    costs = variants.plan_taylor(trials, pairs, products, ["a", "b"])
    assert costs.tolist() == pytest.approx([1 + 9, (1 - 2) ** 2 + (3 + 1) ** 2])


def test_oneshot_fitness_is_the_plan_applied_by_hand(variants, setup):
    # independent reference: a fresh copy of the model with each module's weight set to project(W),
    # every row on its own (no padding), KL and cross-entropy from torch.nn.functional
    import torch.nn.functional as F

    from nxmiformer.compression import LayerSpec, project

    model_dir, config, names = setup
    # larger initial weights than BERT's 0.02, so the predictions move measurably under projection
    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), initializer_range=0.3).save_pretrained(model_dir)
    modules = sorted(names)
    plans = [CompressionPlan({}), CompressionPlan({modules[0]: "2:4:int4", modules[-1]: "1:4:int2"}),
             CompressionPlan({m: "1:8:int2" for m in modules})]
    trials = pd.DataFrame({"plan_json": [plan.to_json() for plan in plans]})
    cell = variants.load_cell(model_dir, config)
    before = {k: v.clone() for k, v in cell.model.state_dict().items()}
    pairs = sorted({(m, str(plan.spec_for(m))) for plan in plans for m in modules})
    got = variants.oneshot_fitness(cell, trials, pairs, variants.weight_moves(cell, pairs), ROWS, modules)
    for key, value in cell.model.state_dict().items():  # the warm start is restored, bit for bit
        assert torch.equal(value, before[key]), key

    tokenizer = load_tokenizer(str(model_dir))
    data = config.data_config()
    calib = prepare_task_data("sst2", tokenizer, data_dir=data.data_dir, max_length=data.max_length, seed=data.seed,
                              include_train=False, holdout_size=ROWS).holdout
    batches = list(make_dataloader(calib, tokenizer, 1))

    def log_probs(plan):
        model = load_model(str(model_dir)).eval()
        with torch.no_grad():
            for m in modules:
                spec = plan.spec_for(m)
                if not spec.is_identity:
                    weight = model.get_submodule(m).weight
                    weight.copy_(project(weight, LayerSpec.parse(str(spec))))
            return torch.cat([torch.log_softmax(model(**model_inputs(b, "cpu")).logits, -1) for b in batches])

    dense = log_probs(plans[0])
    labels = torch.cat([b["labels"] for b in batches]).long()
    for k, plan in enumerate(plans):
        compressed = log_probs(plan)
        kl = float(F.kl_div(compressed, dense, log_target=True, reduction="batchmean"))
        assert got["kl"][k] == pytest.approx(kl, rel=1e-3, abs=1e-6)
        assert got["loss"][k] == pytest.approx(float(F.cross_entropy(compressed, labels)), rel=1e-4)
    assert got["kl"][0] == pytest.approx(0, abs=1e-6) and got["kl"][2] > got["kl"][1] > 0.01


def test_pooled_gains_over_todays_estimate(variants):
    table = pd.DataFrame({"run": ["r1", "r2", "r1", "r2"], "variant": ["batch8-128", "batch8-128", "row-128", "row-128"],
                          "selection_loss": [0.5, 0.7, 0.6, 0.6], "selection_loss_calibrated": [0.8, 0.8, 0.9, 1.0],
                          "primary": [0.7, 0.7, 0.7, 0.7]})
    rows = variants.pooled(table).set_index("variant")
    assert rows.loc["batch8-128", "selection_loss_calibrated gain"] == 0
    row = rows.loc["row-128"]
    assert row["selection_loss_calibrated gain"] == pytest.approx(0.15)
    assert row["selection_loss_calibrated se_cells"] == pytest.approx(0.05)
    assert row["selection_loss gain"] == pytest.approx(0.0) and row["selection_loss cells > 0"] == 1
    assert row["raw >= 0.6"] == 2 and rows.loc["batch8-128", "raw >= 0.6"] == 1
