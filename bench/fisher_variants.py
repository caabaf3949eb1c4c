"""Would another Fisher estimate, or a plan's one-shot fitness, rank the trained plans better?

Kept records and a cached warm start; no training.

The ``fisher`` proxy prices a module x option as ``sum(F * (W - proj(W))^2)``, with ``F`` the
empirical Fisher diagonal: squared gradients of the task loss on ``calib_size`` calibration rows,
summed over micro-batches of :data:`nxmiformer.search.profile.FISHER_BATCH` rows (8). Squaring a
micro-batch's mean gradient lets the rows' gradients cancel, and 128 rows is few. This recomputes
the proxy on a kept cell's cached warm start under variants of that estimate and scores each, as
``search_quality.py`` does, by the Spearman rank correlation between the plans' summed cost and
their trials' final selection loss (raw and calibrated) and validation metric, over the cell's
kept trials (every arm). Variants (``--variants``, each ``<estimate>-<rows>``):

* ``batch8-N``: today's estimate on N calibration rows (``batch8-128`` is today's proxy: its
  costs must match the records' ``proxy_cost``, which checks the pairing);
* ``row-N``: one row per backward pass (the per-example empirical Fisher);
* ``expected-N``: per row, the Fisher of the model's own predictive distribution,
  ``sum_c p_c (grad log p_c)^2`` over the classes: needs no labels, one backward per class;
* ``rowdot-N``: without the diagonal, from each row's first-order loss change
  ``s_i(m, o) = <G_i(m), W_m - proj_o(W_m)>`` (``G_i(m)``: row i's gradient of module m): the
  additive cost ``sum_i s_i(m, o)^2``, the full Fisher quadratic within each module;
* ``plan-N``: a plan's cost ``sum_i (sum_m s_i(m, plan(m)))^2``, with the cross terms between
  modules (not additive: it scores plans, the knapsack cannot use it);
* ``kl-N``: a plan's one-shot fitness, EvoPress's screen: the plan applied to the warm start at once
  (every module projected, no training), then the mean KL(dense || compressed) of the predictions
  over N calibration rows (not additive, not approximated);
* ``loss-N``: the same one-shot model's task loss on those rows.

    python bench/fisher_variants.py RUN TASK --cache-dir DIR [--variants batch8-128,row-128,...] [--csv FILE]
    python bench/fisher_variants.py --pool bench/results/fisher_variants.csv   # the gains over today's, pooled
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

import numpy as np
import pandas as pd
from objectives import add_cell_arguments, cell_arms, over_cells
from scipy.stats import spearmanr


DIAGONAL = ("batch8", "row", "expected")
TAYLOR = ("rowdot", "plan")
ONESHOT = ("kl", "loss")
ESTIMATES = DIAGONAL + TAYLOR + ONESHOT
AGAINST = ("selection_loss", "selection_loss_calibrated", "primary")


def parse_variant(text: str) -> tuple[str, int]:
    """``<estimate>-<rows>`` -> (estimate, rows); a bad one is an argparse error naming what is allowed."""
    estimate, _, rows = text.partition("-")
    if estimate not in ESTIMATES or not rows.isdigit() or int(rows) < 1:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected <estimate>-<rows>, estimate one of "
                                         f"{', '.join(ESTIMATES)}, rows a positive integer")
    return estimate, int(rows)


def expected_fisher(model, calib, tokenizer, regression: bool, names: set[str]) -> dict:
    """Per row, ``sum_c p_c (grad log p_c)^2``: the Fisher of the model's predictive distribution."""
    import torch

    from nxmiformer.compression import compressible_modules
    from nxmiformer.trials.data import make_dataloader
    from nxmiformer.trials.loop import model_inputs

    if regression:
        raise SystemExit("the expected Fisher is for classification tasks; allowed: batch8, row")
    weights = {cm.name: cm.module.weight for cm in compressible_modules(model) if cm.name in names}
    fisher = {name: torch.zeros_like(w) for name, w in weights.items()}
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for batch in make_dataloader(calib, tokenizer, 1):
            log_p = torch.log_softmax(model(**model_inputs(batch, "cpu")).logits.float(), -1)[0]
            for c in range(log_p.shape[0]):
                log_p[c].backward(retain_graph=c + 1 < log_p.shape[0])
                p = float(log_p[c].detach().exp())
                for name, w in weights.items():
                    fisher[name] += p * w.grad.detach() ** 2
                model.zero_grad(set_to_none=True)
    return fisher


def load_cell(dense_path: Path, config) -> SimpleNamespace:
    """The warm start, its tokenizer and the task, loaded once for every estimate."""
    from nxmiformer.models import load_model, load_tokenizer
    from nxmiformer.trials.data import get_task

    data = config.data_config()
    return SimpleNamespace(model=load_model(str(dense_path)).eval(), tokenizer=load_tokenizer(str(dense_path)),
                           info=get_task(data.task), data=data)


def calibration(cell: SimpleNamespace, rows: int):
    """The first ``rows`` calibration rows, drawn as the profile draws them."""
    from nxmiformer.trials.data import prepare_task_data

    data = cell.data
    return prepare_task_data(cell.info, cell.tokenizer, data_dir=data.data_dir, max_length=data.max_length,
                             seed=data.seed, include_train=False, holdout_size=rows).holdout


def weight_moves(cell: SimpleNamespace, pairs: list[tuple[str, str]]) -> list:
    """Per (module, option) pair, ``W - proj(W)`` (None for an identity option): one projection each."""
    from nxmiformer.compression import LayerSpec, compressible_modules, project

    weights = {cm.name: cm.module.weight.detach() for cm in compressible_modules(cell.model)}
    specs = [LayerSpec.parse(option) for _, option in pairs]
    return [None if spec.is_identity else weights[m] - project(weights[m], spec) for (m, _), spec in zip(pairs, specs)]


def fishers(cell: SimpleNamespace, modules: set[str], variants: list[tuple[str, int]]) -> dict:
    """The Fisher diagonal of ``modules`` under each variant, ``{variant: {module: tensor}}``."""
    from nxmiformer.search import profile

    out, saved = {}, profile.FISHER_BATCH
    try:
        for estimate, rows in variants:
            start = time.perf_counter()
            profile.FISHER_BATCH = 8 if estimate == "batch8" else 1
            estimator = expected_fisher if estimate == "expected" else profile._fisher_diagonal
            out[f"{estimate}-{rows}"] = estimator(cell.model, calibration(cell, rows), cell.tokenizer,
                                                  cell.info.is_regression, modules)
            print(f"  {estimate}-{rows}: Fisher diagonal in {time.perf_counter() - start:.0f}s", flush=True)
    finally:
        profile.FISHER_BATCH = saved
    return out


def variant_tables(pairs: list[tuple[str, str]], moves: list, diagonals: dict) -> dict[str, pd.DataFrame]:
    """Per variant, the ``fisher`` column of each (module, option) in ``pairs``: its move, squared,
    weighed by every variant's diagonal."""
    rows: dict[str, list] = {name: [] for name in diagonals}
    for (module, option), move in zip(pairs, moves):
        for name, fisher in diagonals.items():
            weighted = 0.0 if move is None else float((fisher[module] * move ** 2).sum())
            rows[name].append({"module": module, "option": option, "fisher": weighted})
    return {name: pd.DataFrame(r) for name, r in rows.items()}


def row_products(cell: SimpleNamespace, pairs: list[tuple[str, str]], moves: list, rows: int) -> np.ndarray:
    """``[rows, pairs]``: each calibration row's first-order loss change ``<G_i(m), W_m - proj_o(W_m)>``
    for each (module, option) pair and its move (0 for an identity option)."""
    import torch

    from nxmiformer.compression import compressible_modules
    from nxmiformer.trials.data import make_dataloader
    from nxmiformer.trials.loop import model_inputs, task_loss

    model = cell.model
    weights = {cm.name: cm.module.weight for cm in compressible_modules(model)}
    out = np.zeros((rows, len(pairs)))
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i, batch in enumerate(make_dataloader(calibration(cell, rows), cell.tokenizer, 1)):
            task_loss(model(**model_inputs(batch, "cpu")).logits.float(), batch["labels"], cell.info.is_regression).backward()
            for k, ((module, _), move) in enumerate(zip(pairs, moves)):
                if move is not None:
                    out[i, k] = float((weights[module].grad * move).sum())
            model.zero_grad(set_to_none=True)
    return out


def plan_columns(trials: pd.DataFrame, pairs: list[tuple[str, str]], modules: list[str]) -> list[list[int]]:
    """Per trial, the index in ``pairs`` of each module's (module, option) under its plan, in ``modules`` order."""
    from nxmiformer.compression import CompressionPlan

    index = {pair: k for k, pair in enumerate(pairs)}
    return [[index[(m, str(plan.spec_for(m)))] for m in modules]
            for plan in map(CompressionPlan.from_json, trials["plan_json"])]


def plan_taylor(trials: pd.DataFrame, pairs: list[tuple[str, str]], products: np.ndarray, modules: list[str]) -> np.ndarray:
    """Each trial's plan-level cost ``sum_i (sum_m s_i(m, plan(m)))^2``."""
    return np.array([float((products[:, columns].sum(axis=1) ** 2).sum())
                     for columns in plan_columns(trials, pairs, modules)])


def oneshot_fitness(cell: SimpleNamespace, trials: pd.DataFrame, pairs: list[tuple[str, str]], moves: list, rows: int,
                    modules: list[str]) -> pd.DataFrame:
    """Per trial, its plan applied to the warm start in one shot (``W - (W - proj(W))`` for every
    module at once), then on ``rows`` calibration rows: ``kl``, the mean KL(dense || compressed) of
    the predictive distributions, and ``loss``, the task loss (classification: the cells are MRPC and
    SST-2). The warm start is restored after."""
    import torch
    import torch.nn.functional as F

    from nxmiformer.compression import compressible_modules
    from nxmiformer.trials.data import make_dataloader
    from nxmiformer.trials.loop import model_inputs

    model = cell.model
    weights = {cm.name: cm.module.weight for cm in compressible_modules(model)}
    original = {m: weights[m].detach().clone() for m in modules}
    batches = list(make_dataloader(calibration(cell, rows), cell.tokenizer, 32))
    labels = torch.cat([b["labels"] for b in batches]).long()

    def log_probs() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([torch.log_softmax(model(**model_inputs(b, "cpu")).logits.float(), -1) for b in batches])

    dense = log_probs()
    out = []
    try:
        for columns in plan_columns(trials, pairs, modules):
            with torch.no_grad():
                for m, k in zip(modules, columns):
                    weights[m].copy_(original[m] if moves[k] is None else original[m] - moves[k])
            compressed = log_probs()
            out.append({"kl": float((dense.exp() * (dense - compressed)).sum(-1).mean()),
                        "loss": float(F.nll_loss(compressed, labels))})
    finally:
        with torch.no_grad():
            for m in modules:
                weights[m].copy_(original[m])
    return pd.DataFrame(out)


def score(trials: pd.DataFrame, table: pd.DataFrame) -> dict:
    """Spearman of the plans' summed cost with each AGAINST column (+1: the proxy ranks as the trials)."""
    from nxmiformer.search.runner import plan_costs

    return spearmans(trials, plan_costs(trials["plan_json"], table, "fisher").to_numpy())


def spearmans(trials: pd.DataFrame, cost: np.ndarray) -> dict:
    """Spearman of ``cost`` with each AGAINST column (the task metric flipped: +1 ranks as the trials)."""
    out = {}
    for column in AGAINST:
        observed = trials[column].to_numpy(dtype=float) * (-1 if column == "primary" else 1)
        out[column] = float(spearmanr(cost, observed).statistic)
    return out


def pooled(table: pd.DataFrame, base: str = "batch8-128") -> pd.DataFrame:
    """Per variant and AGAINST column: the mean over cells of its correlation minus ``base``'s, se_cells,
    the cells where it gains, and the cells where the correlation with the raw loss reaches 0.6."""
    reference = table[table["variant"] == base].set_index("run")
    rows = []
    for variant, group in table.groupby("variant", sort=False):
        group = group.set_index("run")
        row = {"variant": variant, "cells": len(group), "raw >= 0.6": int((group["selection_loss"] >= 0.6).sum())}
        for column in AGAINST:
            gain = over_cells(group[column] - reference[column])
            row[f"{column} mean"] = group[column].mean()
            row |= {f"{column} gain": gain["mean"], f"{column} se_cells": gain["se_cells"],
                    f"{column} cells > 0": gain["cells > 0"]}
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    add_cell_arguments(parser, "the warm starts the cell ran on")
    parser.add_argument("--pool", type=Path, help="only print the pooled gains of a --csv file's cells over batch8-128")
    parser.add_argument("--variants", default="batch8-128,row-128,batch8-512,row-512,expected-128",
                        type=lambda s: [parse_variant(v.strip()) for v in s.split(",") if v.strip()])
    parser.add_argument("--csv", help="append the rows to this file")
    args = parser.parse_args()
    if args.pool:
        if not args.pool.is_file():
            parser.error(f"--pool {args.pool}: no such file")
        with pd.option_context("display.width", 250, "display.float_format", "{:.3f}".format):
            print(pooled(pd.read_csv(args.pool)).T.to_string(header=False))
        return 0
    if args.run is None or args.task is None or args.cache_dir is None:
        parser.error("give RUN TASK --cache-dir DIR (or --pool FILE)")

    from nxmiformer.compression import compressible_modules
    from nxmiformer.models import skeleton
    from nxmiformer.search.runner import SearchConfig
    from nxmiformer.trials.dense import finetune_dense

    trials = pd.concat(cell_arms(args.run, args.task).values(), ignore_index=True)
    config = dataclasses.replace(SearchConfig.load(args.run / f"{args.task}-0.96875-fine"), cache_dir=args.cache_dir)
    dense = finetune_dense(config.data_config(), config.dense_config(), config.cache_root(), progress=False)
    if not dense.cached:
        print(f"warning: no cached warm start in {args.cache_dir}: retrained, not the one the trials ran on")
    from nxmiformer.compression import CompressionPlan
    from nxmiformer.search.runner import plan_costs

    modules = [cm.name for cm in compressible_modules(skeleton(dense.path))]
    plans = [CompressionPlan.from_json(p) for p in trials["plan_json"]]
    pairs = {(m, str(plan.spec_for(m))) for plan in plans for m in modules}
    print(f"{args.run.name} {args.task}: {len(trials)} trials, {len(pairs)} module x option pairs", flush=True)
    cell = load_cell(dense.path, config)
    ordered = sorted(pairs)
    start = time.perf_counter()
    moves = weight_moves(cell, ordered)
    print(f"  projections in {time.perf_counter() - start:.0f}s", flush=True)
    diagonals = fishers(cell, set(modules), [v for v in args.variants if v[0] in DIAGONAL])
    tables = variant_tables(ordered, moves, diagonals)
    products = {}
    for rows in sorted({rows for estimate, rows in args.variants if estimate in TAYLOR}):
        start = time.perf_counter()
        products[rows] = row_products(cell, ordered, moves, rows)
        print(f"  per-row first-order changes on {rows} rows in {time.perf_counter() - start:.0f}s", flush=True)
    fitness = {}
    for rows in sorted({rows for estimate, rows in args.variants if estimate in ONESHOT}):
        start = time.perf_counter()
        fitness[rows] = oneshot_fitness(cell, trials, ordered, moves, rows, modules)
        print(f"  one-shot fitness of {len(trials)} plans on {rows} rows in {time.perf_counter() - start:.0f}s", flush=True)
    out = []
    for estimate, rows in args.variants:
        name = f"{estimate}-{rows}"
        if estimate in ONESHOT:
            cost = fitness[rows][estimate].to_numpy()
        elif estimate == "plan":
            cost = plan_taylor(trials, ordered, products[rows], modules)
        else:
            table = tables[name] if estimate in DIAGONAL else pd.DataFrame(
                {"module": [m for m, _ in ordered], "option": [o for _, o in ordered],
                 "fisher": (products[rows] ** 2).sum(axis=0)})
            cost = plan_costs(trials["plan_json"], table, "fisher").to_numpy()
        row = {"run": args.run.name, "task": args.task, "variant": name, "trials": len(trials)} | spearmans(trials, cost)
        if (estimate, rows) == ("batch8", config.calib_size):  # today's proxy: must reproduce the records' cost
            row["matches_records"] = bool(np.allclose(cost, trials["proxy_cost"].to_numpy(dtype=float), rtol=1e-4))
        out.append(row)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(pd.DataFrame(out).to_string(index=False))
    if args.csv:
        frame = pd.DataFrame(out)
        frame.to_csv(args.csv, mode="a", index=False, header=not Path(args.csv).is_file())
    return 0


if __name__ == "__main__":
    sys.exit(main())
