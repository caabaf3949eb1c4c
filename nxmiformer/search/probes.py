"""Short-recovery probes: the ``probe`` proxy, what a group of modules costs *after* recovery.

The one-shot and Fisher proxies score a module by the damage its projection does before any
training; short QAT then recovers some options much better than others (4-bit 4:8 better than
1:4 at the same bits), which they cannot see. A probe measures recovery directly. Modules are
grouped by component type (query, key, ..., ffn_out) and a block of consecutive layers
(``blocks`` blocks over the depth); for every group x option, the dense warm start is compressed
with that option on that group alone (every other module dense), hardened at once (mask frozen,
weights on the grid), and trained ``steps`` masked-QAT steps on the trials' training rows. Its
score is the rise of the loss on the selection rows over the dense warm start's, shared equally
among the group's modules (they have the same shape), so a plan's predicted cost is still a sum
over modules and the knapsack solves it as before.

Each group is one Ray task (its options run one after another on one model load). Results are
cached in Parquet under ``<cache_dir>/profiles/`` beside the one-shot profile, keyed by the warm
start's weights, the rows (task, sizes, seed), the probe settings and :data:`PROBE_VERSION`; a new
option extends the file. The cost (probes run, steps, wall time) is returned and reported.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from ..compression import CompressionPlan, LayerSpec, compress_, compressible_modules, harden_
from ..compression.layer import scale_parameters
from ..errors import NxmiError
from ..models import skeleton
from ..trials.config import DataConfig, default_cache_dir
from .profile import _gather, _read_cache, _write_atomic, parse_menu, profile_key

PROBE_VERSION = 2  # 2: the trials' weight decay (was a fixed 0.01)
COLUMNS = ["module", "layer", "component", "option", "group", "probe_loss", "probe"]


@dataclass(frozen=True)
class ProbeSettings:
    """How each probe trains: ``steps`` masked-QAT steps of ``batch_size`` rows at learning rate
    ``lr`` (linear decay) and AdamW ``weight_decay`` (quantizer scales: none, as in the trials),
    over ``blocks`` blocks of layers per component type."""

    steps: int = 16
    blocks: int = 2
    lr: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 0.0

    def __post_init__(self):
        for name in ("steps", "blocks", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NxmiError(f"probe {name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise NxmiError(f"probe lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise NxmiError(f"probe weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class ProbeResult:
    """The probe table (one row per module x option, column ``probe``) and what it cost."""

    table: pd.DataFrame
    path: Path
    computed: int
    cached: int
    wall_time: float

    def cost(self) -> dict:
        """Probes trained now (group x option), module x option rows read from the cache, groups
        and the wall time."""
        groups = self.table["group"].nunique() if len(self.table) else 0
        return {"probes": int(self.computed), "groups": int(groups), "cached_rows": int(self.cached),
                "wall_s": round(self.wall_time, 1)}


def probe_groups(model, blocks: int) -> dict[str, list[str]]:
    """``"<component>@<first>-<last>"`` -> the names of that component's modules in that block of
    layers; the depth is cut into ``min(blocks, layers)`` nearly equal consecutive blocks."""
    modules = compressible_modules(model)
    layers = max(cm.layer for cm in modules) + 1
    blocks = min(blocks, layers)
    bounds = [b * layers // blocks for b in range(blocks + 1)]
    groups: dict[str, list[str]] = {}
    for cm in modules:
        b = max(i for i in range(blocks) if bounds[i] <= cm.layer)
        groups.setdefault(f"{cm.component}@{bounds[b]}-{bounds[b + 1] - 1}", []).append(cm.name)
    return groups


def probe_key(model_dir: Path, data: DataConfig, settings: ProbeSettings) -> str:
    """Fingerprint of the warm start, the rows (every field of ``data``) and the probe settings."""
    digest = hashlib.sha256(profile_key(model_dir, data, 1, settings.batch_size).encode())
    payload = {"data": asdict(data) | {"data_dir": None, "eval_size": None}, "settings": asdict(settings), "version": PROBE_VERSION}
    digest.update(json.dumps(payload, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def run_probes(model_dir: str, data: dict, settings: dict, group: str, names: Sequence[str],
               options: Sequence[str], threads: int | None = None, device: str = "cpu") -> list[dict]:
    """Train and score every option of ``options`` on one group of modules (one worker's share),
    on ``device`` (``auto``: CUDA where this process sees a GPU)."""
    from ..models import load_model, load_tokenizer
    from ..trials.data import get_task, prepare_task_data
    from ..trials.loop import BatchStream, resolve_device, selection_metrics, set_seed, train_step

    if threads:
        torch.set_num_threads(threads)
    data_cfg, probe = DataConfig(**data), ProbeSettings(**settings)
    info = get_task(data_cfg.task)
    tokenizer = load_tokenizer(model_dir)
    dense = load_model(model_dir).to(resolve_device(device))
    glue = prepare_task_data(info, tokenizer, data_dir=data_cfg.data_dir, max_length=data_cfg.max_length,
                             train_size=data_cfg.train_size, eval_size=1, seed=data_cfg.seed,
                             holdout_size=data_cfg.holdout_size, selection_size=data_cfg.selection_size)
    if glue.selection is None:
        raise NxmiError("probes score on the selection rows: give the data a selection_size")
    base = selection_metrics(dense, glue, tokenizer)["selection_loss"]
    by_name = {cm.name: cm for cm in compressible_modules(dense)}
    rows = []
    for option in options:
        spec = LayerSpec.parse(option)
        loss = base
        if not spec.is_identity:
            set_seed(probe.seed)
            model = copy.deepcopy(dense).train()
            compress_(model, CompressionPlan({name: spec for name in names}))
            harden_(model)
            params = [p for p in model.parameters() if p.requires_grad]
            scales = {id(p) for p in scale_parameters(model)}
            optimizer = torch.optim.AdamW([
                {"params": [p for p in params if id(p) not in scales], "weight_decay": probe.weight_decay},
                {"params": [p for p in params if id(p) in scales], "weight_decay": 0.0}], lr=probe.lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / probe.steps))
            batches = BatchStream(glue.train, tokenizer, probe.batch_size, probe.seed).from_step(0)
            for _ in range(probe.steps):
                train_step(model, next(batches), optimizer, schedule, info.is_regression)
            loss = selection_metrics(model, glue, tokenizer)["selection_loss"]
        for name in names:
            cm = by_name[name]
            rows.append({"module": name, "layer": cm.layer, "component": cm.component, "option": option,
                         "group": group, "probe_loss": loss, "probe": (loss - base) / len(names)})
    return rows


def probe_sensitivity(model_dir: str | Path, data: DataConfig, options: Sequence[str],
                      settings: ProbeSettings = ProbeSettings(), cache_dir: str | Path | None = None,
                      workers: int = 0, progress: bool = True, device: str = "cpu",
                      gpus_per_task: float = 0.0) -> ProbeResult:
    """The ``probe`` proxy of ``model_dir`` (a fine-tuned checkpoint) for every module x option.

    ``data`` must hold out selection rows (``selection_size``) and name the rows the trials train
    on. ``workers`` > 1 runs the groups as Ray tasks (needs ``ray.init`` first), each reserving
    ``gpus_per_task`` GPUs; otherwise they run in this process, one after another. ``device`` as
    in :func:`~nxmiformer.search.profile.profile_sensitivity`.
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise NxmiError(f"model directory not found or incomplete: {model_dir}")
    if not data.selection_size:
        raise NxmiError("probes score on the selection rows: give the data a selection_size")
    menu = parse_menu(options)
    path = Path(cache_dir or default_cache_dir()) / "profiles" / f"{data.task}-probe-{probe_key(model_dir, data, settings)}.parquet"
    table = _read_cache(path, COLUMNS)
    groups = probe_groups(skeleton(model_dir), settings.blocks)
    have = set() if table is None else set(zip(table["module"], table["option"]))
    missing = [o for o in menu if any((name, o) not in have for names in groups.values() for name in names)]
    computed = 0
    if missing:
        args = (str(model_dir), asdict(data), asdict(settings))
        if workers and workers > 1:
            import ray

            task = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(run_probes)
            rows = _gather([task.remote(*args, group, names, missing, 1, device) for group, names in groups.items()],
                           progress, desc="probing")
        else:
            from tqdm.auto import tqdm

            rows = [row for group, names in tqdm(groups.items(), desc="probing", disable=not progress, leave=False)
                    for row in run_probes(*args, group, names, missing, device=device)]
        new = pd.DataFrame(rows, columns=COLUMNS)
        computed = sum(not LayerSpec.parse(o).is_identity for o in missing) * len(groups)
        table = new if table is None else pd.concat([table[~table["option"].isin(missing)], new], ignore_index=True)
        _write_atomic(table, path)
    selected = table[table["option"].isin(menu)].reset_index(drop=True)
    cached = len(selected) - (len(new) if missing else 0)
    return ProbeResult(selected, path, computed, cached, time.perf_counter() - start)
