"""Outputs that are either complete or absent (directories and single files), reading the JSON
files they hold, and holding back a library's log lines: used by the CLI, the search, analysis
and the packed export."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager
from pathlib import Path

from .errors import NxmiError

# the task record a model directory keeps (nxmi finetune/train/onnx), so nxmi evaluate needs no data flags
TASK_FILE = "task.json"
# the fields of a task (DataConfig's of the same names, and the CLI's task flags): a GLUE name, or a user's data
TASK_FIELDS = ("task", "data_dir", "train_file", "validation_file", "dataset", "train_split", "validation_split",
               "text_columns", "label_column", "metric")


def hash_files(paths, digest) -> None:
    """Feed each file's name and contents, in name order, to ``digest`` (a ``hashlib`` object):
    what a cache key knows of the files it depends on."""
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)


def task_record(data) -> dict:
    """What a saved model or plan keeps of its task (a ``DataConfig``), so later commands need no
    data flags: the task's fields, the truncation length, and its description (label names,
    metric, columns)."""
    values = {name: getattr(data, name) for name in (*TASK_FIELDS, "max_length")}
    values["text_columns"] = list(data.text_columns) if data.text_columns else None
    return values | {"task_info": data.task_info.to_dict()}


@contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Set the logger ``name`` to ``level`` for the duration (e.g. to hold back a library's
    warnings or INFO lines), then restore its own."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def require_free_output(out: str | os.PathLike) -> Path:
    """``out`` as a Path; an error if it exists and is not an empty directory. Call it before
    long work so a bad output path fails at once."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NxmiError(f"output directory {out} already exists and is not empty; choose another --out")
    return out


@contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; move it to ``out`` only if the block succeeds,
    so an error or an interrupt never leaves a half-written result."""
    out = require_free_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; it replaces ``path`` only if the block
    succeeds, so a reader (another trial, a resumed search) never sees half a file."""
    path = Path(path)
    # a name of its own: two processes writing the same file (two trials caching the same dense
    # logits) must not move each other's temporary file away
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """``data`` as a JSON file, atomically (see :func:`atomic_file`); returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike, missing: str) -> dict:
    """The JSON object in ``path``; ``missing`` is the error when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise NxmiError(missing)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NxmiError(f"malformed {path}: {exc}") from None
    if not isinstance(data, dict):
        raise NxmiError(f"malformed {path}: expected a JSON object, got {type(data).__name__}")
    return data
