"""Latency of the hardened default model served with PyTorch's CPU integer kernels vs FP32 dense.

Models (all from the same SST-2 dense warm start of the MiniLM default, or from ``--model``, an
``nxmi train`` / ``nxmi compress`` output directory whose ``plan.json`` says which modules are
compressed):

* ``fp32 dense``: the warm start as it is;
* ``fp32 hardened``: the plan applied and hardened (N:M zeros and the integer grid, held in fp32);
* ``int8 weight-only``: the hardened 8-bit modules as ``int8`` weights + per-row scales, computed
  with ``torch._weight_int8pack_mm`` (:func:`nxmiformer.compression.serve.to_int8_weight_only_`):
  the same function as ``fp32 hardened`` up to float rounding;
* ``int8 dynamic``: ``torch.ao.quantization.quantize_dynamic`` (fbgemm/x86 int8 GEMMs with
  per-channel int8 weights, which reproduce the hardened grid, and activations quantized per
  batch on the fly) over the hardened model's linears.

Latency: the same batch (``--batch`` rows x ``--length`` tokens), ``--rounds`` interleaved rounds
of every model, median per model, ratio to ``fp32 dense``. Metric: the task's primary metric of
every model on the full SST-2 validation split. No GPU is used; PyTorch has no sparse-int8 CPU
kernel, so N:M sparsity itself brings no speed here.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--model", help="a hardened model directory with plan.json (default: one-shot 2:4:int8 of the warm start)")
    parser.add_argument("--plan", default="2:4:int8", help="uniform plan for the default one-shot model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from nxmiformer.compression import CompressionPlan, LayerSpec, compress_, harden_
    from nxmiformer.compression.serve import to_int8_weight_only_
    from nxmiformer.models import load_model, load_tokenizer
    from nxmiformer.trials import DataConfig, DenseConfig, finetune_dense
    from nxmiformer.trials.data import load_glue, prepare_task_data
    from nxmiformer.trials.loop import evaluate

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    data = DataConfig(task="sst2", data_dir=args.data_dir, max_length=args.length, train_size=4000, seed=0)
    dense_result = finetune_dense(data, DenseConfig(), args.cache_dir, progress=True)
    dense = load_model(str(dense_result.path)).eval()
    if args.model:
        plan = CompressionPlan.load(Path(args.model) / "plan.json")
        hardened = load_model(args.model).eval()
        source = f"{args.model} ({plan.summary()})"
    else:
        hardened = copy.deepcopy(dense)
        plan = CompressionPlan.uniform(hardened, LayerSpec.parse(args.plan))
        source = f"one-shot {args.plan} of the warm start"
    compress_(hardened, plan)
    harden_(hardened)  # a no-op projection for an already hardened directory
    int8_wo = copy.deepcopy(hardened)
    swapped = to_int8_weight_only_(int8_wo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        from nxmiformer.compression import to_dense_

        int8_dyn = quantize_dynamic(to_dense_(copy.deepcopy(hardened)), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                    dtype=torch.qint8)
    models = {"fp32 dense": dense, "fp32 hardened": hardened, "int8 weight-only": int8_wo, "int8 dynamic": int8_dyn}

    tokenizer = load_tokenizer(str(dense_result.path))
    glue = prepare_task_data("sst2", tokenizer, data_dir=args.data_dir, max_length=args.length, include_train=False)
    sentences = load_glue("sst2", data_dir=args.data_dir, splits=["validation"])["validation"]["sentence"][: args.batch]
    inputs = dict(tokenizer(sentences, padding="max_length", truncation=True, max_length=args.length, return_tensors="pt"))
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(**inputs)
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                times[name].append(time.perf_counter() - start)

    print(f"\nSST-2, MiniLM default, {source}; {len(swapped)} modules on int8 kernels; batch {args.batch} x "
          f"{args.length} tokens, {args.threads} threads, {args.rounds} interleaved rounds (median)")
    base = statistics.median(times["fp32 dense"])
    print(f"{'model':<18} {'latency ms':>10} {'vs dense':>9} {'accuracy':>9}")
    for name, model in models.items():
        metrics = evaluate(model, glue, tokenizer)
        lat = statistics.median(times[name])
        print(f"{name:<18} {lat * 1e3:>10.1f} {lat / base:>9.3f} {metrics['primary']:>9.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
