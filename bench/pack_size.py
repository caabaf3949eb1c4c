"""Size on disk of packed compressed models versus the ``storage`` accounting.

What is measured
----------------
The embedded MiniLM default (``load_model("default")``: 6 layers, hidden 384, FFN 1536; 36
encoder linears, 10.6M weights) is compressed with each plan below by ``compress_`` + ``harden_``
(one-shot projection; the sizes do not depend on training), packed with ``pack_model`` into a
temporary directory, and loaded back with ``load_packed``. For the compressed modules only (the
encoder linears a plan compresses; embeddings, biases, LayerNorm and classifier are stored as usual
and not counted) one row per plan gives:

* ``accounted``: the ``storage`` convention of DESIGN.md (kept values + ``ceil(log2 M)``-bit N:M
  indices + 16 bits per scale), in bytes;
* ``tensors``: bytes of the packed tensors (values, indices, float32 scales);
* ``file``: size of ``compressed.safetensors`` (tensors + safetensors header);
* ``tensors/acc`` and ``file/acc``: the ratios (target: within 5%, i.e. <= 1.05);
* ``scale+``: the part of the excess due to float32 scales (16 bits per scale group beyond the
  accounting; 16-bit scales would not reproduce the hardened weights exactly);
* ``dense fp32``: the same modules as float32, and ``max|dlogits|`` between the hardened model and
  the model loaded from the packed directory, on a fixed random batch (target <= 1e-4).

Plans: uniform 2:4:int8, 2:4:int4, 4:8:int4, and a heterogeneous one: layers 0 and 5 (first and
last) dense:int8 on all six linears; layers 1-4 attention (query, key, value, output) 2:4:int8 and
FFN (in, out) 4:8:int4.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNIFORM = ("2:4:int8", "2:4:int4", "4:8:int4")
HETEROGENEOUS = "hetero: L0,L5 dense:int8; attn 2:4:int8; ffn 4:8:int4"
TARGET = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model name or directory (default: embedded MiniLM)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line per plan instead of the table")
    return p.parse_args(argv)


def load_quiet(name: str):
    from transformers.utils import logging as hf_logging

    from nxmiformer.models import load_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return load_model(name).eval()


def heterogeneous_plan(model):
    from nxmiformer.compression import CompressionPlan, compressible_modules

    modules = compressible_modules(model)
    last = max(cm.layer for cm in modules)
    specs = {}
    for cm in modules:
        if cm.layer in (0, last):
            specs[cm.name] = "dense:int8"
        elif cm.component in ("ffn_in", "ffn_out"):
            specs[cm.name] = "4:8:int4"
        else:
            specs[cm.name] = "2:4:int8"
    return CompressionPlan(specs)


def measure(name: str, base, make_plan, batch: dict) -> dict:
    import copy

    from nxmiformer.compression import compress_, harden_
    from nxmiformer.export import load_packed, pack_model

    model = copy.deepcopy(base)
    plan = make_plan(model)
    harden_(compress_(model, plan))
    with torch.no_grad():
        logits = model(**batch).logits
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = pack_model(model, plan, Path(tmp) / "packed")
        pack_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = load_packed(Path(tmp) / "packed")
        load_s = time.perf_counter() - t0
        with torch.no_grad():
            diff = float((loaded(**batch).logits - logits).abs().max())
    return {
        "plan": name,
        "modules": len(report.modules),
        "accounted_bytes": report.storage_bytes,
        "tensor_bytes": report.tensor_bytes,
        "file_bytes": report.file_bytes,
        "header_bytes": report.header_bytes,
        "scale_overhead_bytes": report.scale_overhead_bytes,
        "dense_fp32_bytes": report.dense_bytes,
        "tensor_ratio": report.ratio,
        "file_ratio": report.file_ratio,
        "max_abs_logit_diff": diff,
        "pack_s": pack_s,
        "load_s": load_s,
    }


def table(rows: list[dict], model_name: str) -> str:
    head = (f"{'plan':<52} {'accounted':>10} {'tensors':>10} {'file':>10} {'tensors/acc':>11} {'file/acc':>9} "
            f"{'scale+':>7} {'dense fp32':>11} {'max|dlogits|':>12} {'pack s':>6} {'load s':>6}")
    lines = [f"packed size vs storage accounting, compressed encoder linears of {model_name!r} (bytes)", head,
             "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['plan']:<52} {r['accounted_bytes']:>10,.0f} {r['tensor_bytes']:>10,} {r['file_bytes']:>10,} "
            f"{r['tensor_ratio']:>11.4f} {r['file_ratio']:>9.4f} {r['scale_overhead_bytes']:>7,.0f} "
            f"{r['dense_fp32_bytes']:>11,} {r['max_abs_logit_diff']:>12.1e} {r['pack_s']:>6.2f} {r['load_s']:>6.2f}"
        )
    worst = max(r["file_ratio"] for r in rows)
    worst_diff = max(r["max_abs_logit_diff"] for r in rows)
    verdict = "PASS" if worst <= TARGET and worst_diff <= 1e-4 else "MISS"
    lines.append(f"{verdict}: file/accounted at most {worst:.4f} (target <= {TARGET}); "
                 f"max |logits difference| {worst_diff:.1e} (target <= 1e-4)")
    return "\n".join(lines)


def main(argv=None) -> None:
    from nxmiformer.compression import CompressionPlan

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = load_quiet(args.model)
    g = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(0, base.config.vocab_size, (8, 64), generator=g)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    plans = [(spec, lambda m, spec=spec: CompressionPlan.uniform(m, spec)) for spec in UNIFORM]
    plans.append((HETEROGENEOUS, heterogeneous_plan))
    rows = [measure(name, base, make_plan, batch) for name, make_plan in plans]
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(table(rows, args.model))


if __name__ == "__main__":
    main()
