"""Every GPU check in one short run, printed as one table (run it on a CUDA machine).

1. **search**: a small search end to end on Ray with fractional GPUs (``--gpus-per-trial``, 0.25
   by default: four trials share one GPU): MiniLM default, SST-2 rows from ``--data-dir``, 4
   candidates x ``--search-steps`` steps; wall time and completed trials.
2. **step**: the training step of a compressed model (2:4:int8, ADMM penalty) against the dense
   step on the GPU, medians of interleaved timed steps (CUDA-synchronised), at fp32 and bf16.
3. **serve**: 2:4 semi-structured sparse inference: every encoder linear of a 2:4 model hardened
   to its mask, in fp16, its weight put into PyTorch's semi-structured sparse layout
   (``torch.sparse.to_sparse_semi_structured``), against the same model dense in fp16, at batch
   1, 32 and 128 x 128 tokens, for the MiniLM default and a BERT-base-shaped model (random
   weights from ``BertConfig``; nothing is downloaded). The ratio is reported even below 1.

Without CUDA it stops with one line (exit 2); ``--cpu-dry-run`` runs parts 1 and 2 on the CPU at
toy sizes (part 3 needs CUDA) to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--gpus-per-trial", type=float, default=0.25)
    parser.add_argument("--search-steps", type=int, default=40)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model in parts 2 and 3")
    parser.add_argument("--cpu-dry-run", action="store_true", help="parts 1-2 on the CPU at toy sizes")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("no CUDA device visible: bench/gpu_check.py measures GPUs only (--cpu-dry-run checks the script)",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    rows = []
    rows += search_check(args, device)
    for precision in ("fp32", "bf16"):
        rows.append(step_check(args, device, precision))
    if device.type == "cuda":
        for name in ("minilm", "bert-base"):
            for batch in (1, 32, 128):
                rows.append(serve_check(args, name, batch))
    else:
        rows.append({"check": "serve 2:4 semi-structured", "setting": "-", "value": "needs CUDA", "ratio": ""})

    import pandas as pd

    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU dry run"
    print(f"\n{gpu}, torch {torch.__version__}")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def search_check(args, device) -> list[dict]:
    from nxmiformer.search import SearchConfig, run_search

    dry = device.type == "cpu"
    gpus = 0.0 if dry else args.gpus_per_trial
    with tempfile.TemporaryDirectory() as out:
        config = SearchConfig(
            out=f"{out}/search", task="sst2", target_ratio=0.875, data_dir=args.data_dir, max_length=64,
            train_size=400 if dry else 2000, selection_size=100, eval_size=200, calib_size=16 if dry else 64,
            trials=4, steps=8 if dry else args.search_steps, asha=False, dense_epochs=1.0,
            options=("dense:int8", "2:4:int8", "4:8:int4") if dry else None,  # the dry run: a cheap profile
            cache_dir=f"{out}/cache", device=device.type, gpus_per_trial=gpus, concurrency=2 if dry else None)
        start = time.perf_counter()
        result = run_search(config, progress=True)
        wall = time.perf_counter() - start
    done = int((result.results["status"] == "completed").sum())
    return [{"check": "search (4 trials)", "setting": f"gpus_per_trial {gpus:g}, {config.steps} steps",
             "value": f"{wall:.0f} s, {done}/{len(result.results)} completed", "ratio": ""}]


def _timed(step, device, n: int) -> list[float]:
    import torch

    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def step_check(args, device, precision: str) -> dict:
    import torch

    from nxmiformer.compression import ADMM, CompressionPlan, compress_
    from nxmiformer.models import load_model
    from nxmiformer.trials.loop import train_step

    torch.manual_seed(0)
    dense = load_model("default", num_labels=2).to(device).train()
    compressed = copy.deepcopy(dense)
    plan = CompressionPlan.uniform(compressed, "2:4:int8")
    compress_(compressed, plan)
    admm = ADMM(compressed, plan)
    rows, length = (8, 32) if device.type == "cpu" else (32, 128)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, dense.config.vocab_size, (rows, length), generator=g),
             "attention_mask": torch.ones(rows, length, dtype=torch.long), "labels": torch.randint(0, 2, (rows,), generator=g)}
    steppers = {}
    for name, model, penalty in (("dense", dense, None), ("compressed", compressed, admm.penalty)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        steppers[name] = (lambda m=model, o=optimizer, s=schedule, p=penalty:
                          train_step(m, batch, o, s, regression=False, penalty=p, precision=precision))
    n = 3 if device.type == "cpu" else args.steps
    times = {name: [] for name in steppers}
    for name, step in steppers.items():
        _timed(step, device, 2)  # warm-up
    for i in range(n):  # interleaved, order swapped every round
        for name in (list(steppers) if i % 2 == 0 else list(steppers)[::-1]):
            times[name] += _timed(steppers[name], device, 1)
    ratio = statistics.median(times["compressed"]) / statistics.median(times["dense"])
    return {"check": "train step compressed/dense", "setting": f"{precision}, batch {rows} x {length}",
            "value": f"{statistics.median(times['dense']) * 1e3:.1f} ms dense", "ratio": f"{ratio:.3f}"}


def serve_check(args, name: str, batch: int) -> dict:
    import torch
    from torch.sparse import to_sparse_semi_structured
    from transformers import BertConfig, BertForSequenceClassification

    from nxmiformer.compression import CompressionPlan, compress_, harden_, to_dense_
    from nxmiformer.models import load_model

    torch.manual_seed(0)
    if name == "minilm":
        model = load_model("default", num_labels=2)
    else:
        model = BertForSequenceClassification(BertConfig(num_labels=2))  # BERT-base shapes, random weights
    compress_(model, CompressionPlan.uniform(model, "2:4:fp16"))
    harden_(model)
    to_dense_(model)  # plain nn.Linear layers holding exactly 2:4 weights
    dense = model.half().cuda().eval()
    sparse = copy.deepcopy(dense)
    for module in sparse.bert.encoder.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (batch, 128), device="cuda"),
              "attention_mask": torch.ones(batch, 128, dtype=torch.long, device="cuda")}
    with torch.inference_mode():
        diff = (dense(**inputs).logits - sparse(**inputs).logits).abs().max().item()
        medians = {}
        for label, m in (("dense", dense), ("sparse", sparse)):
            _timed(lambda: m(**inputs), torch.device("cuda"), 3)
            medians[label] = statistics.median(_timed(lambda: m(**inputs), torch.device("cuda"), args.steps))
    return {"check": f"serve {name} 2:4 fp16 dense/sparse", "setting": f"batch {batch} x 128",
            "value": f"{medians['dense'] * 1e3:.2f} ms dense, {medians['sparse'] * 1e3:.2f} ms sparse, max diff {diff:.1e}",
            "ratio": f"{medians['dense'] / medians['sparse']:.3f}"}


if __name__ == "__main__":
    sys.exit(main())
