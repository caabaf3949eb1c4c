"""The ``nxmi`` command. Thin: parses arguments and calls the library.

Every user error becomes one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from .errors import NxmiError
from .outputs import atomic_output_dir, require_free_output


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# helpers


def _quiet_transformers():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def parse_plan_arg(value: str, model):
    """``--plan``: a plan JSON file, or a spec string for a uniform plan."""
    from .compression import CompressionPlan, LayerSpec

    if value.endswith(".json") or Path(value).is_file():
        plan = CompressionPlan.load(value)
    else:
        plan = CompressionPlan.uniform(model, LayerSpec.parse(value))
    return plan.validate(model)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_compress(args) -> int:
    _quiet_transformers()
    from .compression import compress_, compression_ratio, harden_, ratio_table, to_dense_
    from .models import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    model = load_model(path)
    plan = parse_plan_arg(args.plan, model)
    table = ratio_table(model, plan)
    ratios = {c: compression_ratio(model, plan, c) for c in ("paper", "storage")}

    compress_(model, plan)
    harden_(model)
    show = table[["layer", "component", "shape", "spec", "sparsity", "bits"]].copy()
    show["sparsity"] = show["sparsity"].map(lambda s: f"{s:.0%}")
    print(show.to_string(index=False))
    print(f"\nmodules: {len(table)}  plan: {plan.summary()}")
    print(f"encoder compression ratio  paper: {ratios['paper']:.4%}  storage: {ratios['storage']:.4%}")

    if args.out:
        with atomic_output_dir(args.out) as tmp:
            to_dense_(model)
            model.save_pretrained(tmp)
            try:
                load_tokenizer(path).save_pretrained(tmp)
            except (OSError, ValueError):
                pass  # a model directory without a tokenizer is still a model
            plan.meta.setdefault("source_model", args.model)
            plan.meta.setdefault("ratio_paper", ratios["paper"])
            plan.meta.setdefault("ratio_storage", ratios["storage"])
            plan.save(tmp / "plan.json")
        print(f"saved hardened model and plan.json to {args.out}")
    return 0


def _data_config(args):
    from .trials import DataConfig

    return DataConfig(task=args.task, data_dir=args.data_dir, max_length=args.max_length,
                      train_size=args.train_size, eval_size=args.eval_size, seed=args.seed)


def _steps_from(args, data, batch_size: int) -> int:
    """--steps wins; else --epochs over the training rows."""
    if args.steps is not None:
        return args.steps
    import math

    from .trials.data import load_glue

    rows = args.train_size
    if rows is None:
        rows = len(load_glue(data.task, data_dir=data.data_dir, splits=["train"])["train"])
    return max(1, math.ceil(args.epochs * rows / batch_size))


def _print_metrics(title: str, metrics: dict) -> None:
    shown = "  ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"{title}  {shown}")


def cmd_finetune(args) -> int:
    _quiet_transformers()
    from .trials import DenseConfig, finetune_dense

    data = _data_config(args)
    out = require_free_output(args.out)
    dense = DenseConfig(model=args.model, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    result = finetune_dense(data, dense, args.cache_dir, progress=True)
    with atomic_output_dir(out) as tmp:
        shutil.copytree(result.path, tmp, dirs_exist_ok=True)
    _print_metrics(f"dense {args.task} ({'cached' if result.cached else f'{result.wall_time:.0f}s'}):", result.metrics)
    print(f"saved to {out}")
    return 0


def cmd_train(args) -> int:
    _quiet_transformers()
    import json
    import time

    from .compression import to_dense_
    from .models import load_model
    from .trials import DenseConfig, DenseResult, TrialConfig, finetune_dense, get_task, run_trial

    start = time.perf_counter()
    data = _data_config(args)
    out = require_free_output(args.out)
    dense_cfg = DenseConfig(model=args.model, epochs=args.dense_epochs)
    # validate the plan against the architecture before any training
    probe = load_model(args.dense or args.model, num_labels=get_task(args.task).num_labels, ignore_mismatched_sizes=True)
    plan = parse_plan_arg(args.plan, probe)
    del probe
    steps = _steps_from(args, data, args.batch_size)
    config = TrialConfig(data=data, dense=dense_cfg, steps=steps, batch_size=args.batch_size, lr=args.lr,
                         admm_fraction=args.admm_fraction, admm_mode=args.admm_mode, kd_alpha=args.kd_alpha,
                         eval_every=args.eval_every, cache_dir=args.cache_dir, threads=args.threads)
    dense = DenseResult.load(args.dense) if args.dense else finetune_dense(data, dense_cfg, args.cache_dir, progress=True)
    _print_metrics("dense baseline:", dense.metrics)
    result = run_trial(plan, config, dense=dense, progress=True, keep_model=True,
                       report=lambda row, _: print(f"step {row['step']:>6} {row['phase']:<9} primary {row['primary']:.4f} "
                                                   f"retention {row['retention']:.2%}", flush=True))
    summary = {
        "task": args.task, "plan": plan.summary(), "steps": result.steps,
        "dense": dense.metrics, "compressed": result.metrics, "retention": result.retention,
        "ratio_paper": result.ratio_paper, "ratio_storage": result.ratio_storage,
        "admm_residual": result.admm_residual, "admm_at_projection": result.admm_at_projection,
        "wall_time": time.perf_counter() - start, "trial_config": config.to_dict(), "history": result.history,
    }
    with atomic_output_dir(out) as tmp:
        model = to_dense_(result.model)
        model.save_pretrained(tmp)
        from .models import load_tokenizer

        load_tokenizer(str(dense.path)).save_pretrained(tmp)
        plan.save(tmp / "plan.json")
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _print_metrics("compressed:", result.metrics)
    print(f"retention {result.retention:.2%}  ratio paper {result.ratio_paper:.4%}  storage {result.ratio_storage:.4%}")
    print(f"saved hardened model, plan.json and metrics.json to {out}")
    return 0


def cmd_evaluate(args) -> int:
    _quiet_transformers()
    import json

    from .models import load_model, load_tokenizer
    from .trials import evaluate, get_task, prepare_task_data

    info = get_task(args.task)
    model = load_model(args.model)
    if getattr(model.config, "num_labels", None) != info.num_labels:
        raise NxmiError(f"model {args.model} has {model.config.num_labels} labels; task {args.task} needs {info.num_labels}")
    tokenizer = load_tokenizer(args.model)
    data = prepare_task_data(info, tokenizer, data_dir=args.data_dir, max_length=args.max_length,
                             eval_size=args.eval_size, seed=args.seed, include_train=False)
    metrics = evaluate(model, data, tokenizer, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"task": args.task, "model": args.model, **metrics}))
    else:
        _print_metrics(f"{args.task}:", metrics)
    return 0


def cmd_profile(args) -> int:
    _quiet_transformers()
    from .search.profile import profile_sensitivity, sensitivity_pivot
    from .trials import DataConfig, DenseConfig, finetune_dense

    data = DataConfig(task=args.task, data_dir=args.data_dir, max_length=args.max_length, train_size=args.train_size,
                      eval_size=args.eval_size, seed=args.seed, holdout_size=args.calib_size)
    if args.dense:
        from .trials import DenseResult

        model_dir = DenseResult.load(args.dense).path
    else:
        model_dir = finetune_dense(data, DenseConfig(model=args.model, epochs=args.dense_epochs), args.cache_dir, progress=True).path
    workers = 0
    if args.workers > 1:
        import ray

        ray.init(address=args.address or "local", num_cpus=None if args.address else args.workers,
                 include_dashboard=False, log_to_driver=False)
        workers = args.workers
    result = profile_sensitivity(model_dir, data, args.options, args.calib_size, cache_dir=args.cache_dir,
                                 workers=workers, progress=True)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:+.4f}".format):
        print(sensitivity_pivot(result.table).to_string())
    print(f"\n{result.computed} computed, {result.cached} from cache, {result.wall_time:.1f}s; cache: {result.path}")
    return 0


def cmd_search(args) -> int:
    _quiet_transformers()
    from .search.runner import SearchConfig, run_search

    fields = dict(out=args.out, task=args.task, target_ratio=args.target_ratio, convention=args.convention,
                  model=args.model, data_dir=args.data_dir, max_length=args.max_length, train_size=args.train_size,
                  eval_size=args.eval_size, seed=args.seed, trials=args.trials, steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, concurrency=args.concurrency,
                  cpus_per_trial=args.cpus_per_trial, calib_size=args.calib_size, dense_epochs=args.dense_epochs,
                  asha=not args.no_asha, cache_dir=args.cache_dir, address=args.address,
                  refine_trials=args.refine_trials, refine_layer_groups=args.refine_layer_groups,
                  refine_fill=args.refine_fill, kinds=args.kinds)
    if args.options:
        fields["options"] = args.options
    if args.preset == "quick":
        given = {token.split("=")[0] for token in args.argv if token.startswith("--")}
        for key, value in QUICK_PRESET.items():
            if f"--{key.replace('_', '-')}" not in given:  # flags given explicitly win over the preset
                fields[key] = value
    config = SearchConfig(**{k: v for k, v in fields.items() if v is not None})
    result = run_search(config, resume=args.resume, progress=True)
    table = result.results
    import pandas as pd

    show = table[["trial_id", "status", "kind", "ratio_paper", "ratio_storage", "primary", "retention", "plan_summary"]]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print("\n" + show.sort_values("primary", ascending=False).to_string(index=False))
    print(f"\nresults: {result.out / 'results.parquet'}  ({len(table)} trials, {result.wall_time:.0f}s)")
    if result.best is None:
        print(f"no completed trial meets the target ratio {config.target_ratio} ({config.convention})")
        return 1
    b = result.best
    print(f"best plan meeting {config.target_ratio:.2%} ({config.convention}): trial {b['trial_id']} [{b['kind']}] "
          f"{config.task} primary {b['primary']:.4f} = {b['retention']:.2%} of dense; "
          f"ratio paper {b['ratio_paper']:.4%}, storage {b['ratio_storage']:.4%}")
    print(f"plan: {b['plan_summary']}")
    return 0


def cmd_pareto(args) -> int:
    from .analysis import check_target_ratio, format_trials, load_results, pareto_front, plot_pareto, plot_plan, select

    for flag, value in (("--plot", args.plot), ("--heatmap", args.heatmap)):
        if value and Path(value).suffix.lower() != ".png":
            raise NxmiError(f"{flag} must name a .png file, got {value!r}")
    if args.target_ratio is not None:
        check_target_ratio(args.target_ratio)
    results = load_results(args.results)
    front = pareto_front(results, args.convention, args.metric, args.include_stopped)
    counts = ", ".join(f"{n} {status}" for status, n in results["status"].value_counts().items())
    print(f"{len(results)} trials from {results['search'].nunique()} search(es): {counts}")
    print(f"Pareto front ({args.convention} ratio vs {args.metric}; "
          f"{'completed and stopped' if args.include_stopped else 'completed'} trials): {len(front)} plan(s)")
    if len(front):
        print(format_trials(front))
    chosen = None
    if args.target_ratio is not None:
        chosen = select(results, args.target_ratio, args.convention, args.metric, args.include_stopped)
        print(f"\nselected for >= {args.target_ratio:.2%} ({args.convention}): trial {chosen['trial_id']} "
              f"[{chosen['kind']}] primary {chosen['primary']:.4f} = {chosen['retention']:.2%} of dense; "
              f"ratio paper {chosen['ratio_paper']:.4%}, storage {chosen['ratio_storage']:.4%}")
        print(f"plan: {chosen['plan_summary']}")
    heat = chosen if chosen is not None else (front.iloc[0] if len(front) else None)
    if args.heatmap and heat is None:
        raise NxmiError("no completed trial with finite metrics, so no plan to draw for --heatmap")
    if args.plot:
        plot_pareto(results, args.target_ratio, args.convention, args.metric, args.include_stopped, path=args.plot)
        print(f"wrote {args.plot}")
    if args.heatmap:
        plot_plan(heat, path=args.heatmap, title=f"trial {heat['trial_id']} [{heat['kind']}]: {heat['plan_summary']}")
        print(f"wrote {args.heatmap} (plan of trial {heat['trial_id']})")
    return 0


def cmd_export(args) -> int:
    from .analysis import export_plan, load_results

    results = load_results(args.results)
    plan = export_plan(results, args.target_ratio, args.convention, args.out, metric=args.metric,
                       include_stopped=args.include_stopped)
    trial = plan.meta["trial"]
    print(f"exported trial {trial['trial_id']} [{trial['kind']}] to {args.out}: {plan.summary()}")
    print(f"ratio paper {plan.meta['ratio_paper']:.4%}, storage {plan.meta['ratio_storage']:.4%}; "
          f"short-trial primary {trial['primary']:.4f}")
    print(f"train it fully with:\n  {plan.meta['train_command']}")
    return 0


SEARCH_DEFAULTS = {"trials": 8, "steps": 200, "train_size": 4000, "eval_size": 500, "calib_size": 256}
# about 10 minutes on 2 CPU cores with the MiniLM default (dense warm start included)
QUICK_PRESET = {"trials": 3, "refine_trials": 2, "steps": 60, "train_size": 2000, "eval_size": 300, "calib_size": 128, "max_length": 64,
                "dense_epochs": 1.0}


# ---------------------------------------------------------------------------------------------
# parser


def _add_data_args(p, train: bool = True) -> None:
    p.add_argument("--task", required=True, help="GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli")
    p.add_argument("--data-dir", help="directory of <task>/<split>.parquet (default: $NXMI_GLUE_DIR, else the hub)")
    p.add_argument("--max-length", type=int, default=128, help="truncation length in tokens")
    p.add_argument("--train-size", type=int, help="training rows to draw (default: all)")
    p.add_argument("--eval-size", type=int, help="rows of each validation split (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _add_training_args(p, lr: float) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, help="optimizer steps")
    group.add_argument("--epochs", type=float, default=1.0, help="epochs over the training rows (default 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--cache-dir", help="where dense warm starts are cached (default: $NXMI_CACHE_DIR or ~/.cache/nxmiformer)")


def cmd_pack(args) -> int:
    _quiet_transformers()
    from .compression import pack_dir

    report = pack_dir(args.model, args.out)
    print(report.summary())
    print(f"saved packed model to {args.out}")
    return 0


def cmd_unpack(args) -> int:
    _quiet_transformers()
    from .compression import unpack_dir

    out = unpack_dir(args.model, args.out)
    print(f"saved the unpacked (hardened, fp32) model and plan.json to {out}")
    return 0


def _add_selection_args(p) -> None:
    p.add_argument("--convention", default="paper", help="ratio convention: paper or storage")
    p.add_argument("--metric", default="primary", help="accuracy axis: primary (the task metric) or retention")
    p.add_argument("--include-stopped", action="store_true",
                   help="let trials stopped early by ASHA (intermediate metrics) on the front and into the selection")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nxmi", description="N:M sparsity + integer quantization for Transformer encoders.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("compress", help="apply a plan one-shot (no training) and report the compression")
    p.add_argument("--model", default="default", help="'default' (embedded MiniLM), a directory, or a hub name")
    p.add_argument("--plan", required=True, help="a spec such as 2:4:int8 (uniform plan) or a plan.json file")
    p.add_argument("--out", help="save the hardened model (save_pretrained) and plan.json here")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("finetune", help="dense task fine-tune (the warm start of every trial), cached")
    p.add_argument("--model", default="default", help="'default' (embedded MiniLM), a directory, or a hub name")
    _add_data_args(p)
    _add_training_args(p, lr=1e-4)
    p.add_argument("--out", required=True, help="save the fine-tuned model here")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train", help="full ADMM+QAT training of a plan from the dense warm start")
    p.add_argument("--plan", required=True, help="a plan.json (e.g. from nxmi export) or a spec such as 2:4:int8")
    p.add_argument("--model", default="default", help="base model of the dense warm start")
    p.add_argument("--dense", help="an existing warm start directory (from nxmi finetune) instead of computing one")
    p.add_argument("--dense-epochs", type=float, default=1.0, help="epochs of the dense warm start")
    _add_data_args(p)
    _add_training_args(p, lr=1e-4)
    p.add_argument("--admm-fraction", type=float, default=0.5, help="share of the steps spent in the ADMM phase")
    p.add_argument("--admm-mode", choices=("penalty", "decoupled"), default="penalty",
                   help="penalty: in the loss (default, measured best); decoupled: proximal step that reaches the set")
    p.add_argument("--kd-alpha", type=float, default=0.0, help="weight of distillation from the dense model (0: off)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: phase ends only)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--out", required=True, help="save the hardened model, plan.json and metrics.json here")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="per-module sensitivity of every option (cached in Parquet)")
    p.add_argument("--model", default="default", help="base model of the dense warm start")
    p.add_argument("--dense", help="an existing warm start directory (from nxmi finetune)")
    p.add_argument("--dense-epochs", type=float, default=1.0)
    _add_data_args(p)
    p.add_argument("--options", help="comma-separated option menu (default: the 11-option menu)")
    p.add_argument("--calib-size", type=int, default=256, help="calibration rows held out of the training split")
    p.add_argument("--workers", type=int, default=1, help="Ray tasks in parallel (1: in-process)")
    p.add_argument("--address", help="Ray cluster address (default: embedded)")
    p.add_argument("--cache-dir", help="cache of warm starts and profiles")
    p.set_defaults(func=cmd_profile, max_length=64)

    p = sub.add_parser("search", help="search heterogeneous per-layer plans under a compression-ratio constraint")
    p.add_argument("--target-ratio", type=float, required=True, help="minimum encoder compression ratio, in (0, 1)")
    p.add_argument("--convention", default="paper", help="ratio convention: paper or storage")
    p.add_argument("--model", default="default", help="'default' (embedded MiniLM), a directory, or a hub name")
    _add_data_args(p)
    p.add_argument("--trials", type=int, default=SEARCH_DEFAULTS["trials"], help="candidate plans to train")
    p.add_argument("--steps", type=int, default=SEARCH_DEFAULTS["steps"], help="steps per short trial")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--concurrency", type=int, help="concurrent trials (default: CPUs / --cpus-per-trial)")
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--options", help="comma-separated option menu")
    p.add_argument("--calib-size", type=int, default=SEARCH_DEFAULTS["calib_size"])
    p.add_argument("--dense-epochs", type=float, default=1.0)
    p.add_argument("--no-asha", action="store_true", help="run every trial to the end (no early stopping)")
    p.add_argument("--kinds", help="candidate kinds to train, comma-separated: optimal,diverse,grid,uniform (default: all)")
    p.add_argument("--refine-trials", type=int, default=0,
                   help="stage 2: this many Optuna-sampled per-group plans, seeded with the candidates' results")
    p.add_argument("--refine-fill", action="store_true",
                   help="stage 2: spend budget a sampled plan leaves unused, by the sensitivity model")
    p.add_argument("--refine-layer-groups", type=int, default=2,
                   help="stage 2: layer blocks per component type (one Optuna choice per block and component)")
    p.add_argument("--preset", choices=["quick"], help="quick: a ~10 minute search on 2 cores (3 candidates + 2 Optuna trials x 60 steps)")
    p.add_argument("--cache-dir", help="cache of warm starts and profiles (share it on a cluster)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else embedded Ray)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    p.add_argument("--out", required=True, help="storage path of the search")
    p.set_defaults(func=cmd_search, max_length=64, train_size=SEARCH_DEFAULTS["train_size"],
                   eval_size=SEARCH_DEFAULTS["eval_size"])

    p = sub.add_parser("pareto", help="the Pareto front of searches' results, the selection, pictures")
    p.add_argument("--results", nargs="+", required=True, metavar="DIR", help="search output directories (nxmi search --out)")
    p.add_argument("--target-ratio", type=float, help="select the best plan with at least this compression ratio, in (0, 1)")
    _add_selection_args(p)
    p.add_argument("--plot", help="write the Pareto plot here (.png; replaced if present)")
    p.add_argument("--heatmap", help="write the selected (else the best front) plan's heatmap here (.png; replaced if present)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("export", help="write the best plan meeting the ratio as a plan.json for nxmi train")
    p.add_argument("--results", nargs="+", required=True, metavar="DIR", help="search output directories (nxmi search --out)")
    p.add_argument("--target-ratio", type=float, required=True, help="minimum encoder compression ratio, in (0, 1)")
    _add_selection_args(p)
    p.add_argument("--out", required=True, help="the plan file to write (.json; never overwritten)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pack", help="store a hardened model as bit-packed integers, N:M indices and scales")
    p.add_argument("--model", required=True, help="a hardened model directory with plan.json (nxmi compress/train --out)")
    p.add_argument("--out", required=True, help="new directory for the packed model")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", help="rebuild an ordinary save_pretrained directory from a packed model")
    p.add_argument("--model", required=True, help="a directory written by nxmi pack")
    p.add_argument("--out", required=True, help="new directory for the model")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("evaluate", help="GLUE metrics of a saved model")
    p.add_argument("--model", required=True, help="a save_pretrained directory")
    _add_data_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except NxmiError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"nxmi {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nxmi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
