"""Shared by the bench scripts: the repository root on sys.path and the GLUE data directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def glue_dir(value: str) -> str:
    """argparse type of ``--data-dir``: an existing directory of ``<task>/<split>.parquet``."""
    if not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"GLUE data not found at {value}; pass --data-dir")
    return str(Path(value).resolve())


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=glue_dir, default=str(ROOT.parent / "shared" / "data" / "glue"),
                        help="GLUE parquet directory (default: ../shared/data/glue)")
