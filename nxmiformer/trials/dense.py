"""The dense warm start: a task fine-tune of the uncompressed model, cached on disk.

Every compression trial starts from it and its metric is the baseline of "retention". The cache
key is made of the model's weight fingerprint, the data config and the hyper-parameters, so a
second call with the same inputs returns the checkpoint at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import NxmiError
from ..models import load_model, load_tokenizer, model_fingerprint, resolve_model_path
from ..outputs import hash_files
from .config import DataConfig, DenseConfig, default_cache_dir
from .data import prepare_task_data
from .loop import BatchStream, evaluate, predict, resolve_device, selection_metrics, set_seed, train_step

DENSE_CODE_VERSION = 1
EVALS_PER_EPOCH = 4  # selection-loss checks per epoch of an early-stopped warm start


@dataclass(frozen=True)
class DenseResult:
    """A cached dense checkpoint (``save_pretrained`` directory with its tokenizer)."""

    path: Path
    metrics: dict
    primary: float
    key: str
    cached: bool
    wall_time: float
    model_fingerprint: str = ""  # of the base model it was fine-tuned from ("" in older caches)

    @classmethod
    def load(cls, path: str | Path) -> "DenseResult":
        """Read a finished warm start from its directory."""
        path = Path(path)
        meta_file = path / "dense.json"
        if not meta_file.is_file():
            raise NxmiError(f"no dense warm start at {path} (dense.json missing)")
        meta = json.loads(meta_file.read_text())
        return cls(path, meta["metrics"], meta["metrics"]["primary"], meta.get("key", ""), True, 0.0,
                   meta.get("model_fingerprint", ""))


class _EarlyStop:
    """Every ``every`` steps, the selection loss; done after ``patience`` checks without a new
    best (``patience=0``: never), remembering the best weights and step."""

    def __init__(self, patience: int, every: int):
        self.patience, self.every = patience, every
        self.best, self.best_step, self.best_state, self.since = math.inf, 0, None, 0

    def done(self, step: int, measure, model) -> bool:
        if not self.patience or step % self.every:
            return False
        loss = measure()["selection_loss"]
        if loss < self.best:
            self.best, self.best_step, self.since = loss, step, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since += 1
        return self.since >= self.patience


def selection_reference(dense: DenseResult, data: DataConfig, glue, tokenizer, model=None):
    """The dense warm start's logits on the selection rows of ``data`` (None without them),
    computed once and cached beside the warm start; ``model`` saves loading it again."""
    import numpy as np

    from ..outputs import atomic_file

    if glue.selection is None:
        return None
    rows = {k: v for k, v in dataclasses.asdict(data).items() if k not in ("train_size", "eval_size")}
    path = dense.path / f"selection-{hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    logits, _ = predict(model if model is not None else load_model(str(dense.path)), glue.selection, tokenizer)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, logits)
    return logits


# fields whose default leaves a key as it was before they existed: cached warm starts stay valid
_NEW_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)
                       if f.name in ("train_file", "validation_file", "dataset", "train_split", "validation_split",
                                     "text_columns", "label_column", "metric")} | {"precision": "fp32", "finetuned": False}


def data_fingerprint(data: DataConfig) -> dict:
    """What identifies a run's data in a cache key: the config's fields (those a GLUE preset
    leaves at their defaults left out) and, for a user's files, their contents' hash."""
    fields = {k: v for k, v in dataclasses.asdict(data).items() if _NEW_FIELD_DEFAULTS.get(k, object()) != v}
    fields["data_dir"] = str(Path(data.data_dir).resolve()) if data.data_dir else None
    files = [f for f in (data.train_file, data.validation_file) if f]
    if files:
        digest = hashlib.sha256()
        hash_files(files, digest)
        fields["files_sha256"] = digest.hexdigest()
    return fields


def dense_cache_key(fingerprint: str, data: DataConfig, dense: DenseConfig) -> str:
    payload = {
        "model": fingerprint,
        "data": data_fingerprint(data),
        "dense": {k: v for k, v in dataclasses.asdict(dense).items()
                  if k not in ("model", "device") and _NEW_FIELD_DEFAULTS.get(k, object()) != v},
        "version": DENSE_CODE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def check_head(config, info, name: str) -> None:
    """A trained classifier (its ``config``) must fit the task: as many outputs as the task has
    labels (1 for a regression) and, where the config names them (not ``LABEL_i``), the task's
    label names in the same order."""
    if config.num_labels != info.num_labels:
        what = "a regression score" if info.is_regression else ", ".join(info.label_names or ()) or "class ids"
        raise NxmiError(f"model {name} has {config.num_labels} outputs; task {info.name} needs {info.num_labels} "
                        f"({what})")
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    if info.label_names is not None and not generic and tuple(names) != info.label_names:
        raise NxmiError(f"model {name} labels its outputs {names}; the data's labels are {list(info.label_names)} "
                        f"(class id i is the i-th, sorted)")


def finetune_dense(
    data: DataConfig,
    dense: DenseConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> DenseResult:
    """Fine-tune ``dense.model`` on ``data.task`` (or return the cached result).

    With ``dense.finetuned`` the model is taken as it is (:func:`check_head`), only evaluated:
    the reference of every retention figure is its own metric. A user's class names go into the
    saved config (``id2label``), so every model made from the warm start prints them."""
    dense = dense or DenseConfig()
    info = data.task_info
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    model_path = resolve_model_path(dense.model)
    # seed before loading: a checkpoint without a task head gets a freshly initialised classifier,
    # which must be the same in every process for the cache key and the warm start to repeat
    set_seed(data.seed)
    if dense.finetuned:
        model = load_model(model_path)
        check_head(model.config, info, dense.model)
    else:
        model = load_model(model_path, num_labels=info.num_labels, ignore_mismatched_sizes=True)
    if info.id2label is not None:
        model.config.id2label = info.id2label
        model.config.label2id = {label: i for i, label in info.id2label.items()}
    fingerprint = model_fingerprint(model)
    key = dense_cache_key(fingerprint, data, dense)
    target = cache_root / "dense" / f"{data.task}-{key}"
    if (target / "dense.json").is_file():
        return DenseResult.load(target)

    start = time.perf_counter()
    set_seed(data.seed)
    tokenizer = load_tokenizer(model_path)
    glue = prepare_task_data(info, tokenizer, data_dir=data.data_dir, max_length=data.max_length,
                             train_size=data.train_size, eval_size=data.eval_size, seed=data.seed,
                             holdout_size=data.holdout_size, selection_size=data.selection_size)
    stream = BatchStream(glue.train, tokenizer, dense.batch_size, data.seed)
    if dense.finetuned:
        steps = 0
    else:
        steps = dense.steps if dense.steps is not None else max(1, math.ceil(dense.epochs * stream.per_epoch))
    device = resolve_device(dense.device)
    model.to(device)
    if steps > 0:
        from transformers import get_linear_schedule_with_warmup

        optimizer = torch.optim.AdamW(model.parameters(), lr=dense.lr, weight_decay=dense.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, int(dense.warmup_ratio * steps), steps)
        model.train()
        bar = tqdm(total=steps, desc=f"dense fine-tune {data.task}", disable=not progress, leave=False)
        stop = _EarlyStop(dense.patience, max(1, stream.per_epoch // EVALS_PER_EPOCH)) if glue.selection else None
        for step, batch in enumerate(stream.from_step(0), start=1):
            loss = train_step(model, batch, optimizer, schedule, info.is_regression, precision=dense.precision)
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")
            if step >= steps or (stop and stop.done(step, lambda: selection_metrics(model, glue, tokenizer), model)):
                break
        bar.close()
        if stop and stop.best_state is not None:
            model.load_state_dict(stop.best_state)
            steps = stop.best_step
    metrics = evaluate(model, glue, tokenizer) | selection_metrics(model, glue, tokenizer)
    wall = time.perf_counter() - start

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.cpu().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"metrics": metrics, "steps": steps, "wall_time": wall, "key": key, "source_model": dense.model,
                "model_fingerprint": fingerprint,
                "data": dataclasses.asdict(data), "dense": dataclasses.asdict(dense)}
        (tmp / "dense.json").write_text(json.dumps(meta, indent=2))
        if target.exists() and not (target / "dense.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # debris of a killed run
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same warm start first: use theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DenseResult(target, metrics, metrics["primary"], key, False, wall, fingerprint)
