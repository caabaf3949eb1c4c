"""Cold vs warm sensitivity profiling of the MiniLM default on SST-2.

Cold: every module x option of the menu (``--options``; default the 11 options the README's
figure was measured on, ``_common.MENU_11``) is projected one-shot and measured on the calibration
rows, beside the Fisher column (Ray tasks, one per CPU). Warm: the same call again, answered from
the Parquet cache. Prints both wall times and their ratio (target: warm at least 100x faster).
``--fisher-only`` profiles as ``nxmi search`` does by default (no one-shot forward per option:
a far cheaper cold profile).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from _common import MENU_11, add_data_dir, option_menu  # noqa: E402  (also puts the repository on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    add_data_dir(parser)
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--cache-dir", help="keeps the dense warm start between runs (profiles are always cleared)")
    parser.add_argument("--options", type=option_menu, default=MENU_11,
                        help="comma-separated option menu (default: the 11 options of the README's figure)")
    parser.add_argument("--fisher-only", action="store_true",
                        help="no one-shot forward per module x option (nxmi search's default profile)")
    args = parser.parse_args()
    import ray
    from transformers.utils import logging as hf_logging

    from nxmiformer.search import profile_sensitivity
    from nxmiformer.trials import DataConfig, DenseConfig, finetune_dense

    hf_logging.set_verbosity_error()
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="nxmi-profile-bench-"))
    shutil.rmtree(cache / "profiles", ignore_errors=True)
    data = DataConfig(task=args.task, data_dir=args.data_dir, max_length=64, train_size=2000, seed=0,
                      holdout_size=args.calib_size)
    dense = finetune_dense(data, DenseConfig(), cache, progress=True)
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        cold = profile_sensitivity(dense.path, data, args.options, args.calib_size, cache_dir=cache,
                                   workers=args.workers, progress=True, oneshot=not args.fisher_only)
        warm = profile_sensitivity(dense.path, data, args.options, args.calib_size, cache_dir=cache,
                                   workers=args.workers, progress=False, oneshot=not args.fisher_only)
    finally:
        ray.shutdown()
    assert warm.computed == 0 and len(warm.table) == len(cold.table)
    print(f"profile of {len(cold.table)} module x option pairs ({len(args.options)} options, "
          f"{'Fisher only' if args.fisher_only else 'one-shot and Fisher'}), "
          f"{args.calib_size} calibration rows, {args.workers} Ray workers")
    print(f"  cold {cold.wall_time:8.2f} s  (computed {cold.computed})")
    print(f"  warm {warm.wall_time:8.3f} s  (from cache {warm.cached})")
    ratio = cold.wall_time / warm.wall_time
    print(f"  cold / warm = {ratio:.0f}x  (target >= 100x): {'PASS' if ratio >= 100 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
