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
from .flags import add_fields, defaults_of, given
from .outputs import TASK_FIELDS, TASK_FILE, atomic_output_dir, require_free_output, task_record, write_json


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# helpers


def _quiet_libraries():
    """Our progress bars and lines only: transformers' warnings and bars, and datasets' bars for
    loading, tokenising and casting (seconds each), are off."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def parse_plan_arg(value: str, model):
    """``--plan``: a plan JSON file, ``COMPONENT=SPEC[,COMPONENT=SPEC...]`` for one spec per
    component type (``qkv=2:4:int8,ffn_in=2:4:int4``), or a spec string for a uniform plan. A
    plan that compresses nothing is refused."""
    from .compression import CompressionPlan, LayerSpec

    if value.endswith(".json") or Path(value).is_file():
        plan = CompressionPlan.load(value).validate(model)
        return plan.check_compresses(f" in {value}")
    if "=" in value:
        specs = {}
        for item in (part.strip() for part in value.split(",") if part.strip()):
            component, _, spec = item.partition("=")
            if not component.strip() or not spec.strip() or component.strip() in specs:
                raise NxmiError(f"malformed --plan item {item!r}: expected COMPONENT=SPEC, each component once, "
                                f"e.g. ffn_in=2:4:int8,ffn_out=dense:int8")
            specs[component.strip()] = spec.strip()
        return CompressionPlan.by_component(model, specs).validate(model)
    plan = CompressionPlan.uniform(model, LayerSpec.parse(value)).validate(model)
    return plan.check_compresses(f" of --plan {value}")


# ---------------------------------------------------------------------------------------------
# commands


def cmd_compress(args) -> int:
    from .compression import compress_, compression_ratio, harden_, ratio_table
    from .models import load_model, resolve_model_path

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
        plan.meta.setdefault("source_model", args.model)
        for convention, ratio in ratios.items():
            plan.meta.setdefault(f"ratio_{convention}", ratio)
        _save_hardened(args.out, model, plan, path)
        print(f"saved hardened model and plan.json to {args.out}")
    return 0


def _save_hardened(out, model, plan, tokenizer_from: str, metrics: dict | None = None, task: dict | None = None) -> None:
    """The hardened model (``save_pretrained``), its tokenizer, ``plan.json`` and optionally
    ``metrics.json`` and the task record ``task.json`` in a new directory ``out``, all or nothing."""
    import json

    from .compression import to_dense_
    from .models import load_tokenizer

    with atomic_output_dir(out) as tmp:
        to_dense_(model).save_pretrained(tmp)
        try:
            load_tokenizer(tokenizer_from).save_pretrained(tmp)
        except (OSError, ValueError):
            pass  # a model directory without a tokenizer is still a model
        plan.save(tmp / "plan.json")
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        if task is not None:
            write_json(tmp / TASK_FILE, task)


def _print_metrics(title: str, metrics: dict) -> None:
    shown = "  ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"{title}  {shown}")


def _data(args, stored: dict | None = None):
    """The run's data: the task flags given, on top of ``stored`` (a task record of a plan or a
    model directory) when they name no task themselves."""
    from .trials import DataConfig

    fields = given(args, DataConfig, exclude=("holdout_size", "selection_size"))
    if not any(k in fields for k in ("task", "train_file", "dataset")):
        if stored:
            fields = {k: v for k, v in stored.items() if k in (*TASK_FIELDS, "max_length", "seed") and v is not None} | fields
        elif "validation_file" not in fields:
            raise NxmiError("no task: give --task (a GLUE task) or your own data (--train-file and --validation-file, "
                            "or --dataset)")
    return DataConfig(**fields)


def _stored_task(model_dir) -> dict | None:
    """The task record a model directory keeps (``task.json``; None when it has none)."""
    import json

    file = Path(model_dir) / TASK_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def cmd_finetune(args) -> int:
    from .trials import DenseConfig, finetune_dense

    data = _data(args)
    out = require_free_output(args.out)
    result = finetune_dense(data, DenseConfig(**given(args, DenseConfig)), args.cache_dir, progress=True)
    with atomic_output_dir(out) as tmp:
        shutil.copytree(result.path, tmp, dirs_exist_ok=True)
        write_json(tmp / TASK_FILE, task_record(data))
    _print_metrics(f"dense {data.task} ({'cached' if result.cached else f'{result.wall_time:.0f}s'}):", result.metrics)
    print(f"saved to {out}")
    return 0


def _steps_from(args, data, batch_size: int) -> int:
    """--steps, or --epochs (default 1) over the training rows."""
    if "steps" in vars(args):
        if args.epochs is not None:
            raise NxmiError("give --steps or --epochs, not both")
        return args.steps
    import math

    from .trials.data import load_task

    rows = data.train_size
    if rows is None:
        rows = len(load_task(data.task_info, data_dir=data.data_dir, splits=["train"])["train"])
    return max(1, math.ceil((args.epochs or 1.0) * rows / batch_size))


def _plan_search(plan_arg: str) -> dict | None:
    """The search record of an exported plan file (``meta.search``; None for a spec string or a
    plan without one)."""
    from .compression import CompressionPlan

    if not (plan_arg.endswith(".json") or Path(plan_arg).is_file()):
        return None
    return CompressionPlan.load(plan_arg).meta.get("search") or None


def cmd_train(args) -> int:
    import dataclasses
    import time

    from .models import skeleton
    from .trials import DenseConfig, DenseResult, TrialConfig, finetune_dense, run_trial

    start = time.perf_counter()
    # an exported plan keeps its search's task and model: nxmi train --plan best_plan.json needs no data flags
    search = _plan_search(args.plan)
    data = _data(args, search)
    out = require_free_output(args.out)
    dense_fields = given(args, DenseConfig, DENSE_OF_TRAIN, rename=DENSE_OF_TRAIN)
    if search and "model" not in dense_fields and not args.dense:
        dense_fields = {k: search[k] for k in ("model", "finetuned") if search.get(k) is not None} | dense_fields
        if search.get("dense_epochs") is not None:
            dense_fields.setdefault("epochs", search["dense_epochs"])
    dense_cfg = DenseConfig(**dense_fields)
    plan = parse_plan_arg(args.plan, skeleton(args.dense or dense_cfg.model))  # checked before any training
    config = TrialConfig(**given(args, TrialConfig, exclude=("data", "dense"), rename=TRIAL_OF_TRAIN),
                         data=data, dense=dense_cfg)
    config = config.replace(steps=_steps_from(args, data, config.batch_size),
                            # the warm start runs there too, at the same precision
                            dense=dataclasses.replace(dense_cfg, device=config.device, precision=config.precision))
    dense = (DenseResult.load(args.dense) if args.dense
             else finetune_dense(data, config.dense, config.cache_dir, progress=True))
    _print_metrics("dense baseline:", dense.metrics)
    result = run_trial(plan, config, dense=dense, progress=True, keep_model=True,
                       report=lambda row, _: print(f"step {row['step']:>6} {row['phase']:<9} primary {row['primary']:.4f} "
                                                   f"retention {row['retention']:.2%}", flush=True))
    summary = result.summary(config, dense.metrics) | {"wall_time": time.perf_counter() - start,
                                                        "dense_path": str(dense.path)}
    _save_hardened(out, result.model, plan, str(dense.path), summary, task_record(data))
    _print_metrics("compressed:", result.metrics)
    print(f"retention {result.retention:.2%}  ratio paper {result.ratio_paper:.4%}  storage {result.ratio_storage:.4%}")
    print(f"saved hardened model, plan.json and metrics.json to {out}")
    return 0


def cmd_evaluate(args) -> int:
    import json

    from .models import load_model, load_tokenizer
    from .trials import evaluate, prepare_task_data
    from .trials.dense import check_head

    data = _data(args, _stored_task(args.model))
    info = data.task_info
    from .trials.config import check_device
    from .trials.loop import resolve_device

    check_device(args.device)
    from .export.onnx import ONNX_FILE

    if (Path(args.model) / ONNX_FILE).is_file():  # nxmi onnx --out: run by ONNX Runtime, on CPU
        from transformers import AutoConfig

        from .export.onnx import OnnxClassifier

        model, config = OnnxClassifier(args.model), AutoConfig.from_pretrained(args.model)
    else:
        model = load_model(args.model).to(resolve_device(args.device))
        config = model.config
    check_head(config, info, args.model)  # its outputs and label names fit the task
    tokenizer = load_tokenizer(args.model)
    prepared = prepare_task_data(info, tokenizer, data_dir=data.data_dir, max_length=data.max_length,
                                 eval_size=data.eval_size, seed=data.seed, include_train=False)
    metrics = evaluate(model, prepared, tokenizer, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"task": data.task, "model": args.model, **metrics}))
    else:
        _print_metrics(f"{data.task}:", metrics)
    return 0


def cmd_profile(args) -> int:
    from contextlib import nullcontext

    import pandas as pd

    from .compression.accounting import parse_targets
    from .search import PROXIES, SearchConfig, menu_for, parse_menu, profile_sensitivity, ray_session
    from .search.profile import sensitivity_pivot
    from .trials import DataConfig, DenseConfig, DenseResult, finetune_dense
    from .trials.config import check_device

    fields = given(args, SearchConfig, PROFILE_FIELDS, defaults=defaults_of(SearchConfig, PROFILE_FIELDS) | PROFILE_DEFAULTS)
    check_device(fields["device"])
    proxy = fields["proxy"]
    if proxy not in PROXIES:
        raise NxmiError(f"unknown proxy {proxy!r}; allowed: {', '.join(PROXIES)}")
    # the options a search of these targets profiles: the union of their menus (one menu name and default everywhere)
    targets = parse_targets(fields["target_ratio"])
    options = parse_menu(fields["options"]) if fields["options"] else tuple(dict.fromkeys(
        o for target in targets for o in menu_for(fields["menu"], 32 * (1 - target))))
    data = DataConfig(**{k: fields[k] for k in (*TASK_FIELDS, "max_length", "train_size", "eval_size", "seed")},
                      holdout_size=fields["calib_size"])
    if args.dense:
        model_dir = DenseResult.load(args.dense).path
    else:
        dense = DenseConfig(model=fields["model"], finetuned=fields["finetuned"], epochs=fields["dense_epochs"],
                            device=fields["device"])
        model_dir = finetune_dense(data, dense, fields["cache_dir"], progress=True).path
    workers = fields["profile_workers"]
    with ray_session(fields["address"]) if workers != 0 else nullcontext():
        result = profile_sensitivity(model_dir, data, options, fields["calib_size"],
                                     cache_dir=fields["cache_dir"], workers=workers, progress=True,
                                     device=fields["device"], gpus_per_task=fields["gpus_per_trial"],
                                     oneshot=proxy == "oneshot")
    print(f"{proxy} proxy, module x option ({PROXIES[proxy]} column):")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:+.4g}".format):
        print(sensitivity_pivot(result.table, PROXIES[proxy]).to_string())
    print(f"\n{result.computed} computed, {result.cached} from cache, {result.wall_time:.1f}s; cache: {result.path}")
    return 0


def cmd_search(args) -> int:
    import pandas as pd

    from .search import SearchConfig, run_search

    config = SearchConfig.preset(args.preset, **given(args, SearchConfig))
    result = run_search(config, resume=args.resume, progress=True, verbose=args.verbose)
    table = result.results
    show = table[["trial_id", "status", "kind", "ratio_paper", "ratio_storage", "primary", "retention", "plan_summary"]]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print("\n" + show.sort_values("primary", ascending=False).to_string(index=False))
    print(f"\nresults: {result.out / 'results.parquet'}  ({len(table)} trials, {result.wall_time:.0f}s)")
    rule = _rule(config.objective, config.prior_weight)
    missed = 0
    for target in config.targets:
        row = result.choices.get(target.value)
        if row is None:
            print(f"no completed trial meets the target ratio {target}")
            missed += 1
            continue
        _print_selected(f"best plan meeting {target.value:.2%} ({config.convention}) on {rule}", row)
    if len(config.targets) > 1:
        print(f"the front: nxmi pareto --results {result.out} --plot front.png; a plan for any ratio: "
              f"nxmi export --results {result.out} --target-ratio R --out plan.json")
    return 1 if missed == len(config.targets) else 0


def _rule(objective: str, prior_weight: float) -> str:
    """How a choice was made, in words: the objective, and the prior on the proxy cost if any."""
    return objective + (f" with prior weight {prior_weight:g} on the proxy cost" if prior_weight else "")


def _print_selected(title: str, row) -> None:
    print(f"{title}: trial {row['trial_id']} [{row['kind']}] primary {row['primary']:.4f} = {row['retention']:.2%} "
          f"of dense; ratio paper {row['ratio_paper']:.4%}, storage {row['ratio_storage']:.4%}")
    print(f"plan: {row['plan_summary']}")


def cmd_pareto(args) -> int:
    from .analysis import format_trials, load_results, pareto_front, plot_front, plot_plan, select
    from .analysis.pareto import check_prior_weight
    from .analysis.results import search_objective, search_prior_weight, search_targets
    from .compression.accounting import parse_targets

    for flag, value in (("--plot", args.plot), ("--heatmap", args.heatmap)):
        if value and Path(value).suffix.lower() != ".png":
            raise NxmiError(f"{flag} must name a .png file, got {value!r}")
    given_targets = parse_targets(args.target_ratio) if args.target_ratio is not None else None
    if args.prior_weight is not None:
        check_prior_weight(args.prior_weight)
    results = load_results(args.results)
    front = pareto_front(results, args.convention, args.metric, args.include_stopped)
    counts = ", ".join(f"{n} {status}" for status, n in results["status"].value_counts().items())
    print(f"{len(results)} trials from {results['search'].nunique()} search(es): {counts}")
    print(f"Pareto front ({args.convention} ratio vs validation {args.metric}; "
          f"{'completed and stopped' if args.include_stopped else 'completed'} trials): {len(front)} plan(s) at "
          f"{front[f'ratio_{args.convention}'].round(6).nunique()} distinct ratio(s)")
    if len(front):
        print(format_trials(front))
    objective = args.selection_metric or search_objective(results)
    weight = search_prior_weight(results) if args.prior_weight is None else args.prior_weight
    # the targets asked for, else the searches' own (a search of several targets: one choice each)
    targets = given_targets or search_targets(results, args.convention)
    chosen = {}
    for target in targets:
        try:
            chosen[target] = select(results, target, args.convention, objective, args.include_stopped, weight)
        except NxmiError:
            if given_targets and len(given_targets) == 1:
                raise  # the one ratio asked for: its error says what is reachable
            print(f"\nno eligible trial meets {target:.2%} ({args.convention})")
            continue
        print()
        _print_selected(f"selected on {_rule(objective, weight)} for >= {target:.2%} ({args.convention})",
                        chosen[target])
    first = next(iter(chosen.values()), None)
    heat = first if first is not None else (front.iloc[0] if len(front) else None)
    if args.heatmap and heat is None:
        raise NxmiError("no completed trial with finite metrics, so no plan to draw for --heatmap")
    if args.plot:
        # the stars are the trials printed above, chosen on the search's objective
        plot_front(results, targets or None, args.convention, args.metric, objective, args.include_stopped,
                   selected=chosen, path=args.plot)
        print(f"wrote {args.plot}")
    if args.heatmap:
        plot_plan(heat, path=args.heatmap, title=f"trial {heat['trial_id']} [{heat['kind']}]: {heat['plan_summary']}")
        print(f"wrote {args.heatmap} (plan of trial {heat['trial_id']})")
    return 0


def cmd_export(args) -> int:
    from .analysis import export_plan, load_results

    results = load_results(args.results)
    plan = export_plan(results, args.target_ratio, args.convention, args.out, metric=args.selection_metric,
                       include_stopped=args.include_stopped, prior_weight=args.prior_weight)
    trial = plan.meta["trial"]
    print(f"exported trial {trial['trial_id']} [{trial['kind']}] to {args.out}: {plan.summary()}")
    print(f"ratio paper {plan.meta['ratio_paper']:.4%}, storage {plan.meta['ratio_storage']:.4%}; "
          f"short-trial primary {trial['primary']:.4f}")
    print(f"train it fully with:\n  {plan.meta['train_command']}")
    return 0


def cmd_pack(args) -> int:
    from .export import pack_dir

    report = pack_dir(args.model, args.out)
    print(report.summary())
    print(f"saved packed model to {args.out}")
    return 0


def cmd_onnx(args) -> int:
    from .export.onnx import export_onnx_dir

    report = export_onnx_dir(args.model, args.out, int8=not args.fp32, fuse=args.fuse, embeddings=args.embeddings,
                             u8_weights=args.u8_weights)
    print(report.summary())
    if not args.fp32:  # with --fp32 every module is fp32 by request
        for name, reason in report.fp32_modules.items():
            print(f"  {name}: kept fp32 ({reason})")
    print(f"saved model.onnx, config.json, the tokenizer and onnx.json to {args.out}; "
          f"run it with onnxruntime.InferenceSession, or nxmi evaluate --model {args.out}")
    return 0


def cmd_unpack(args) -> int:
    from .export import unpack_dir

    out = unpack_dir(args.model, args.out)
    print(f"saved the unpacked (hardened, fp32) model and plan.json to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser: the options of a command that configures a dataclass are generated from its fields

# nxmi train: DenseConfig fields named for the warm start, TrialConfig's seed apart from the data's
DENSE_OF_TRAIN = {"model": "model", "finetuned": "finetuned", "epochs": "dense_epochs"}
TRIAL_OF_TRAIN = {"seed": "trial_seed"}
# nxmi profile: the SearchConfig fields it shares with a search; in-process unless asked
PROFILE_FIELDS = ("model", "finetuned", "dense_epochs", *TASK_FIELDS, "max_length", "train_size", "eval_size", "seed",
                  "target_ratio", "menu", "options", "proxy", "calib_size", "profile_workers", "cache_dir", "address",
                  "device", "gpus_per_trial")
PROFILE_DEFAULTS = {"profile_workers": 0, "train_size": None, "eval_size": None}
PROFILE_HELPS = {"profile_workers": "Ray tasks in parallel, on --address or embedded Ray (0: in-process, the default)",
                 "gpus_per_trial": "GPUs each profiling Ray task reserves (with --profile-workers)",
                 "options": "comma-separated option menu (default: the --menu for --target-ratio)",
                 "target_ratio": "the target whose --menu options to profile, in (0, 1), or several (0.875,0.9375: "
                                 "the union of their menus, as a search of them profiles)"}
# nxmi search's flags, by group. The other SearchConfig fields (kinds, objective, prior_weight, concurrency,
# fail_fast, asha, kd_alpha, dense_patience, oneshot_profile, profile_workers, refine_layer_groups, cache_dir: also
# $NXMI_CACHE_DIR) are settings
# of the Python API: defaults chosen by measurement (docs/decisions.md) or tools of the benchmarks and tests.
SEARCH_GROUPS = {
    "task and data": ("task", "model", "finetuned", "data_dir", "train_file", "validation_file", "dataset", "train_split",
                      "validation_split", "text_columns", "label_column", "metric", "max_length", "train_size",
                      "eval_size", "selection_size", "calib_size", "seed"),
    "target": ("target_ratio", "convention"),
    "search": ("menu", "options", "proxy", "trials", "refine_trials"),
    "trials": ("steps", "batch_size", "lr", "dense_epochs", "precision", "device"),
    "cluster": ("address", "cpus_per_trial", "gpus_per_trial"),
    "output": ("out",),
}
DATA_FIELDS = (*TASK_FIELDS, "max_length", "train_size", "eval_size", "seed")
EVALUATE_FIELDS = (*TASK_FIELDS, "max_length", "eval_size", "seed")


def _add_selection_args(p, front: bool) -> None:
    p.add_argument("--results", nargs="+", required=True, metavar="DIR", help="search output directories (nxmi search --out)")
    p.add_argument("--convention", default="paper", help="ratio convention: paper or storage")
    if front:
        p.add_argument("--metric", default="primary", help="accuracy axis of the front: primary (the task metric) or retention")
    p.add_argument("--selection-metric", help="what the selection ranks on (default: the search's objective, "
                   "as nxmi search chose): selection_loss, selection_loss_calibrated, selection_kl, selection_primary, "
                   "primary or retention")
    p.add_argument("--prior-weight", type=float, help="rank on z(selection metric) - this * z(the plan's proxy cost) "
                   "(default: the search's --prior-weight; 0: the metric alone)")
    p.add_argument("--include-stopped", action="store_true",
                   help="let trials stopped early by ASHA (intermediate metrics) on the front and into the selection")


def build_parser() -> argparse.ArgumentParser:
    from .search import PRESETS, SearchConfig
    from .trials import DataConfig, DenseConfig, TrialConfig
    from .trials.config import TASK_HELP

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = _Parser(prog="nxmi", description="N:M sparsity + integer quantization for Transformer encoders.",
                     parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=func)
        return p

    p = command("compress", cmd_compress, "apply a plan one-shot (no training) and report the compression")
    p.add_argument("--model", default="default", help="'default' (embedded MiniLM), a directory, or a hub name")
    p.add_argument("--plan", required=True, help="a spec such as 2:4:int8 (uniform plan), one spec per component "
                   "such as qkv=2:4:int4,ffn_in=2:4:int8 (nxmi compress lists a model's components), or a plan.json file")
    p.add_argument("--out", help="save the hardened model (save_pretrained) and plan.json here")

    p = command("finetune", cmd_finetune, "dense task fine-tune (the warm start of every trial), cached")
    add_fields(p, DataConfig, DATA_FIELDS)
    add_fields(p, DenseConfig)
    p.add_argument("--cache-dir", help="where dense warm starts are cached (default: $NXMI_CACHE_DIR or ~/.cache/nxmiformer)")
    p.add_argument("--out", required=True, help="save the fine-tuned model here")

    p = command("train", cmd_train, "full ADMM+QAT training of a plan from the dense warm start")
    p.add_argument("--plan", required=True, help="a plan.json (e.g. from nxmi export), a spec such as 2:4:int8, or "
                   "one spec per component such as query=2:4:int4,ffn_in=2:4:int8")
    p.add_argument("--dense", help="an existing warm start directory (from nxmi finetune) instead of computing one")
    p.add_argument("--epochs", type=float, help="epochs over the training rows instead of --steps (default 1)")
    add_fields(p, DataConfig, DATA_FIELDS, helps={"task": TASK_HELP + "; default: the plan's own (nxmi export)"})
    add_fields(p, DenseConfig, DENSE_OF_TRAIN, rename=DENSE_OF_TRAIN)
    add_fields(p, TrialConfig, exclude=("data", "dense"), rename=TRIAL_OF_TRAIN, defaults={"steps": "from --epochs"})
    p.add_argument("--out", required=True, help="save the hardened model, plan.json and metrics.json here")

    p = command("profile", cmd_profile, "per-module sensitivity of every option (cached in Parquet)")
    p.add_argument("--dense", help="an existing warm start directory (from nxmi finetune)")
    add_fields(p, SearchConfig, PROFILE_FIELDS, defaults=PROFILE_DEFAULTS, helps=PROFILE_HELPS)

    p = command("search", cmd_search, "search heterogeneous per-layer plans under a compression-ratio constraint")
    for title, names in SEARCH_GROUPS.items():
        group = p.add_argument_group(title)
        add_fields(group, SearchConfig, names, required=("out", "target_ratio"))
        if title == "output":
            group.add_argument("--preset", choices=sorted(PRESETS), help="; ".join(
                f"{k}: {v.description}" for k, v in PRESETS.items()) + " (flags given explicitly win)")
            group.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
            group.add_argument("--verbose", action="store_true", help="also show Ray's and Ray Tune's own output "
                               "(configuration boxes, TensorBoard hints, INFO logs)")

    p = command("pareto", cmd_pareto, "the Pareto front of searches' results, the selection, pictures")
    p.add_argument("--target-ratio", help="select the best plan with at least this compression ratio, in (0, 1), or "
                   "one per ratio of a list (0.875,0.9375) or LOW:HIGH:COUNT (default: the searches' own targets)")
    _add_selection_args(p, front=True)
    p.add_argument("--plot", help="write the Pareto plot here (.png; replaced if present)")
    p.add_argument("--heatmap", help="write the selected (else the best front) plan's heatmap here (.png; replaced if present)")

    p = command("export", cmd_export, "write the best plan meeting the ratio as a plan.json for nxmi train")
    p.add_argument("--target-ratio", type=float, required=True, help="minimum encoder compression ratio, in (0, 1)")
    _add_selection_args(p, front=False)
    p.add_argument("--out", required=True, help="the plan file to write (.json; never overwritten)")

    p = command("pack", cmd_pack, "store a hardened model as bit-packed integers, N:M indices and scales")
    p.add_argument("--model", required=True, help="a hardened model directory with plan.json (nxmi compress/train --out)")
    p.add_argument("--out", required=True, help="new directory for the packed model")

    p = command("unpack", cmd_unpack, "rebuild an ordinary save_pretrained directory from a packed model")
    p.add_argument("--model", required=True, help="a directory written by nxmi pack")
    p.add_argument("--out", required=True, help="new directory for the model")

    p = command("onnx", cmd_onnx, "export a hardened model to ONNX with its integer weights on int8 kernels")
    p.add_argument("--model", required=True, help="a hardened (nxmi compress/train --out), packed (nxmi pack) or dense "
                   "model directory")
    p.add_argument("--out", required=True, help="new directory for model.onnx, config, tokenizer and onnx.json")
    p.add_argument("--fp32", action="store_true", help="keep every weight fp32 (the reference the int8 graph is "
                   "measured against)")
    p.add_argument("--fuse", action="store_true", help="apply ONNX Runtime's BERT fusions (QAttention...): faster at "
                   "batch 1, slower at batch 32 on CPU, and only ONNX Runtime loads it (default: standard operators)")
    p.add_argument("--embeddings", help="how the embedding tables are stored: int8 or int4 with a scale per row, "
                   "fp16 or fp32 (default: int4, the smallest within 0.3 points of fp32 tables; fp32 with --fp32)")
    p.add_argument("--u8-weights", action="store_true", help="8-bit codes as uint8: exact on CPUs without AVX-VNNI "
                   "(where ONNX Runtime's int8 kernel, as for its own quantize_dynamic, may saturate), 1.5x slower")

    p = command("evaluate", cmd_evaluate, "the task's metrics of a saved or ONNX model (its task.json says which task)")
    p.add_argument("--model", required=True, help="a save_pretrained directory, or an nxmi onnx directory (run by "
                   "ONNX Runtime)")
    add_fields(p, DataConfig, EVALUATE_FIELDS, helps={
        "task": TASK_HELP + "; default: the model directory's own (task.json, written by nxmi finetune/train)"})
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (CUDA where this process sees a GPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        _quiet_libraries()
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except NxmiError as exc:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(exc).split())
        print(f"nxmi {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nxmi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
