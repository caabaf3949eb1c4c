"""Sensitivity profiling: how much each module hurts when it alone is compressed.

For every compressible module and every option of a menu, the default ``fisher`` proxy weighs the
change a projection makes (N:M mask, then the integer grid) by the squared gradients of the
calibration loss (accumulated over micro-batches of :data:`FISHER_BATCH` rows in one backward pass
each, the empirical Fisher diagonal): ``sum(F * (W - proj(W))^2)``. It needs no forward per option.
On request (``oneshot=True``) the ``oneshot`` proxy also measures the calibration loss and primary
metric with that module alone projected and every other module dense (``delta_loss``): a forward
per module x option, nearly all of a full profile's cost. The calibration rows come from the
training split (held out from the rows the trials train on). The dense forward is computed once per worker: block outputs are
cached, and a module of block ``i`` is measured by replaying the cached outputs of blocks
``0..i-1`` and running only blocks ``i..L-1`` and the head.

Profiles are cached in Parquet under ``<cache_dir>/profiles/``, keyed by a fingerprint of the
model's weight files, the task, the calibration data (file contents and sampling), the option and
this module's version. A corrupt cache file is reported with a warning and recomputed; writes are
atomic (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ..compression import LayerSpec, compressible_modules, encoder_blocks, project
from ..errors import NxmiError
from ..models import skeleton
from ..outputs import hash_files
from ..trials.config import DataConfig, default_cache_dir

PROFILE_VERSION = 3  # 2: projections use the spec's scale method (MSE-fitted clips by default); 3: fisher
FISHER_BATCH = 8
# --proxy -> the profile's column it scores with
PROXIES = {"oneshot": "delta_loss", "fisher": "fisher"}
COLUMNS = ["module", "layer", "component", "out_features", "in_features", "option",
           "loss", "metric", "delta_loss", "delta_metric", "fisher", "score"]


@dataclass(frozen=True)
class ProfileResult:
    """A sensitivity table (one row per module x option) and how it was obtained."""

    table: pd.DataFrame
    path: Path
    computed: int
    cached: int
    wall_time: float


# the options sparse GPU kernels accelerate: 2:4 (semi-structured) and dense, at 8 or 16 bits
KERNEL_MENU = ("dense:fp16", "dense:int8", "2:4:fp16", "2:4:int8")
MENUS = ("fine", "kernel")
# --menu fine: these sparsity patterns x widths (3-bit integers included; 16-bit floats only at half
# density or more), kept within a factor FINE_SPAN of the target's bits per weight, so the ladder has
# steps of about 1.5x (0.5, 0.75, 1, 1.125, 1.5, 2 at 1 bit) and no option far from the average (at
# 96.875% paper: 22 options, nothing below 0.5 bit, so no 1:8:int2)
FINE_PATTERNS = ("dense", "3:4", "6:8", "2:4", "4:8", "3:8", "1:4", "2:8", "1:8")
FINE_WIDTHS = ("int2", "int3", "int4", "int8", "fp16")
FINE_SPAN = 2.0


def menu_for(name: str, target_bits: float) -> tuple[str, ...]:
    """A named option menu for a target of ``target_bits`` bits per weight on average (32 x (1 - ratio)).

    ``fine`` (the default of every command): every :data:`FINE_PATTERNS` x :data:`FINE_WIDTHS`
    option (floats at half density or more) whose bits per weight lie within a factor :data:`FINE_SPAN` of ``target_bits``: a finer ladder (3-bit and
    3:8 / 6:8 / 3:4 options) without the extremes, sorted from the most bits to the fewest (a target
    beyond the ladder's ends, 0.25 to 16 bits, takes the options within a factor 2 of that end).
    ``kernel``: :data:`KERNEL_MENU`, what sparse GPU kernels accelerate (it reaches at most 87.5% paper)."""
    import math

    if name == "kernel":
        return KERNEL_MENU
    if name == "fine":
        specs = {f"{p}:{w}": LayerSpec.parse(f"{p}:{w}") for p in FINE_PATTERNS for w in FINE_WIDTHS}
        options = [o for o, spec in specs.items() if spec.is_integer or spec.density >= 0.5]
        per_weight = {o: specs[o].bits_per_weight for o in options}
        # a target beyond the ladder's ends keeps the options nearest it, so an unreachable ratio is
        # reported as such (the highest reachable) instead of as an empty menu
        centre = min(max(target_bits, min(per_weight.values())), max(per_weight.values()))
        near = [o for o in options if abs(math.log2(per_weight[o] / centre)) <= math.log2(FINE_SPAN) + 1e-9]
        return tuple(sorted(near, key=lambda o: -per_weight[o]))  # stable: pattern order within one level
    raise NxmiError(f"unknown menu {name!r}; allowed: {', '.join(MENUS)}")


def parse_menu(options: Sequence[str] | str) -> tuple[str, ...]:
    """Canonical option strings; an unknown option is an error naming it."""
    if isinstance(options, str):
        options = [o for o in options.split(",") if o.strip()]
    menu = tuple(dict.fromkeys(str(LayerSpec.parse(o)) for o in options))
    if not menu:
        raise NxmiError("the option menu is empty; give at least one option such as 2:4:int8")
    return menu


def profile_key(model_dir: Path, data: DataConfig, calib_size: int, batch_size: int) -> str:
    """Fingerprint of weights, task, calibration data and code version (not of the options:
    each option is a row, so a new option extends the same file)."""
    digest = hashlib.sha256()
    weight_files = [p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json"]
    if not weight_files:
        raise NxmiError(f"no weight files in {model_dir}")
    hash_files(weight_files, digest)
    info = data.task_info
    if info.source == "files":
        hash_files([Path(info.train_file)], digest)
    elif data.data_dir and info.source == "glue":
        train_file = Path(data.data_dir) / data.task / "train.parquet"
        if not train_file.is_file():
            raise NxmiError(f"missing split file {train_file}")
        hash_files([train_file], digest)
    sampling = {"task": data.task, "max_length": data.max_length, "seed": data.seed, "calib_size": calib_size,
                "batch_size": batch_size, "version": PROFILE_VERSION}
    if info.source != "glue":  # a user's task: how its rows are read (a GLUE preset's key is as it was)
        sampling["task_info"] = {k: v for k, v in info.to_dict().items() if k not in ("train_file", "validation_file")}
    digest.update(json.dumps(sampling, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def _read_cache(path: Path, columns: Sequence[str] = COLUMNS) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        table = pd.read_parquet(path)
        missing = set(columns) - set(table.columns)
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        return table[list(columns)]
    except Exception as exc:  # any unreadable file is recomputed, never trusted
        warnings.warn(f"profile cache {path} is unreadable ({type(exc).__name__}: {exc}); recomputing it", stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _write_atomic(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


class _Replay(nn.Module):
    """Stands in for an encoder block: returns the block's cached dense output for the batch
    currently being evaluated. Any other attribute is the block's (the encoder loop may read
    some, e.g. ModernBERT's ``attention_type``); the block is not registered as a submodule."""

    def __init__(self, outputs: list, cursor: dict, block: nn.Module | None = None):
        super().__init__()
        self.outputs, self.cursor = outputs, cursor
        self.__dict__["_block"] = block

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            block = self.__dict__.get("_block")
            if block is None:
                raise
            return getattr(block, name)

    def forward(self, *args, **kwargs):
        return self.outputs[self.cursor["batch"]]


def profile_modules(model_dir: str, data: dict, calib_size: int, batch_size: int,
                    modules: Sequence[str], options: Sequence[str], threads: int | None = None,
                    progress: bool = False, device: str = "cpu", oneshot: bool = True) -> list[dict]:
    """Measure ``modules`` x ``options`` on the calibration rows (one worker's share), on
    ``device`` (``auto``: CUDA where this process sees a GPU). Without ``oneshot`` only the
    Fisher column is computed (no forward per option); the one-shot columns are NaN (0 for the
    identity option)."""
    from ..models import load_model, load_tokenizer
    from ..trials.data import make_dataloader, prepare_task_data
    from ..trials.loop import model_inputs, resolve_device, task_loss
    from ..trials.metrics import compute_metrics

    if threads:
        torch.set_num_threads(threads)
    data_cfg = DataConfig(**data)
    info = data_cfg.task_info
    where = resolve_device(device)
    model = load_model(model_dir).eval().to(where)
    tokenizer = load_tokenizer(model_dir)
    calib = prepare_task_data(info, tokenizer, data_dir=data_cfg.data_dir, max_length=data_cfg.max_length,
                              seed=data_cfg.seed, include_train=False, holdout_size=calib_size).holdout
    batches = list(make_dataloader(calib, tokenizer, batch_size))
    labels = torch.cat([b["labels"] for b in batches])
    _, blocks = encoder_blocks(model)
    cached: list[list] = [[] for _ in blocks]
    hooks = [block.register_forward_hook(lambda mod, args, out, i=i: cached[i].append(out)) for i, block in enumerate(blocks)]

    def run() -> tuple[float, float]:
        logits = []
        with torch.no_grad():
            for cursor["batch"], batch in enumerate(batches):
                logits.append(model(**model_inputs(batch, where)).logits.float().cpu())
        logits = torch.cat(logits)
        loss = float(task_loss(logits, labels, info.is_regression))
        return loss, compute_metrics(info, logits.numpy(), labels.numpy())["primary"]

    cursor = {"batch": 0}
    nan = float("nan")
    # the one dense forward: fills the block-output cache (the Fisher column needs neither)
    base_loss, base_metric = run() if oneshot else (nan, nan)
    for hook in hooks:
        hook.remove()
    fisher = _fisher_diagonal(model, calib, tokenizer, info.is_regression, set(modules))

    by_name = {cm.name: cm for cm in compressible_modules(model)}
    rows = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(modules) * len(options), desc="profiling", disable=not progress, leave=False)
    for layer in sorted({by_name[name].layer for name in modules}):
        originals = [blocks[i] for i in range(layer)]
        for i in range(layer):
            blocks[i] = _Replay(cached[i], cursor, blocks[i])
        try:
            for name in (n for n in modules if by_name[n].layer == layer):
                cm = by_name[name]
                weight = cm.module.weight
                original = weight.detach().clone()
                for option in options:
                    spec = LayerSpec.parse(option)
                    if spec.is_identity:
                        loss, metric, weighted = base_loss, base_metric, 0.0
                        delta_loss = delta_metric = 0.0
                    else:
                        projected = project(original, spec)
                        weighted = float((fisher[name] * (original - projected) ** 2).sum())
                        loss = metric = nan
                        if oneshot:
                            with torch.no_grad():
                                weight.copy_(projected)
                            loss, metric = run()
                            with torch.no_grad():
                                weight.copy_(original)
                        delta_loss, delta_metric = loss - base_loss, metric - base_metric
                    rows.append({"module": name, "layer": cm.layer, "component": cm.component,
                                 "out_features": cm.out_features, "in_features": cm.in_features, "option": option,
                                 "loss": loss, "metric": metric, "delta_loss": delta_loss,
                                 "delta_metric": delta_metric, "fisher": weighted, "score": delta_loss})
                    bar.update()
        finally:
            for i, block in enumerate(originals):
                blocks[i] = block
    bar.close()
    return rows


def _fisher_diagonal(model: nn.Module, calib, tokenizer, regression: bool, names: set[str]) -> dict[str, torch.Tensor]:
    """The empirical Fisher diagonal of the named modules' weights: squared gradients of the
    calibration loss, summed over micro-batches of :data:`FISHER_BATCH` rows."""
    from ..trials.data import make_dataloader
    from ..trials.loop import model_inputs, task_loss

    weights = {cm.name: cm.module.weight for cm in compressible_modules(model) if cm.name in names}
    fisher = {name: torch.zeros_like(w) for name, w in weights.items()}
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for batch in make_dataloader(calib, tokenizer, FISHER_BATCH):
            logits = model(**model_inputs(batch, device)).logits.float()
            task_loss(logits, batch["labels"].to(device), regression).backward()
            for name, w in weights.items():
                fisher[name] += w.grad.detach() ** 2
            model.zero_grad(set_to_none=True)
    return fisher


def _split_work(modules: list, workers: int) -> list[list[str]]:
    """Share modules among workers so that each runs about as many blocks (a module of block i
    costs L - i blocks per forward)."""
    layers = max(cm.layer for cm in modules) + 1
    shares: list[list[str]] = [[] for _ in range(workers)]
    load = [0] * workers
    for cm in sorted(modules, key=lambda cm: cm.layer):
        k = load.index(min(load))
        shares[k].append(cm.name)
        load[k] += layers - cm.layer
    return [s for s in shares if s]


def profile_sensitivity(
    model_dir: str | Path,
    data: DataConfig,
    options: Sequence[str],
    calib_size: int = 256,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    device: str = "cpu",
    gpus_per_task: float = 0.0,
    oneshot: bool = False,
) -> ProfileResult:
    """The sensitivity table of ``model_dir`` (a fine-tuned checkpoint) on ``data.task``.

    Args:
        options: the option menu (spec strings).
        calib_size: calibration rows, drawn from the training split with ``data.seed``; trials
            must use ``DataConfig(holdout_size=calib_size)`` so they never train on them.
        workers: Ray tasks to spread the work over (needs ``ray.init`` first); 0 runs in-process.
        device: where the forwards run (``auto``: CUDA where the process sees a GPU; a Ray task
            sees the GPUs it reserves with ``gpus_per_task``, none without).
        oneshot: also measure the one-shot columns (a forward per module x option: nearly all of
            the cost; off unless asked, as ``fisher`` is the default proxy). Without it only
            ``fisher`` is computed and the one-shot columns of new rows are NaN; cached rows that have them keep them, and a later call with
            ``oneshot`` completes the rows that lack them.

    Returns the table with columns ``module, layer, component, out_features, in_features,
    option, loss, metric, delta_loss, delta_metric, fisher, score`` (score = delta_loss).
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise NxmiError(f"model directory not found or incomplete: {model_dir}")
    if isinstance(calib_size, bool) or not isinstance(calib_size, int) or calib_size < 1:
        raise NxmiError(f"calib_size must be a positive integer, got {calib_size!r}")
    menu = parse_menu(options)
    key = profile_key(model_dir, data, calib_size, batch_size)
    path = Path(cache_dir or default_cache_dir()) / "profiles" / f"{data.task}-{key}.parquet"
    table = _read_cache(path)

    architecture = skeleton(model_dir)
    modules = compressible_modules(architecture)
    check_options_fit(architecture, menu)
    complete = table if table is None or not oneshot else table[table["loss"].notna()]
    have = set() if complete is None else set(zip(complete["module"], complete["option"]))
    missing_options = [o for o in menu if any((cm.name, o) not in have for cm in modules)]
    computed = 0
    if missing_options:
        data_dict = asdict(data)
        if workers and workers > 1:
            import ray

            task = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(profile_modules)
            shares = _split_work(modules, workers)
            refs = [task.remote(str(model_dir), data_dict, calib_size, batch_size, share, missing_options, 1, False, device,
                                oneshot) for share in shares]
            rows = _gather(refs, progress)
        else:
            rows = profile_modules(str(model_dir), data_dict, calib_size, batch_size, [cm.name for cm in modules],
                                   missing_options, progress=progress, device=device, oneshot=oneshot)
        new = pd.DataFrame(rows, columns=COLUMNS)
        computed = len(new)
        table = new if table is None else pd.concat([table[~table["option"].isin(missing_options)], new], ignore_index=True)
        _write_atomic(table, path)
    selected = table[table["option"].isin(menu)].reset_index(drop=True)
    return ProfileResult(selected, path, computed, len(selected) - computed, time.perf_counter() - start)


def check_options_fit(model: nn.Module, options: Sequence[str]) -> None:
    """Every option must fit every module (input width a multiple of m), before any work starts."""
    modules = compressible_modules(model)
    for option in options:
        spec = LayerSpec.parse(option)
        bad = [cm for cm in modules if cm.in_features % spec.m]
        if bad:
            raise NxmiError(f"option {option} does not fit {bad[0].name}: input width {bad[0].in_features} "
                            f"is not a multiple of m={spec.m}")


def _gather(refs, progress: bool, desc: str = "profiling") -> list[dict]:
    import ray
    from tqdm.auto import tqdm

    rows, pending = [], list(refs)
    with tqdm(total=len(refs), desc=desc, disable=not progress, leave=False) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            rows.extend(ray.get(done[0]))
            bar.update()
    return rows


def sensitivity_pivot(table: pd.DataFrame, value: str = "delta_loss") -> pd.DataFrame:
    """Module x option view of the table, for printing."""
    pivot = table.pivot_table(index=["layer", "component"], columns="option", values=value, sort=False)
    return pivot
