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


# The 11 options the README's profile-cache and scale figures were measured on: the fixed menu that
# nxmi search offered as `--menu classic` until 9002db8 (the product's menus are now `fine` and
# `kernel`). Kept here so those benchmarks measure what they reported; `--options` overrides it.
MENU_11 = ("dense", "dense:int8", "dense:int4", "2:4:fp16", "2:4:int8", "2:4:int4",
           "4:8:int8", "4:8:int4", "1:4:int8", "2:8:int8", "1:4:int4")


def option_menu(value: str) -> tuple[str, ...]:
    """argparse type of ``--options``: comma-separated option strings, canonical (an unknown one is refused)."""
    from nxmiformer.errors import NxmiError
    from nxmiformer.search import parse_menu

    try:
        return parse_menu(value)
    except NxmiError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
