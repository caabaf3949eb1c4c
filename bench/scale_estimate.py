"""What a BERT-base search costs: measured pieces on this machine, and the wall time they imply on
1, 8 and 64 GPUs under Ray.

Measured here (one run, nothing else on the cores), on a randomly initialised model of BERT-base's
shape (``BertConfig()``: 12 layers, hidden 768, FFN 3072, 72 compressible modules; nothing
downloaded) and, for scale, the MiniLM default:

1. **profile cost per module x option**: ``search.profile.profile_modules`` (the function every
   profiling worker runs) with its one-shot forwards, on SST-2 calibration rows, for the six
   modules of the first layer and of the last layer over ``--options`` (default the 11 options the
   README's figures were measured on, ``_common.MENU_11``; a module of layer ``l`` re-runs layers ``l..11``,
   so the first layer is the dearest and the last the cheapest), less the fixed part (load, one
   dense forward, the Fisher backward) timed alone with the identity option (``nxmi search``
   profiles without the one-shot forwards by default, so its profile costs about the fixed part:
   the one-shot figure is an upper bound);
2. **training step**: dense and compressed (2:4:int8 + ADMM) steps interleaved
   (``bench/step_overhead.py``) for both models, so the compressed/dense ratio and the
   BERT-base/MiniLM cost ratio come from one run.

The estimate (printed after the measurements) needs one figure this machine cannot give: how fast
a GPU runs a trial. It takes the H200 figure measured earlier in this project
(``bench/results/recovery_gpu_run1.json``: 12 MiniLM 600-step trials sharing one H200 each took
a median of 78.9 s, so one GPU finishes a MiniLM trial every 6.6 s) and scales it by the
BERT-base/MiniLM step-cost ratio measured here (an assumption: on a GPU the small MiniLM kernels
use the device less fully, so this likely overstates BERT-base's cost). Every other ratio is
measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import MENU_11, ROOT, add_data_dir, option_menu  # noqa: E402  (also puts the repository on sys.path)

H200_RUN = ROOT / "bench" / "results" / "recovery_gpu_run1.json"


def h200_seconds_per_minilm_trial() -> tuple[float, int, float]:
    """(GPU seconds per 600-step MiniLM trial at full packing, trials sharing the GPU, their median wall)."""
    run = json.loads(H200_RUN.read_text())
    walls = [row["wall_s"] for row in run["rows"] if row["steps"] == 600]
    jobs = int(run["args"]["jobs"])
    median = statistics.median(walls)
    return median / jobs, jobs, median


def bert_base_dir(tmp: Path) -> Path:
    """A BERT-base-shaped random model with the MiniLM tokenizer (the same uncased 30,522 vocabulary)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from nxmiformer.models import load_tokenizer

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(num_labels=2)).save_pretrained(tmp)
    load_tokenizer("default").save_pretrained(tmp)
    return tmp


def time_profile(model_dir: Path, data: dict, modules: list[str], options: tuple[str, ...], calib: int, threads: int) -> float:
    from nxmiformer.search.profile import profile_modules

    start = time.perf_counter()
    profile_modules(str(model_dir), data, calib, 64, modules, options, threads=threads)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--calib", type=int, default=128, help="calibration rows of the profile")
    parser.add_argument("--length", type=int, default=64, help="tokens per row (profile and steps)")
    parser.add_argument("--steps", type=int, default=6, help="timed step rounds per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--trial-steps", type=int, default=600)
    parser.add_argument("--second-stage", type=int, default=4,
                        help="trials of a second stage that waits for the first (nxmi search's Optuna stage, --refine-trials)")
    parser.add_argument("--options", type=option_menu, default=MENU_11,
                        help="comma-separated option menu of the profile (default: the 11 options of the README's figures)")
    parser.add_argument("--warm-steps", type=int, default=500, help="dense warm-start steps (one epoch of 16,000 rows)")
    parser.add_argument("--gpus", default="1,8,64")
    args = parser.parse_args()

    import step_overhead
    from transformers.utils import logging as hf_logging

    from nxmiformer.compression import compressible_modules
    from nxmiformer.models import skeleton
    from nxmiformer.trials import DataConfig

    hf_logging.set_verbosity_error()
    layers = 12
    data = dataclasses.asdict(DataConfig(task="sst2", data_dir=args.data_dir, max_length=args.length, seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bert_base_dir(Path(tmp))
        modules = compressible_modules(skeleton(model_dir))
        first = [cm.name for cm in modules if cm.layer == 0]
        last = [cm.name for cm in modules if cm.layer == layers - 1]
        fixed = time_profile(model_dir, data, first[:1], ("dense",), args.calib, args.threads)
        t_first = time_profile(model_dir, data, first, args.options, args.calib, args.threads)
        t_last = time_profile(model_dir, data, last, args.options, args.calib, args.threads)
    options = len([o for o in args.options if o != "dense"])  # the identity option costs no forward
    per_first = (t_first - fixed) / (len(first) * options)
    per_last = (t_last - fixed) / (len(last) * options)
    per_layer = [per_first + (per_last - per_first) * layer / (layers - 1) for layer in range(layers)]
    profile_cpu = fixed + sum(per_layer) * len(first) * options

    steps = {}
    for model in ("default", "bert-base-shape"):
        ns = argparse.Namespace(steps=args.steps, warmup=1, threads=args.threads, batch=32, seq_len=args.length,
                                interval=32, seed=0, model=model)
        steps[model] = step_overhead.run(ns)

    bert, mini = steps["bert-base-shape"], steps["default"]
    cost_ratio = bert["dense_median_s"] / mini["dense_median_s"]
    gpu_mini, jobs, wall = h200_seconds_per_minilm_trial()
    trial_cpu = args.trial_steps * bert["compressed_median_s"]
    gpu_speedup = (args.trial_steps * mini["compressed_median_s"]) / gpu_mini
    trial_gpu = gpu_mini * cost_ratio
    warm_gpu = args.warm_steps * bert["dense_median_s"] / gpu_speedup
    profile_gpu = profile_cpu / gpu_speedup
    print(f"\nBERT-base shape, {len(modules)} modules x {len(args.options)} options, {args.calib} calibration rows x "
          f"{args.length} tokens, {args.threads} threads")
    print("| measured on this machine | value |\n|---|---|")
    print(f"| profile: fixed part (load, dense forward, Fisher backward) | {fixed:.1f} s |")
    print(f"| profile: one module x option, first layer / last layer | {per_first:.2f} s / {per_last:.2f} s |")
    print(f"| profile: whole table, one worker (interpolated over layers) | {profile_cpu / 60:.1f} min |")
    for name, r in (("MiniLM", mini), ("BERT-base shape", bert)):
        print(f"| train step {name} (batch 32 x {args.length}): dense / 2:4:int8+ADMM, ratio | "
              f"{r['dense_median_s']:.2f} s / {r['compressed_median_s']:.2f} s, {r['ratio_median']:.3f} |")
    print(f"| BERT-base / MiniLM dense step cost | {cost_ratio:.2f} |")
    print(f"| one BERT-base {args.trial_steps}-step trial on this CPU | {trial_cpu / 3600:.1f} h |")

    print(f"\nGPU side (H200, measured earlier: {jobs} MiniLM trials sharing one GPU took {wall:.1f} s each = "
          f"{gpu_mini:.1f} GPU-s per trial, {gpu_speedup:.0f}x this CPU); BERT-base trial = {trial_gpu:.0f} GPU-s "
          f"(x{cost_ratio:.2f}), warm start {warm_gpu:.0f} s, profile {profile_gpu:.0f} GPU-s")
    stage1 = args.trials - args.second_stage
    print(f"| GPUs | warm start | profile | stage 1 ({stage1} trials) | stage 2 ({args.second_stage}) | total |")
    print("|---|---|---|---|---|---|")
    for gpus in (int(g) for g in args.gpus.split(",")):
        profile = profile_gpu / min(gpus, len(modules))  # one Ray task per share of modules
        waves1, waves2 = math.ceil(stage1 / gpus), math.ceil(args.second_stage / gpus)
        s1, s2 = waves1 * trial_gpu, waves2 * trial_gpu
        total = warm_gpu + profile + s1 + s2
        print(f"| {gpus} | {warm_gpu / 60:.1f} min | {profile / 60:.1f} min | {s1 / 60:.1f} min ({waves1} waves) | "
              f"{s2 / 60:.1f} min ({waves2}) | {total / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
