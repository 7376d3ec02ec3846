"""`mmedge calibrate`: FP16 / INT8 calibration (the export issue fills this in)."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="mmedge calibrate",
        description=(
            "FP16 mixed-precision search and INT8 static quantization of exported graphs, "
            "with calibration reports. Not implemented yet: it arrives with the export issue."
        ),
    ).parse_args(argv)
    print("mmedge calibrate: not implemented yet (see the export issue).")
    return 2
