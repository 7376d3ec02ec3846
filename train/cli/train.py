"""`mmedge train unimodal` and `mmedge train run`."""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.cli import DefaultsFormatter
from train.cli.common import add_data_args, methods_help, parse_options
from train.cli.encoder_flag import ENCODER_HELP, parse_encoder_flags, unimodal_encoder


class _HelpFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every help line, and the method list in the epilog kept as written."""


def add_unimodal_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "unimodal",
        help="pretrain one modality's encoder with a linear head",
        description=(
            "Pretrain one encoder with a linear head on the samples that have MODALITY. Saves the encoder in "
            "Hugging Face format (safetensors), the head (head.safetensors) and metrics.json; the multimodal "
            "methods start from them. Seeded; re-running resumes from the last checkpoint. Several processes: "
            "prefix with `accelerate launch -m train` (GPUs) or `ACCELERATE_USE_CPU=true torchrun "
            "--nproc_per_node 2 -m train` (CPU)."
        ),
        formatter_class=DefaultsFormatter,
    )
    add_data_args(p)
    p.add_argument("--modality", required=True, help="modality name in the dataset, e.g. image, audio, question")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: runs/<dataset>/unimodal/<modality>)")
    p.add_argument("--encoder", default=None,
                   help="HF hub id or local dir to start from, as SOURCE or MODALITY=SOURCE (default: packaged MiniLM "
                        "for text, scratch otherwise); its preprocessor_config.json / tokenizer.json set the "
                        "preprocessing")
    p.add_argument("--size", choices=("tiny", "small", "base"), default="small", help="scratch encoder size")
    p.add_argument("--hidden-size", type=int, default=None, help="scratch encoder width (default: per size)")
    p.add_argument("--patch-size", type=int, default=None, help="image encoder patch (default: derived from the image)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3 scratch, 5e-5 pretrained)")
    p.add_argument("--min-steps", type=int, default=300,
                   help="lengthen a run that would make fewer optimiser steps (small data sets); 0 keeps --epochs")
    p.add_argument("--pretrain-task", default="labels", choices=("labels", "coarse-parity", "coarse-mod3"),
                   help="what the head learns: the dataset's labels, or (av-digits) digit parity / digit mod 3, "
                        "so that the multimodal methods trained on these frozen encoders have headroom")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    p.set_defaults(func=_run_unimodal)


def _run_unimodal(args: argparse.Namespace) -> int:
    from train.engine.distributed import process_state

    from train.recipes.unimodal import UnimodalConfig, pretrain_unimodal, unimodal_run_dir

    cfg = UnimodalConfig(dataset=args.dataset, modality=args.modality, out=args.out,
                         encoder=unimodal_encoder(args.encoder, args.modality),
                         size=args.size, hidden_size=args.hidden_size, patch_size=args.patch_size, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit=args.limit,
                         data_dir=args.data_dir, runs_dir=args.runs_dir, resume=args.resume, min_steps=args.min_steps,
                         pretrain_task=args.pretrain_task)
    metrics = pretrain_unimodal(cfg)
    if process_state().is_main_process:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items())
        print(f"{metrics['dataset']} / {metrics['modality']}: test {scores} "
              f"(best epoch {metrics['best_epoch'] + 1}/{metrics['epochs']}, {metrics['train_wall_time_s']:.0f} s)")
        print(f"encoder saved to {(cfg.out or unimodal_run_dir(cfg)) / 'encoder'}")
    return 0


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    from train.engine.validation import SELECTIONS

    p = sub.add_parser(
        "run",
        help="train a registered missing-modality method on the pretrained unimodal encoders",
        description=(
            "Train METHOD on DATASET starting from what `mmedge train unimodal` saved under "
            "runs/<dataset>/unimodal/<modality>/, then score every availability pattern on the test split "
            "through that pattern's own branch (the module export traces). Saves model.safetensors, config.json "
            "and metrics.json under runs/<dataset>/<method>/. Seeded; re-running resumes from the last checkpoint. "
            "Several processes: prefix with `accelerate launch -m train` (GPUs) or "
            "`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m train` (CPU)."
        ),
        epilog="registered methods and their --set options:\n" + methods_help(),
        formatter_class=_HelpFormatter,
    )
    add_data_args(p)
    p.add_argument("--method", default="cmpt", help="registered method name (listed below)")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: runs/<dataset>/<method>)")
    p.add_argument("--unimodal-dir", type=Path, default=None,
                   help="pretrained encoders, one <modality>/encoder each (default: runs/<dataset>/unimodal)")
    p.add_argument("--encoder", dest="encoders", action="append", default=[], metavar="MODALITY=DIR_OR_HUB_ID",
                   help=ENCODER_HELP + "; replaces --unimodal-dir for that modality")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (each method's options are listed below)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (the CMPT paper's image-text setting)")
    p.add_argument("--warmup-epochs", type=float, default=5,
                   help="epochs at 0.1x lr before the poly(0.9) decay; kept as a share of the run when --min-steps "
                        "lengthens it, and it must be shorter than the run")
    p.add_argument("--min-steps", type=int, default=300,
                   help="lengthen a run that would make fewer optimiser steps (small data sets); 0 keeps --epochs")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (per process)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, wd 0.02, eps 1e-8)")
    p.add_argument("--select", choices=SELECTIONS, default="patterns",
                   help="the kept epoch: best mean validation metric over every availability pattern (patterns), "
                        "best with the validation samples as given (complete), or the last epoch (last)")
    p.add_argument("--data-seed", type=int, default=None,
                   help="draws the --limit subset (default: --seed); fix it to compare training seeds on one subset, "
                        "as `train compare` does")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    p.set_defaults(func=_run_method)


def _run_method(args: argparse.Namespace) -> int:
    from train.engine.distributed import process_state

    from train.recipes.method import TrainConfig, method_run_dir, train_method
    from train.reporting.tables import pattern_table

    cfg = TrainConfig(method=args.method, dataset=args.dataset, method_config=parse_options(args.options),
                      out=args.out, unimodal_dir=args.unimodal_dir, encoders=parse_encoder_flags(args.encoders),
                      epochs=args.epochs,
                      warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      limit=args.limit, data_dir=args.data_dir, runs_dir=args.runs_dir, resume=args.resume,
                      select=args.select, min_steps=args.min_steps, data_seed=args.data_seed)
    metrics = train_method(cfg)
    if not process_state().is_main_process:
        return 0
    print(f"{metrics['dataset']} / {metrics['method']}: test metrics per available-modality pattern")
    print(pattern_table(metrics["test_by_pattern"]))
    params = metrics["parameters"]
    print(f"learnable {params['learnable']:,} of {params['total']:,} parameters; "
          f"train {metrics['train_wall_time_s']:.0f} s (kept epoch {metrics['best_epoch'] + 1}/{metrics['epochs']}, "
          f"--select {metrics['select']}, {metrics['optimizer_steps']['total']} steps per process)")
    print(f"saved to {cfg.out or method_run_dir(cfg)}")
    return 0
