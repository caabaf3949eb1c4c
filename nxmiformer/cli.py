"""The ``nxmi`` command. Thin: parses arguments and calls the library.

Every user error becomes one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import NxmiError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# helpers


@contextmanager
def atomic_output_dir(out: str | os.PathLike):
    """Yield a temporary directory beside ``out``; move it to ``out`` only if the block succeeds,
    so an error or an interrupt never leaves a half-written result."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NxmiError(f"output directory {out} already exists and is not empty; choose another --out")
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


# ---------------------------------------------------------------------------------------------
# parser


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
