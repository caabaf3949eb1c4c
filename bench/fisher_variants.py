"""Would another Fisher estimate rank the trained plans better? (kept records, a cached warm start; no training)

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
  ``sum_c p_c (grad log p_c)^2`` over the classes: needs no labels, one backward per class.

    python bench/fisher_variants.py RUN TASK --cache-dir DIR [--variants batch8-128,row-128,...] [--csv FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

import numpy as np
import pandas as pd
from objectives import completed
from scipy.stats import spearmanr

from nxmiformer.records import read_records

ARMS = ("fine", "uniform", "grid")
ESTIMATES = ("batch8", "row", "expected")
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
                p = float(log_p[c].exp())
                for name, w in weights.items():
                    fisher[name] += p * w.grad.detach() ** 2
                model.zero_grad(set_to_none=True)
    return fisher


def variant_table(dense_path: Path, config, modules: list[str], estimate: str, rows: int) -> pd.DataFrame:
    """The fisher column for every module x option of ``config.options`` under one variant."""
    from nxmiformer.search import profile

    saved = profile.FISHER_BATCH, profile._fisher_diagonal
    try:
        profile.FISHER_BATCH = 8 if estimate == "batch8" else 1
        if estimate == "expected":
            profile._fisher_diagonal = expected_fisher
        data = dataclasses.asdict(config.data_config())
        table = pd.DataFrame(profile.profile_modules(str(dense_path), data, rows, 64, modules, list(config.options),
                                                     oneshot=False))
    finally:
        profile.FISHER_BATCH, profile._fisher_diagonal = saved
    return table


def score(trials: pd.DataFrame, table: pd.DataFrame) -> dict:
    """Spearman of the plans' summed cost with each AGAINST column (+1: the proxy ranks as the trials)."""
    from nxmiformer.search.runner import plan_costs

    cost = plan_costs(trials["plan_json"], table, "fisher").to_numpy()
    out = {}
    for column in AGAINST:
        observed = trials[column].to_numpy(dtype=float) * (-1 if column == "primary" else 1)
        out[column] = float(spearmanr(cost, observed).statistic)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("run", type=Path, help="a kept run, e.g. bench/results/runs/search_quality_96875_seed14")
    parser.add_argument("task", choices=("mrpc", "sst2"))
    parser.add_argument("--cache-dir", required=True, help="the warm starts the cell ran on")
    parser.add_argument("--variants", default="batch8-128,row-128,batch8-512,row-512,expected-128",
                        type=lambda s: [parse_variant(v.strip()) for v in s.split(",") if v.strip()])
    parser.add_argument("--csv", help="append the rows to this file")
    args = parser.parse_args()

    from nxmiformer.compression import compressible_modules
    from nxmiformer.models import skeleton
    from nxmiformer.search.runner import SearchConfig
    from nxmiformer.trials.dense import finetune_dense

    frames = []
    for arm in ARMS:
        results = args.run / f"{args.task}-0.96875-{arm}" / "results.parquet"
        if not results.is_file():
            parser.error(f"no kept {arm} arm at {results.parent}")
        frames.append(completed(read_records(results)))
    trials = pd.concat(frames, ignore_index=True)
    config = dataclasses.replace(SearchConfig.load(args.run / f"{args.task}-0.96875-fine"), cache_dir=args.cache_dir)
    dense = finetune_dense(config.data_config(), config.dense_config(), config.cache_root(), progress=False)
    if not dense.cached:
        print(f"warning: no cached warm start in {args.cache_dir}: retrained, not the one the trials ran on")
    modules = [cm.name for cm in compressible_modules(skeleton(dense.path))]
    out = []
    for estimate, rows in args.variants:
        start = time.perf_counter()
        table = variant_table(dense.path, config, modules, estimate, rows)
        row = {"run": args.run.name, "task": args.task, "variant": f"{estimate}-{rows}", "trials": len(trials)}
        row |= score(trials, table) | {"seconds": time.perf_counter() - start}
        if (estimate, rows) == ("batch8", config.calib_size):  # today's proxy: must reproduce the records' cost
            from nxmiformer.search.runner import plan_costs
            cost = plan_costs(trials["plan_json"], table, "fisher").to_numpy()
            row["matches_records"] = bool(np.allclose(cost, trials["proxy_cost"].to_numpy(dtype=float), rtol=1e-4))
        out.append(row)
        print(pd.DataFrame([row]).to_string(index=False, header=len(out) == 1, float_format="{:.3f}".format), flush=True)
    if args.csv:
        frame = pd.DataFrame(out)
        frame.to_csv(args.csv, mode="a", index=False, header=not Path(args.csv).is_file())
    return 0


if __name__ == "__main__":
    sys.exit(main())
