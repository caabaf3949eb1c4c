"""Throughput of short trials on Ray Tune with 1 and with 2 concurrent trials (1 thread each).

The same set of short ADMM+QAT trials of the MiniLM default on SST-2 (uniform plans, the same
steps each) runs twice through the project's Tune trainable: once with
``max_concurrent_trials=1``, once with 2. Prints trials per minute of each and their ratio
(target >= 1.7 on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)

SPECS = ("2:4:int8", "2:4:int4", "4:8:int4", "dense:int8")


def run(concurrency: int, plans: list, trial_config, dense_path: str, storage: Path) -> float:
    from ray import tune

    from nxmiformer.trials.trainable import trial_trainable

    tuner = tune.Tuner(
        tune.with_resources(trial_trainable, {"cpu": 1}),
        param_space={"candidate": tune.grid_search(plans), "trial": trial_config.to_dict(), "dense_path": dense_path},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
        run_config=tune.RunConfig(name=f"c{concurrency}", storage_path=str(storage), verbose=0),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    assert not grid.errors, grid.errors
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    import os

    import ray
    from transformers.utils import logging as hf_logging

    from nxmiformer.compression import CompressionPlan
    from nxmiformer.models import skeleton
    from nxmiformer.trials import DataConfig, DenseConfig, TrialConfig, finetune_dense

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    hf_logging.set_verbosity_error()
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="nxmi-scaling-"))
    data = DataConfig(task="sst2", data_dir=args.data_dir, max_length=64, train_size=2000, eval_size=200, seed=0)
    dense = finetune_dense(data, DenseConfig(), cache, progress=True)
    model = skeleton(dense.path)
    plans = [{"plan": CompressionPlan.uniform(model, s).to_dict()} for s in SPECS]
    config = TrialConfig(data=data, steps=args.steps, cache_dir=str(cache), threads=1)
    storage = Path(tempfile.mkdtemp(prefix="nxmi-scaling-runs-"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        one = run(1, plans, config, str(dense.path), storage)
        two = run(2, plans, config, str(dense.path), storage)
    finally:
        ray.shutdown()
    n = len(plans)
    print(f"{n} trials x {args.steps} steps (MiniLM, SST-2, batch 32, 1 thread per trial)")
    print(f"  1 concurrent: {one:7.1f} s  {60 * n / one:.2f} trials/min")
    print(f"  2 concurrent: {two:7.1f} s  {60 * n / two:.2f} trials/min")
    print(f"  throughput ratio {one / two:.2f} (target >= 1.7): {'PASS' if one / two >= 1.7 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
