"""`mmedge demo`: the end-to-end job that the README's first command runs.

Today: fetch av-digits, pretrain the image and audio encoders, print each
modality's test accuracy. Later issues extend it with CMPT training, export
and the streaming runtime.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DATASET = "av-digits"
MODALITIES = ("image", "audio")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmedge demo",
        description="End to end on av-digits: fetch the data, pretrain the unimodal encoders, report test accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are written")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default: $MMEDGE_DATA_DIR or ./data)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per unimodal encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny encoders, 3 epochs, 200 samples per split (smoke run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from train.unimodal import UnimodalConfig, default_out, pretrain_unimodal

    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    rows = []
    for i, modality in enumerate(MODALITIES, 1):
        print(f"[{i}/{len(MODALITIES)}] pretraining the {modality} encoder on {DATASET} ...", flush=True)
        cfg = UnimodalConfig(
            dataset=DATASET, modality=modality, runs_dir=args.runs_dir, data_dir=args.data_dir, seed=args.seed,
            epochs=3 if args.quick else args.epochs, size="tiny" if args.quick else "small",
            limit=200 if args.quick else None,
        )
        m = pretrain_unimodal(cfg)
        rows.append((modality, m["test"]["accuracy"], m["num_samples"]["test"], m["train_wall_time_s"],
                     m["encoder_parameters"], default_out(cfg)))
    print(f"\n{DATASET}: unimodal encoders, test accuracy")
    print(f"{'modality':<10}{'accuracy':>10}{'test n':>8}{'train s':>9}{'params':>10}  saved to")
    for modality, acc, n, wall, params, out in rows:
        print(f"{modality:<10}{acc:>10.4f}{n:>8}{wall:>9.0f}{params:>10,}  {out}")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0
