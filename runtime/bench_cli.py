"""`mmedge bench`: latency per pattern, precision and provider of a bundle, with the issue-5 ratios."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from runtime.cli import DefaultsFormatter
from runtime.cli_errors import EPILOG, EXIT_REFUSED, refusal


def _csv(cast: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(cast(t.strip()) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list, got {text!r}") from None
    return parse


def _length(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected MODALITY=N with N >= 1, got {text!r}")
    return name.strip(), int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmedge bench", formatter_class=DefaultsFormatter, epilog=EPILOG,
        description="Latency per availability pattern, precision and provider of an exported bundle: p50/p90/p99, "
                    "throughput, session creation time and peak RSS, plus placeholder_speedup (single-modality graph vs the full "
                    "graph with placeholders), runtime_overhead, torch_speedup (onnxruntime vs eager PyTorch; needs --run "
                    "and the training extras), precision_speedup (FP16/INT8 vs FP32), and the cold start. Writes bench.json, "
                    "bench.md and bench.png. Inputs are deterministic synthetic samples of valid shape.")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (holds manifest.json)")
    p.add_argument("--runs", type=int, default=200, help="timed runs per cell")
    p.add_argument("--warmup", type=int, default=20, help="untimed warm-up runs per cell")
    p.add_argument("--batch-sizes", type=_csv(int), default="1,8,32", metavar="B,B,..",
                   help="comma list; 1 is always included")
    p.add_argument("--precisions", type=_csv(str), default=None, metavar="P,P,..",
                   help="comma list of fp32, fp16, int8 (default: all in the bundle)")
    p.add_argument("--providers", type=_csv(str), default=None, metavar="NAME,..",
                   help="comma list of targets of the registered runners (onnxruntime: cpu, cuda, tensorrt-ep; "
                        "native TensorRT: tensorrt); default: all; unavailable ones are skipped with a reason")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (and torch's, for torch_speedup)")
    p.add_argument("--run", type=Path, default=None, help="training run directory of the bundle, for torch_speedup")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: bench/<bundle name>/)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start subprocess")
    p.add_argument("--sequence-length", action="append", default=[], metavar="MODALITY=N", type=_length,
                   help="time MODALITY's inputs at N tokens / frames, e.g. question=9 for a typical question under a "
                        "24-token maximum (repeatable; default: every sequence at its spec's maximum)")
    return p


def _progress() -> tuple[Callable[[str], None], Callable[[], None]]:
    try:
        from tqdm import tqdm
    except ImportError:  # not a runtime dependency: plain lines
        return (lambda s: print(f"  {s}", file=sys.stderr, flush=True)), (lambda: None)
    bar = tqdm(desc="bench", unit="step", file=sys.stderr)

    def step(s: str) -> None:
        bar.set_postfix_str(s)
        bar.update(1)
    return step, bar.close


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.bench import BenchConfig, run_benchmark, targets
    from runtime.bench_report import markdown, write_outputs
    from runtime.errors import MMEdgeError

    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or any(b < 1 for b in args.batch_sizes):
        print("mmedge bench: --runs, --threads and batch sizes must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    bad = [p for p in args.providers or () if p not in targets()]
    if bad:
        print(f"mmedge bench: unknown provider(s) {bad}; choose from {', '.join(targets())}", file=sys.stderr)
        return 2
    batches = tuple(sorted({1, *args.batch_sizes}))
    out = args.out or Path("bench") / args.bundle.resolve().name
    cfg = BenchConfig(bundle=args.bundle, runs=args.runs, warmup=args.warmup, batch_sizes=batches,
                      precisions=args.precisions, providers=args.providers, threads=args.threads, run_dir=args.run,
                      cold_start=not args.no_cold_start, cache_dir=out / "trt-cache",
                      lengths=dict(args.sequence_length))
    step, close = _progress()
    try:
        rec = run_benchmark(cfg, step)
    except MMEdgeError as exc:  # bad bundle, or a precision it does not have; anything else is a bug
        close()
        print(refusal("mmedge bench", exc), file=sys.stderr)
        return EXIT_REFUSED
    close()
    paths = write_outputs(rec, out, log=lambda s: print(s, file=sys.stderr))
    print(markdown(rec))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
