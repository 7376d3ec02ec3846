"""`mmedge train` / `python -m train`: thin argparse front ends over library functions."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.cli import DefaultsFormatter, is_missing_dependency, missing_extra_message
from train.cli_ablation import add_ablation_parsers
from train.cli_eval import add_eval_parser


def _add_unimodal(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "unimodal",
        help="pretrain one modality's encoder with a linear head",
        description=(
            "Pretrain one encoder with a linear head on the samples that have MODALITY. Saves the encoder in "
            "Hugging Face format (safetensors) plus metrics.json; the multimodal methods later freeze it. "
            "Seeded; re-running resumes from the last checkpoint. Multi-GPU: prefix with `accelerate launch -m train`."
        ),
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--dataset", default="av-digits", help="av-digits, easy-vqa, or a user-format directory")
    p.add_argument("--modality", required=True, help="modality name in the dataset, e.g. image, audio, question")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: runs/<dataset>/unimodal/<modality>)")
    p.add_argument("--encoder", default=None,
                   help="HF hub id or local dir to start from (default: packaged MiniLM for text, scratch otherwise)")
    p.add_argument("--size", choices=("tiny", "small", "base"), default="small", help="scratch encoder size")
    p.add_argument("--hidden-size", type=int, default=None, help="scratch encoder width (default: per size)")
    p.add_argument("--patch-size", type=int, default=None, help="image encoder patch (default: derived from the image)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3 scratch, 5e-5 pretrained)")
    p.add_argument("--seed", type=int, default=0, help="seeds data order, init and dropout")
    p.add_argument("--limit", type=int, default=None, help="cap samples per split (quick runs)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default: $MMEDGE_DATA_DIR or ./data)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    p.set_defaults(func=_run_unimodal)


def _run_unimodal(args: argparse.Namespace) -> int:
    from train.unimodal import UnimodalConfig, default_out, pretrain_unimodal

    cfg = UnimodalConfig(dataset=args.dataset, modality=args.modality, out=args.out, encoder=args.encoder,
                         size=args.size, hidden_size=args.hidden_size, patch_size=args.patch_size, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit=args.limit,
                         data_dir=args.data_dir, resume=args.resume)
    metrics = pretrain_unimodal(cfg)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items())
    print(f"{metrics['dataset']} / {metrics['modality']}: test {scores} "
          f"(best epoch {metrics['best_epoch'] + 1}/{metrics['epochs']}, {metrics['train_wall_time_s']:.0f} s)")
    print(f"encoder saved to {(cfg.out or default_out(cfg)) / 'encoder'}")
    return 0


def _parse_options(items: list[str]) -> dict[str, object]:
    """--set KEY=VALUE pairs; values are JSON when they parse (0.2, true, "x"), else strings."""
    import json

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="train a missing-modality method (cmpt, late-fusion, modality-dropout) on frozen unimodal encoders",
        description=(
            "Train METHOD on DATASET starting from the encoders that `mmedge train unimodal` saved under "
            "runs/<dataset>/unimodal/<modality>/encoder, then score every availability pattern on the test split "
            "through that pattern's own branch (the module export traces). Saves model.safetensors, config.json "
            "and metrics.json under runs/<dataset>/<method>/. Seeded; re-running resumes from the last checkpoint."
        ),
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--method", default="cmpt", help="registered method name (cmpt, late-fusion, modality-dropout)")
    p.add_argument("--dataset", default="av-digits", help="av-digits, easy-vqa, or a user-format directory")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: runs/<dataset>/<method>)")
    p.add_argument("--unimodal-dir", type=Path, default=None,
                   help="pretrained encoders, one <modality>/encoder each (default: runs/<dataset>/unimodal)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (cmpt: lora_rank, lora_alpha, lora_dropout, align_weight, "
                        "modality_dropout, detach_align_target, proxy_init_std)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (the paper's image-text setting)")
    p.add_argument("--warmup-epochs", type=int, default=5, help="epochs at 0.1x lr before the poly(0.9) decay")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, wd 0.02, eps 1e-8)")
    p.add_argument("--seed", type=int, default=0, help="seeds data order, init and dropout")
    p.add_argument("--limit", type=int, default=None, help="cap samples per split (quick runs)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default: $MMEDGE_DATA_DIR or ./data)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    p.set_defaults(func=_run_method)


def _run_method(args: argparse.Namespace) -> int:
    from train.multimodal import TrainConfig, default_out, train_method

    cfg = TrainConfig(method=args.method, dataset=args.dataset, method_config=_parse_options(args.options),
                      out=args.out, unimodal_dir=args.unimodal_dir, epochs=args.epochs,
                      warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      limit=args.limit, data_dir=args.data_dir, resume=args.resume)
    metrics = train_method(cfg)
    from train.tables import pattern_table

    print(f"{metrics['dataset']} / {metrics['method']}: test metrics per available-modality pattern")
    print(pattern_table(metrics["test_by_pattern"]))
    params = metrics["parameters"]
    print(f"learnable {params['learnable']:,} of {params['total']:,} parameters; "
          f"train {metrics['train_wall_time_s']:.0f} s (best epoch {metrics['best_epoch'] + 1}/{metrics['epochs']})")
    print(f"saved to {cfg.out or default_out(cfg)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmedge train",
        description="Pretrain unimodal encoders and train missing-modality methods.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_unimodal(sub)
    _add_run(sub)
    add_eval_parser(sub)
    add_ablation_parsers(sub)
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
    except (ValueError, FileNotFoundError) as err:
        # Bad input gets one clear line, not a traceback.
        print(f"mmedge train {args.command}: error: {err}", file=sys.stderr)
        return 2
