"""Output directories that are either complete or absent: used by the CLI and the packed export."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import NxmiError


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
