"""`mmedge train` / `python -m train`: thin argparse front ends over library functions."""
from __future__ import annotations

import argparse
import sys

from runtime.cli import is_missing_dependency, missing_extra_message
from runtime.cli_errors import EPILOG, EXIT_REFUSED, refusal
from runtime.errors import MMEdgeError
from train.cli.ablation import add_ablation_parsers
from train.cli.compare import add_compare_parser
from train.cli.eval import add_eval_parser
from train.cli.train import add_run_parser, add_unimodal_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmedge train",
        description="Pretrain unimodal encoders and train missing-modality methods.", epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    add_unimodal_parser(sub)
    add_run_parser(sub)
    add_eval_parser(sub)
    add_ablation_parsers(sub)
    add_compare_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ModuleNotFoundError as err:
        # A runtime-only install (mmedge[cpu]) has no torch: say what to install, not a traceback.
        if not is_missing_dependency(err):
            raise
        print(missing_extra_message(f"mmedge train {args.command}", err, "train"), file=sys.stderr)
        return 2
    except MMEdgeError as err:
        # A typed refusal (bad input, missing run, data format) gets one clear line; any other
        # exception is a bug and keeps its traceback (runtime/cli_errors.py).
        print(refusal(f"mmedge train {args.command}", err), file=sys.stderr)
        return EXIT_REFUSED
