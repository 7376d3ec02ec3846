"""`mmedge bench`: latency benchmarks (the runtime issue fills this in)."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="mmedge bench",
        description=(
            "Latency per availability pattern, precision and provider for an exported bundle: "
            "p50/p90/p99, throughput, session creation time and peak RSS. "
            "Not implemented yet: it arrives with the runtime issue."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("mmedge bench: not implemented yet (needs an exported bundle; see the runtime issue).")
    return 2
