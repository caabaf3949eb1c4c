"""CPU serving of a hardened model: PyTorch fp32 against the ONNX Runtime int8 export (``nxmi onnx``).

Models (all from the same SST-2 dense warm start of the MiniLM default, or from ``--model``, a
hardened directory of ``nxmi train`` / ``nxmi compress --out`` or a packed one of ``nxmi pack``):

* ``fp32 dense (PyTorch)``: the warm start as it is: the baseline of every ratio;
* ``fp32 hardened (PyTorch)``: the plan applied and hardened (N:M zeros and the integer grid, in fp32);
* ``fp32 hardened (ORT)``: the same model exported fp32 with ONNX Runtime's BERT fusions
  (``nxmi onnx --fp32 --fuse``): what the runtime alone brings;
* ``int8 (ORT)``: ``nxmi onnx``'s default: the hardened int8 codes and per-row scales in standard
  ONNX operators (``DynamicQuantizeLinear`` + ``MatMulInteger``, activations quantized per tensor
  on the fly), which ONNX Runtime fuses into its int8 kernels itself;
* ``int8 (ORT, --fuse)``: ``nxmi onnx --fuse``: ONNX Runtime's BERT fusions first, the same codes
  and scales on ``QAttention`` / ``DynamicQuantizeMatMul``.

Latency: the first validation sentences padded to ``--length`` tokens, at each batch size:
``--rounds`` rounds over every model, each a block of ``--block`` timed calls after one untimed
(a server calls one model call after call; the blocks let the other runtime's spinning threads
settle), median of all calls, as a speed-up over fp32 dense (dense latency / model latency). Accuracy: every model on the full SST-2 validation split (872 rows).
The timings need the cores to themselves: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import add_data_dir  # noqa: E402  (also puts the repository on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--model", help="a hardened or packed model directory (default: one-shot --plan of the warm start)")
    parser.add_argument("--plan", default="2:4:int8", help="uniform plan for the default one-shot model")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes timed")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="rounds over every model")
    parser.add_argument("--block", type=int, default=5, help="timed calls in a row per model and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from nxmiformer.compression import CompressionPlan, LayerSpec, compress_, harden_
    from nxmiformer.export.onnx import OnnxClassifier, export_onnx, load_for_export
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
        hardened = load_for_export(args.model)
        plan_file = Path(args.model) / "plan.json"
        source = f"{args.model} ({CompressionPlan.load(plan_file).summary() if plan_file.is_file() else 'dense'})"
    else:
        hardened = copy.deepcopy(dense)
        compress_(hardened, CompressionPlan.uniform(hardened, LayerSpec.parse(args.plan)))
        harden_(hardened)
        source = f"one-shot {args.plan} of the warm start"
    hardened.eval()

    tmp = Path(tempfile.mkdtemp(prefix="cpu-serving-"))
    exports = {"fp32 hardened (ORT)": export_onnx(hardened, tmp / "fp32.onnx", int8=False, fuse=True),
               "int8 (ORT)": export_onnx(hardened, tmp / "int8.onnx"),
               "int8 (ORT, --fuse)": export_onnx(hardened, tmp / "int8-fused.onnx", fuse=True)}
    for name, report in exports.items():
        print(f"{name}: {report.summary()}")
    models = {"fp32 dense (PyTorch)": dense, "fp32 hardened (PyTorch)": hardened}
    models |= {name: OnnxClassifier(report.path, threads=args.threads) for name, report in exports.items()}

    tokenizer = load_tokenizer(str(dense_result.path))
    glue = prepare_task_data("sst2", tokenizer, data_dir=args.data_dir, max_length=args.length, include_train=False)
    sentences = load_glue("sst2", data_dir=args.data_dir, splits=["validation"])["validation"]["sentence"]
    batches = [int(b) for b in args.batches.split(",")]
    latency: dict[int, dict[str, float]] = {}
    for size in batches:
        inputs = dict(tokenizer(sentences[:size], padding="max_length", truncation=True, max_length=args.length,
                                return_tensors="pt"))
        times = {name: [] for name in models}
        with torch.inference_mode():
            for _ in range(args.rounds):  # blocks: a server runs one model call after call; the
                for name, model in models.items():  # other runtime's spinning threads settle meanwhile
                    model(**inputs)  # untimed warm-up of the block
                    for _ in range(args.block):
                        start = time.perf_counter()
                        model(**inputs)
                        times[name].append(time.perf_counter() - start)
        latency[size] = {name: statistics.median(t) for name, t in times.items()}

    print(f"\nSST-2, MiniLM default, {source}; {len(exports['int8 (ORT)'].int8_modules)} modules on int8 "
          f"kernels; {args.length} tokens, {args.threads} threads, {args.rounds} rounds x {args.block} calls (median)")
    header = "".join(f" {f'b{b} ms':>8} {f'b{b} x':>6}" for b in batches)
    print(f"| {'model':<24} |{header} | accuracy |")
    base_name = "fp32 dense (PyTorch)"
    for name, model in models.items():
        accuracy = evaluate(model, glue, tokenizer)["primary"]
        cells = "".join(f" {latency[b][name] * 1e3:>8.1f} {latency[b][base_name] / latency[b][name]:>6.2f}"
                        for b in batches)
        print(f"| {name:<24} |{cells} | {accuracy:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
