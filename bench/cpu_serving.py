"""CPU serving, side by side: nxmiformer's ONNX files against ONNX Runtime's own quantizers.

For each task (``--tasks``: ``sst2`` from GLUE, ``tweet`` the TweetEval sentiment CSVs beside the
repository), from one dense warm start of the MiniLM default (``nxmi finetune``: SST-2 on 2,000
training rows, TweetEval on all 6,000):

* ``dense fp32``: ``nxmi onnx --fp32`` of the warm start (the baseline of speed and size);
* ``ORT quantize_dynamic``: ONNX Runtime's one-line int8 quantizer on that file (weights and
  embeddings int8, what a user would do instead of nxmiformer);
* ``ORT MatMulNBits 4-bit``: ``MatMulNBitsQuantizer`` (4-bit weights, block 32, symmetric) on it;
* the same three for a dense model trained ``--dense-steps`` (600) on the same rows: the
  equal-budget reference for the trained plans (which train 600 steps from the warm start);
* ``nxmi <plan> one-shot``: ``nxmi compress`` of the warm start, then ``nxmi onnx``;
* ``nxmi <plan> trained``: ``nxmi train --steps 600`` on the same training rows, then ``nxmi onnx``;

each nxmiformer model with every ``--embeddings`` storage, and the trained 8-bit plans once more
with ``--u8-weights`` (the exact uint8 form for CPUs without VNNI). Columns: ``model.onnx`` size (and the
size the plan's ``storage`` accounting predicts, with the non-encoder weights at their exported
width), latency at each batch size (the first validation texts padded to ``--length`` tokens;
``--rounds`` rounds over every file, each a block of ``--block`` timed calls after one untimed;
median of all calls), accuracy on the whole validation split with its binomial standard error,
and for nxmiformer files the PyTorch hardened model's accuracy and the paired difference (with
its SE over the validation rows) from both ONNX Runtime quantizers.

Trained and one-shot model directories are kept under ``--work`` and reused by later runs.
The timings need the cores to themselves: run nothing else meanwhile. CPU: about 100 minutes
with the six trainings, 10 without.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, add_data_dir

TWEET = ROOT.parent / "shared" / "data" / "custom" / "tweet_sentiment"


def nxmi(*args) -> None:
    """Run one ``nxmi`` command of this checkout, echoed; stop the bench if it fails."""
    command = [sys.executable, "-m", "nxmiformer", *map(str, args)]
    print("$ nxmi " + " ".join(map(str, args)), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def data_flags(task: str, glue: str) -> list[str]:
    if task == "sst2":
        return ["--task", "sst2", "--data-dir", glue, "--train-size", "2000"]
    return ["--train-file", TWEET / "train.csv", "--validation-file", TWEET / "validation.csv"]


def ort_baselines(dense_onnx: Path, work: Path, suffix: str = "") -> dict[str, Path]:
    """ONNX Runtime's own quantizers applied to the dense fp32 export, as a user would."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    out = {f"ORT quantize_dynamic{suffix}": work / f"ort-dynamic{suffix.replace(' ', '-').replace(',', '')}",
           f"ORT MatMulNBits 4-bit{suffix}": work / f"ort-nbits4{suffix.replace(' ', '-').replace(',', '')}"}
    for directory in out.values():
        if not (directory / "model.onnx").is_file():
            shutil.copytree(dense_onnx, directory, dirs_exist_ok=True)
    dynamic, nbits = out.values()
    if not (dynamic / "done").is_file():
        quantize_dynamic(dense_onnx / "model.onnx", dynamic / "model.onnx", weight_type=QuantType.QInt8)
        (dynamic / "done").touch()
    if not (nbits / "done").is_file():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(dense_onnx / "model.onnx")), bits=4, block_size=32,
                                         is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(nbits / "model.onnx"))
        (nbits / "done").touch()
    return out


def row_correct(model_dir: Path, compute) -> "np.ndarray":
    """Per validation row, 1 where the model's prediction is right: ``compute()``, kept in the
    model's directory (bench-correct.npy) so that a later run (the timed one) does not evaluate again."""
    import numpy as np

    cached = model_dir / "bench-correct.npy"
    if not cached.is_file():
        np.save(cached, compute())
    return np.load(cached)


def paired(a, b) -> tuple[float, float]:
    """Mean and standard error of the per-row difference of two 0/1 vectors."""
    import numpy as np

    d = np.asarray(a, float) - np.asarray(b, float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(parser)
    parser.add_argument("--tasks", default="sst2,tweet", help="comma-separated: sst2, tweet")
    parser.add_argument("--plans", default="dense:int8,2:4:int8,2:4:int4,2:4:int2",
                        help="uniform plans (75%%: quantize_dynamic's storage; 87.5%%, 93.75%%, 96.875%% paper)")
    parser.add_argument("--embeddings", default="int8,int4,fp32", help="embedding storages of the nxmiformer files")
    parser.add_argument("--steps", type=int, default=600, help="training steps of the trained plans (0: one-shot only)")
    parser.add_argument("--dense-steps", type=int, default=600, help="also a dense model trained this many steps on "
                        "the same rows, and ONNX Runtime's quantizers of it: the equal-budget reference (0: none)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "cpu-serving"), help="kept model directories")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes timed")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="rounds over every file (0: no timing, e.g. to "
                        "export and evaluate beside another job, then time alone)")
    parser.add_argument("--block", type=int, default=5, help="timed calls in a row per file and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write every figure to this JSON file")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    from nxmiformer.api import task as make_task
    from nxmiformer.export import OnnxClassifier, export_onnx_dir
    from nxmiformer.models import load_model, load_tokenizer
    from nxmiformer.trials import prepare_task_data
    from nxmiformer.trials.loop import predict

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    plans = args.plans.split(",")
    modes = args.embeddings.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    record: dict = {"args": vars(args), "cpu": cpu, "tasks": {}}
    for task in args.tasks.split(","):
        work = Path(args.work) / task
        flags = data_flags(task, args.data_dir)
        dense = work / "dense"
        if not dense.is_dir():
            nxmi("finetune", *flags, "--out", dense)
        sources: dict[str, Path] = {}
        for plan in plans:
            label = plan.replace(":", "-")
            sources[f"{plan} one-shot"] = work / f"oneshot-{label}"
            if not sources[f"{plan} one-shot"].is_dir():
                nxmi("compress", "--model", dense, "--plan", plan, "--out", sources[f"{plan} one-shot"])
            if args.steps:
                sources[f"{plan} trained"] = work / f"trained-{label}"
                if not sources[f"{plan} trained"].is_dir():
                    nxmi("train", "--plan", plan, "--dense", dense, *flags, "--steps", args.steps,
                         "--out", sources[f"{plan} trained"])

        exports = work / "onnx"
        files: dict[str, Path] = {"dense fp32": exports / "dense-fp32"}
        reports: dict[str, dict] = {}
        if not files["dense fp32"].is_dir():
            export_onnx_dir(dense, files["dense fp32"], int8=False)
        files |= ort_baselines(files["dense fp32"], exports)
        equal = f", {args.dense_steps} steps"
        if args.dense_steps:  # the equal-budget reference: the dense model trained as long as the plans
            trained_dense = work / f"dense-{args.dense_steps}"
            if not trained_dense.is_dir():
                nxmi("finetune", *flags, "--steps", args.dense_steps, "--out", trained_dense)
            files[f"dense fp32{equal}"] = exports / f"dense-{args.dense_steps}-fp32"
            if not files[f"dense fp32{equal}"].is_dir():
                export_onnx_dir(trained_dense, files[f"dense fp32{equal}"], int8=False)
            files |= ort_baselines(files[f"dense fp32{equal}"], exports, equal)
        for name, source in sources.items():
            u8 = "int8" in name and (name.endswith("trained") or not args.steps)
            for mode, u8_weights in [(mode, False) for mode in modes] + ([(modes[0], True)] if u8 else []):
                key = f"nxmi {name}, {mode} emb.{', --u8-weights' if u8_weights else ''}"
                files[key] = exports / f"{source.name}-{mode}{'-u8' if u8_weights else ''}"
                if not files[key].is_dir():
                    export_onnx_dir(source, files[key], embeddings=mode, u8_weights=u8_weights)
                reports[key] = json.loads((files[key] / "onnx.json").read_text())

        info = make_task("sst2") if task == "sst2" else make_task(
            train_file=TWEET / "train.csv", validation_file=TWEET / "validation.csv")
        tokenizer = load_tokenizer(str(dense))
        prepared = prepare_task_data(info, tokenizer, data_dir=args.data_dir, include_train=False)
        validation = next(iter(prepared.eval.values()))
        def right(model) -> np.ndarray:
            logits, labels = predict(model, validation, tokenizer)
            return (logits.argmax(-1) == labels).astype(float)

        sessions = {name: OnnxClassifier(path, threads=args.threads) for name, path in files.items()}
        correct = {name: row_correct(files[name], lambda: right(model)) for name, model in sessions.items()}
        torch_correct = {name: row_correct(source, lambda: right(load_model(str(source)).eval()))
                         for name, source in sources.items()}

        ids = validation["input_ids"]  # the first rows' own tokens, cut or padded to --length
        latency: dict[int, dict[str, float]] = {}
        with torch.inference_mode():
            for size in batches:
                rows = [list(ids[i])[:args.length] for i in range(size)]
                feed = {"input_ids": torch.zeros(size, args.length, dtype=torch.long)}
                feed["attention_mask"] = torch.zeros_like(feed["input_ids"])
                for i, row in enumerate(rows):
                    feed["input_ids"][i, :len(row)] = torch.tensor(row)
                    feed["attention_mask"][i, :len(row)] = 1
                feed["token_type_ids"] = torch.zeros_like(feed["input_ids"])
                times = {name: [] for name in sessions}
                for _ in range(args.rounds):  # blocks: a server runs one model call after call
                    for name, model in sessions.items():
                        model(**feed)  # untimed warm-up of the block
                        for _ in range(args.block):
                            start = time.perf_counter()
                            model(**feed)
                            times[name].append(time.perf_counter() - start)
                latency[size] = {name: statistics.median(t) if t else float("nan") for name, t in times.items()}

        rows = {}
        dense_bytes = (files["dense fp32"] / "model.onnx").stat().st_size
        for name, path in files.items():
            size = (path / "model.onnx").stat().st_size
            accuracy = float(correct[name].mean())
            row = {"file_mb": size / 1e6, "file_vs_dense": size / dense_bytes, "accuracy": accuracy,
                   "accuracy_se": float(np.sqrt(accuracy * (1 - accuracy) / len(correct[name]))),
                   **{f"b{b}_ms": latency[b][name] * 1e3 for b in batches},
                   **{f"b{b}_vs_dynamic": latency[b]["ORT quantize_dynamic"] / latency[b][name] for b in batches}}
            if name in reports:
                source = name.removeprefix("nxmi ").split(",")[0]
                row["predicted_mb"] = reports[name]["size"]["predicted_bytes"] / 1e6
                row["pytorch_accuracy"] = float(torch_correct[source].mean())
                diff, se = paired(correct[name], torch_correct[source])
                row["minus PyTorch"] = {"points": diff * 100, "se": se * 100}
                for baseline in ("ORT quantize_dynamic", "ORT MatMulNBits 4-bit"):
                    for key in (baseline, f"{baseline}{equal}"):
                        if key in correct:
                            diff, se = paired(correct[name], correct[key])
                            row[f"minus {key}"] = {"points": diff * 100, "se": se * 100}
            rows[name] = row
        # the embeddings' cost: each storage against fp32 tables, row by row, averaged over the plans
        embedding_cost = {}
        if "fp32" in modes:
            for mode in modes:
                if mode != "fp32":
                    pairs = [(correct[f"nxmi {name}, {mode} emb."], correct[f"nxmi {name}, fp32 emb."])
                             for name in sources]
                    diff, se = paired(np.mean([a for a, _ in pairs], axis=0), np.mean([b for _, b in pairs], axis=0))
                    embedding_cost[mode] = {"points": diff * 100, "se": se * 100, "plans": len(pairs)}
        record["tasks"][task] = {"rows": rows, "n_validation": len(validation), "embedding_cost": embedding_cost}

        print(f"\n{task}: MiniLM default on {cpu}, {len(validation)} validation rows, {args.length} tokens, {args.threads} "
              f"threads, {args.rounds} rounds x {args.block} calls (median); x = quantize_dynamic's latency / the file's")
        lat = "".join(f" b{b} ms | b{b} x |" for b in batches)
        print(f"| model | MB | of dense | predicted MB |{lat} accuracy (SE) | minus PyTorch (SE) | minus dynamic (SE) | "
              f"minus 4-bit (SE) |")
        print("|---|---|---|---|" + "---|---|" * len(batches) + "---|---|---|---|")
        for name, row in rows.items():
            cells = "".join(f" {row[f'b{b}_ms']:.1f} | {row[f'b{b}_vs_dynamic']:.2f} |" for b in batches)
            predicted = f"{row['predicted_mb']:.2f}" if "predicted_mb" in row else ""
            versus = " | ".join(f"{row[k]['points']:+.2f} ({row[k]['se']:.2f})" if k in row else ""
                                for k in ("minus PyTorch", "minus ORT quantize_dynamic", "minus ORT MatMulNBits 4-bit"))
            print(f"| {name} | {row['file_mb']:.2f} | {row['file_vs_dense']:.1%} | {predicted} |{cells} "
                  f"{row['accuracy']:.4f} ({row['accuracy_se']:.4f}) | {versus} |", flush=True)
        print("\ntrained plans minus ONNX Runtime's quantizers, points (paired SE) [difference / SE]; 'equal budget': "
              f"of the dense model trained{equal} on the same rows")
        for name, row in rows.items():
            if name.startswith("nxmi") and "trained" in name:
                cells = []
                for key in ("ORT quantize_dynamic", "ORT MatMulNBits 4-bit", f"ORT quantize_dynamic{equal}",
                            f"ORT MatMulNBits 4-bit{equal}"):
                    if f"minus {key}" in row:
                        diff = row[f"minus {key}"]
                        smaller = "" if row["file_mb"] <= rows[key]["file_mb"] else ", larger file"
                        cells.append(f"{key}: {diff['points']:+.2f} ({diff['se']:.2f}) "
                                     f"[{diff['points'] / diff['se']:+.1f}{smaller}]")
                print(f"  {name} ({row['file_mb']:.2f} MB): " + "; ".join(cells))
        for mode, cost in embedding_cost.items():
            print(f"{mode} embeddings minus fp32 tables, mean over {cost['plans']} plans, row by row: "
                  f"{cost['points']:+.2f} points (SE {cost['se']:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
