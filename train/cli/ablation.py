"""`mmedge train ablation` and `mmedge train report`: thin front ends over train.recipes.ablation / train.reporting.report."""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.cli import DefaultsFormatter


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2; got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_ablation_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablation",
        help="the CMPT paper's ablation: baseline vs modality dropout vs CMPT, several seeds, mean ± sd",
        description=(
            "Train each METHOD with each SEED on the same frozen unimodal encoders and the same data subset "
            "(pretraining the encoders first if runs/<dataset>/unimodal lacks them), score every availability "
            "pattern and the missing-rate sweep, and write runs/<dataset>/ablation/results.json with per-run "
            "numbers, mean ± sd, and whether the paper's claims hold. Finished runs are reused. Defaults are "
            "reduced to run on a 2-core CPU (av-digits: all data, 5 epochs; easy-vqa: 1000 samples per split, "
            "3 epochs); --full uses all data and the paper's 10 epochs."
        ),
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--dataset", default="av-digits", help="av-digits, easy-vqa, or a user-format directory")
    p.add_argument("--methods", type=_str_list, default="late-fusion,modality-dropout,cmpt",
                   help="comma-separated registered methods")
    p.add_argument("--seeds", type=_int_list, default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--epochs", type=int, default=None, help="default: per dataset (reduced) or 10 (--full)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="default: 1 (reduced) or 5 (--full)")
    p.add_argument("--limit", type=int, default=None, help="cap per split (default: per dataset; all with --full)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-seed", type=int, default=0, help="draws the --limit subset; fixed across seeds")
    p.add_argument("--full", action="store_true", help="all data and the paper's epochs")
    p.add_argument("--sweep-fractions", type=_int_list, default=None,
                   help="sweep percentages, e.g. 0,25,50,75,100 (default: 0..100 by 10; easy-vqa 0,50,100)")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="per-pattern numbers only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--note", default="", help="a sentence recorded in results.json and the report")
    p.add_argument("--out", type=Path, default=None, help="default: runs/<dataset>/ablation")
    p.add_argument("--unimodal-dir", type=Path, default=None, help="default: runs/<dataset>/unimodal")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default: $MMEDGE_DATA_DIR or ./data)")
    p.set_defaults(func=_run_ablation)

    r = sub.add_parser(
        "report",
        help="generate docs/results.md from every runs/<dataset>/{compare,ablation}*/results.json",
        description="Render the comparison and ablation results (leaderboards, plots, verdicts, parameters, wall "
                    "times) as Markdown. With --record, each results.json found is first copied into the record "
                    "(replacing that dataset's regime, keeping the others) and the report is rendered from the "
                    "record: the repository keeps its record in docs/results-data, so `mmedge train report "
                    "--runs-dir docs/results-data` regenerates docs/results.md on a clean checkout.",
        formatter_class=DefaultsFormatter,
    )
    r.add_argument("--runs-dir", type=Path, default=Path("runs"))
    r.add_argument("--out", type=Path, default=Path("docs/results.md"))
    r.add_argument("--record", type=Path, default=None,
                   help="keep each results.json in this folder and render from it (e.g. docs/results-data)")
    r.set_defaults(func=_run_report)


def _run_ablation(args: argparse.Namespace) -> int:
    from train.recipes.ablation import AblationConfig, ablation_dir, run_ablation

    methods = _str_list(args.methods) if isinstance(args.methods, str) else args.methods
    seeds = _int_list(args.seeds) if isinstance(args.seeds, str) else args.seeds
    cfg = AblationConfig(dataset=args.dataset, methods=methods, seeds=seeds, full=args.full, epochs=args.epochs,
                         warmup_epochs=args.warmup_epochs, limit=args.limit, batch_size=args.batch_size,
                         data_seed=args.data_seed, sweep=args.sweep, sweep_fractions=args.sweep_fractions,
                         out=args.out, unimodal_dir=args.unimodal_dir,
                         runs_dir=args.runs_dir, data_dir=args.data_dir, threads=args.threads, note=args.note)
    results = run_ablation(cfg)
    from train.reporting.report import dataset_table, verdict_lines

    print(dataset_table(results))
    for line in verdict_lines(results):
        print(line)
    print(f"results: {ablation_dir(cfg) / 'results.json'}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from train.reporting.report import write_report

    path = write_report(args.runs_dir, args.out, record=args.record)
    print(f"report written to {path}")
    return 0
