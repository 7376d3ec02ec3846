"""`mmedge train eval`: per-pattern metrics and the papers' missing-modality protocols."""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.cli import DefaultsFormatter
from train.cli.common import add_data_args


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained run: per-pattern table, missing-rate sweep, Lee et al. train x test grid",
        description=(
            "Evaluate runs/<dataset>/<method> through its per-pattern branches (the modules export traces). "
            "patterns: every availability pattern on the test split. sweep: one modality at 100% and the other "
            "at x% = 0..100 (CMPT Fig. 2/3), JSON + PNG. lee: eta missing with missing-<m> / missing-both cases, "
            "one model trained per case (reused when already trained) and tested on every case (CMPT Table 6), "
            "JSON + PNG + Markdown. all: the three. Files go to <run>/eval unless --out."
        ),
        formatter_class=DefaultsFormatter,
    )
    add_data_args(p, seed_help="seed of the test-time availability masks",
                  limit_help="cap samples per split (default: the run's own cap, so its test set is the run's)")
    p.add_argument("--method", default="cmpt", help="registered method name of the run")
    p.add_argument("--run", type=Path, default=None, help="trained run dir (default: runs/<dataset>/<method>)")
    p.add_argument("--protocol", default="patterns",
                   help="patterns (no training), sweep (no training), lee (TRAINS one model per missing case "
                        "unless already trained) or all")
    p.add_argument("--eta", type=float, default=0.7, help="Lee et al. missing rate")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the Lee runs (default: the run's)")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: <run>/eval)")
    p.add_argument("--unimodal-dir", type=Path, default=None, help="pretrained encoders for the Lee runs")
    p.set_defaults(func=run_eval_command)


def run_eval_command(args: argparse.Namespace) -> int:
    from train.recipes.protocols import EvalConfig, format_grid, format_sweep, run_eval
    from train.reporting.tables import pattern_table

    cfg = EvalConfig(method=args.method, dataset=args.dataset, run=args.run, protocol=args.protocol, eta=args.eta,
                     seed=args.seed, limit=args.limit, epochs=args.epochs, out=args.out, runs_dir=args.runs_dir,
                     unimodal_dir=args.unimodal_dir, data_dir=args.data_dir)
    result = run_eval(cfg)
    if "patterns" in result:
        print(f"{result['patterns']['dataset']} / {cfg.method}: test metrics per available-modality pattern")
        print(pattern_table(result["patterns"]["by_pattern"]))
    if "sweep" in result:
        print("\nmissing-rate sweep (one modality at 100%, the other at x%):")
        print(format_sweep(result["sweep"]))
    if "lee" in result:
        lee = result["lee"]
        reused = [c for c in lee["cases"] if c not in lee["trained"]]
        print(f"\nLee et al. grid (rows: train case, columns: test case); trained {lee['trained'] or 'none'}, "
              f"reused {reused or 'none'}:")
        print(format_grid(lee))
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result["wall_time_s"].items())
    print(f"\nwall time: {times}")
    print(f"wrote {len(result['files'])} files to {result['out']}:")
    for path in result["files"]:
        print(f"  {path}")
    return 0
