"""`mmedge train compare`: a thin front end over train.recipes.compare."""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.cli import DefaultsFormatter
from train.cli.ablation import _int_list, _str_list


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="every registered method x seeds: per-pattern metric, sweep, Lee grid, latency, claims; docs/results.md",
        description=(
            "Train each METHOD (default: every registered one) with each SEED on the same frozen unimodal encoders "
            "and data subset, checkpoint chosen on every pattern's validation metric (--select patterns). Per run: "
            "per-pattern test metric, the missing-rate sweep, the Lee et al. eta=70% train x test grid, parameters, "
            "optimiser steps and training time. For the first seed of each method: an fp32 + int8 bundle, its size "
            "and per-pattern onnxruntime latency at batch 1. Writes runs/<dataset>/compare[-<pretrain task>]/"
            "results.json after every run (re-running resumes) and regenerates docs/results.md with the leaderboard, "
            "plots and one verdict per paper claim. --pretrain-task picks the unimodal pretraining regime."
        ),
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--dataset", default="av-digits", help="av-digits, easy-vqa, or a user-format directory")
    p.add_argument("--methods", type=_str_list, default=None, help="comma-separated methods (default: all registered)")
    p.add_argument("--seeds", type=_int_list, default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--pretrain-task", default="labels", choices=("labels", "coarse-parity", "coarse-mod3"),
                   help="what the unimodal encoders were (or are now) pretrained on; default dir "
                        "runs/<dataset>/unimodal[-<task>]")
    p.add_argument("--epochs", type=int, default=None, help="default: per dataset (reduced) or 10 (--full)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="default: 1 (reduced) or 5 (--full)")
    p.add_argument("--limit", type=int, default=None, help="cap per split (default: per dataset; all with --full)")
    p.add_argument("--batch-size", type=int, default=8, help="the CMPT paper's batch size")
    p.add_argument("--data-seed", type=int, default=0, help="draws the --limit subset; fixed across seeds")
    p.add_argument("--full", action="store_true", help="all data and the paper's epochs")
    p.add_argument("--select", default="patterns", choices=("patterns", "complete", "last"),
                   help="checkpoint selection: mean of every pattern's val metric, complete data only, or the last epoch")
    p.add_argument("--sweep-fractions", type=_int_list, default=None,
                   help="sweep percentages (default: 0..100 by 10; easy-vqa 0,50,100)")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the missing-rate sweep")
    p.add_argument("--no-lee", dest="lee", action="store_false", help="skip the Lee et al. grid (3 trainings a run)")
    p.add_argument("--eta", type=float, default=0.7, help="Lee et al. missing rate")
    p.add_argument("--no-export", dest="export", action="store_false", help="skip the bundles and latency")
    p.add_argument("--latency-runs", type=int, default=200, help="timed calls per graph (after 20 warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--note", default="", help="a sentence recorded in results.json and the report")
    p.add_argument("--out", type=Path, default=None, help="default: runs/<dataset>/compare[-full][-<pretrain task>]")
    p.add_argument("--unimodal-dir", type=Path, default=None, help="default: runs/<dataset>/unimodal[-<pretrain task>]")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default: $MMEDGE_DATA_DIR or ./data)")
    p.add_argument("--report", type=Path, default=Path("docs/results.md"), help="the generated Markdown")
    p.add_argument("--no-report", dest="report", action="store_const", const=None, help="results.json only")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from train.recipes.compare import CompareConfig, compare_dir, run_compare
    from train.reporting.claims import claim_line

    seeds = _int_list(args.seeds) if isinstance(args.seeds, str) else args.seeds
    cfg = CompareConfig(dataset=args.dataset, methods=args.methods or [], seeds=seeds, full=args.full,
                        epochs=args.epochs, warmup_epochs=args.warmup_epochs, limit=args.limit,
                        batch_size=args.batch_size, data_seed=args.data_seed, sweep=args.sweep,
                        sweep_fractions=args.sweep_fractions, out=args.out, unimodal_dir=args.unimodal_dir,
                        runs_dir=args.runs_dir, data_dir=args.data_dir, threads=args.threads, note=args.note,
                        select=args.select, pretrain_task=args.pretrain_task, lee=args.lee, eta=args.eta,
                        export=args.export, latency_runs=args.latency_runs, report=args.report)
    results = run_compare(cfg)
    from train.reporting.compare_report import leaderboard_table

    print(leaderboard_table(results))
    for v in results["claims"]:
        print(claim_line(v))
    print(f"results: {compare_dir(cfg) / 'results.json'}")
    if cfg.report is not None:
        print(f"report:  {cfg.report}")
    return 0
