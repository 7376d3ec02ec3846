"""`mmedge export` / `python -m export`: per-pattern ONNX export (the export issue fills this in)."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmedge export",
        description="Export one ONNX graph per modality-availability pattern into a deployable bundle.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    build = sub.add_parser(
        "build",
        help="export a trained run to a bundle (not implemented yet)",
        description="Export a trained run: one graph per pattern at fp32/fp16/int8. Arrives with the export issue.",
    )
    build.add_argument("--method", default="cmpt")
    build.add_argument("--precision", default="fp32", help="fp32, fp16, int8, or a comma list")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    print("mmedge export build: not implemented yet (see the export issue).", file=sys.stderr)
    return 2
