"""Accuracy recovery of compression methods on real GLUE data, same step budget for each.

Dense warm start of the MiniLM default on SST-2 (from ``../shared/data/glue``), then for each
uniform plan (2:4 INT8 = 87.5%, 2:4 INT4 = 93.75% under the ``paper`` convention):

* one-shot   : hard projection of the dense weights, no training
* masked QAT : one-shot mask, then STE-QAT for ``--steps`` steps (no ADMM)
* ADMM+QAT   : ADMM with STE fake-quant for half the steps, hard projection, masked QAT
* ADMM+QAT+KD: the same with logit distillation from the dense model

Prints one table: dense metric, each method's metric and retention (metric / dense metric).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

METHODS = {
    "one-shot": dict(steps=0),
    "masked QAT": dict(admm_fraction=0.0, kd_alpha=0.0),
    "ADMM+QAT": dict(admm_fraction=0.5, kd_alpha=0.0),
    "ADMM+QAT+KD": dict(admm_fraction=0.5, kd_alpha=0.5),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    add_data_dir(parser)
    parser.add_argument("--specs", default="2:4:int8,2:4:int4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per trial")
    parser.add_argument("--train-size", type=int, default=20000, help="training rows (dense and trials)")
    parser.add_argument("--eval-size", type=int, default=None, help="validation rows (default: all)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--dense-epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rho", type=float, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from nxmiformer.trials import DataConfig, DenseConfig, TrialConfig, finetune_dense, run_trial

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    data = DataConfig(task=args.task, data_dir=args.data_dir, max_length=args.max_length,
                      train_size=args.train_size, eval_size=args.eval_size, seed=0)
    dense_cfg = DenseConfig(epochs=args.dense_epochs)
    t0 = time.perf_counter()
    dense = finetune_dense(data, dense_cfg, args.cache_dir, progress=True)
    print(f"dense {args.task} {dense.primary:.4f} ({'cached' if dense.cached else f'{dense.wall_time:.0f}s'})", flush=True)

    rows = []
    for spec in args.specs.split(","):
        for method in args.methods.split(","):
            extra = dict(METHODS[method])
            if args.rho is not None:
                extra["rho"] = args.rho
            cfg = TrialConfig(data=data, dense=dense_cfg, steps=extra.pop("steps", args.steps), lr=args.lr,
                              cache_dir=args.cache_dir, threads=args.threads, **extra)
            result = run_trial(spec, cfg, dense=dense, progress=True)
            row = {"spec": spec, "method": method, "ratio_paper": result.ratio_paper,
                   "ratio_storage": result.ratio_storage, "dense": dense.primary, "metric": result.primary,
                   "retention": result.retention, "steps": result.steps, "admm_residual": result.admm_residual,
                   "wall_s": round(result.wall_time, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n{args.task} validation ({'all' if args.eval_size is None else args.eval_size} rows), MiniLM-L6-H384, "
          f"max length {args.max_length}, {args.steps} steps per trial, train rows {args.train_size}")
    print(f"dense {dense.metrics.get('accuracy', dense.primary):.4f}\n")
    print("| plan | paper ratio | storage ratio | method | metric | retention |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['spec']} | {r['ratio_paper']:.2%} | {r['ratio_storage']:.2%} | {r['method']} | "
              f"{r['metric']:.4f} | {r['retention']:.2%} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"dense": dense.metrics, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
