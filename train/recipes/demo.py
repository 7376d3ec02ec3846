"""`mmedge demo`: the end-to-end job that the README's first command runs.

Fetch av-digits, pretrain the image and audio encoders, train CMPT on the
frozen encoders, export fp32/fp16/int8 graphs per availability pattern, then
stream the test set through the torch-free runtime with sensors dropping out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DATASET = "av-digits"
MODALITIES = ("image", "audio")
METHOD = "cmpt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmedge demo",
        description=(
            "End to end on av-digits: fetch the data, pretrain the image and audio encoders, train CMPT on them "
            "and report test accuracy for every availability pattern (both sensors, image only, audio only); "
            "export fp32, fp16 and int8 graphs into one bundle; stream the test set through the torch-free "
            "runtime with sensors dropping out and going stale. Re-running reuses finished training."
        ),
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are written (default: runs)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default: $MMEDGE_DATA_DIR or ./data)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per unimodal encoder (default: 20)")
    p.add_argument("--method-epochs", type=int, default=10, help="CMPT epochs (default: 10, the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundles-dir", type=Path, default=Path("bundles"), help="where bundles go (default: bundles)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny encoders, 3 epochs, 200 samples per split, written to <runs-dir>/quick")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from train.recipes.method import TrainConfig, train_method
    from train.recipes.method import method_run_dir as method_out
    from train.reporting.tables import pattern_table
    from train.recipes.unimodal import UnimodalConfig, pretrain_unimodal, unimodal_run_dir

    runs_dir = args.runs_dir / "quick" if args.quick else args.runs_dir  # never mix smoke runs with real ones
    limit = 200 if args.quick else None
    steps = len(MODALITIES) + 3
    started = time.perf_counter()
    rows = []
    for i, modality in enumerate(MODALITIES, 1):
        print(f"[{i}/{steps}] pretraining the {modality} encoder on {DATASET} ...", flush=True)
        cfg = UnimodalConfig(
            dataset=DATASET, modality=modality, runs_dir=runs_dir, data_dir=args.data_dir, seed=args.seed,
            epochs=3 if args.quick else args.epochs, size="tiny" if args.quick else "small", limit=limit,
        )
        m = pretrain_unimodal(cfg)
        wall = "reused" if _reused(m) else f"{m['train_wall_time_s']:.0f}"
        rows.append((modality, m["test"]["accuracy"], m["num_samples"]["test"], wall,
                     m["encoder_parameters"], unimodal_run_dir(cfg)))
    print(f"[{len(MODALITIES) + 1}/{steps}] training {METHOD} on the frozen encoders ...", flush=True)
    tcfg = TrainConfig(method=METHOD, dataset=DATASET, runs_dir=runs_dir, data_dir=args.data_dir, seed=args.seed,
                       epochs=3 if args.quick else args.method_epochs, warmup_epochs=1 if args.quick else 5,
                       limit=limit)
    metrics = train_method(tcfg)
    bundle, streamed, stream_json, stream_png = _export_and_stream(args, runs_dir, tcfg, steps)

    print(f"\n{DATASET}: unimodal encoders, test accuracy")
    print(f"{'modality':<10}{'accuracy':>10}{'test n':>8}{'train s':>9}{'params':>10}  saved to")
    for modality, acc, n, wall, params, out in rows:
        print(f"{modality:<10}{acc:>10.4f}{n:>8}{wall:>9}{params:>10,}  {out}")
    params = metrics["parameters"]
    print(f"\n{DATASET}: {METHOD}, test metrics per availability pattern (each pattern's own branch)")
    print(pattern_table(metrics["test_by_pattern"]))
    print(f"learnable {params['learnable']:,} of {params['total']:,} parameters; "
          f"trained in {metrics['train_wall_time_s']:.0f} s{_reused(metrics)}; run saved to {method_out(tcfg)}")
    from train.recipes.demo_stream import confidence_tables, stream_tables

    events = streamed[0]["events"]
    predicted = sum(c["num_samples"] for c in streamed[0]["patterns"].values())
    print(f"\nstreamed {predicted + events['no_sensor_left']} "
          f"test samples through the runtime (CPU, 1 thread); sensor readings: {events['fresh']} fresh, "
          f"{events['dropped']} dropped, {events['stale']} stale (older than 0.12 s, treated as missing); "
          f"{events['no_sensor_left']} samples had no sensor left")
    print(stream_tables(streamed))
    print()
    print(confidence_tables(streamed))
    print(f"\nbundle:  {bundle}  (inspect: mmedge runtime info {bundle}; time it: mmedge bench --bundle {bundle})")
    print(f"JSON:    {stream_json}, {method_out(tcfg) / 'metrics.json'}")
    print(f"plot:    {stream_png}")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _export_and_stream(args: argparse.Namespace, runs_dir: Path, tcfg, steps: int):
    """Export every precision into one bundle, then stream the test set through each precision."""
    from export.build import BuildConfig, build_bundle
    from train.engine.checkpoint import write_json_atomic
    from train.data.registry import load_dataset
    from train.recipes.demo_stream import plot_stream, stream
    from train.recipes.method import method_run_dir as method_out

    precisions = ("fp32", "fp16", "int8")
    print(f"[{steps - 1}/{steps}] exporting {', '.join(precisions)} graphs per availability pattern ...", flush=True)
    bundles_dir = args.bundles_dir / "quick" if args.quick else args.bundles_dir
    # --quick's tiny, barely trained model can miss the int8 agreement tolerance; a smoke run still writes it.
    bundle = build_bundle(BuildConfig(method=METHOD, precisions=precisions, run=method_out(tcfg), runs_dir=runs_dir,
                                      bundles_dir=bundles_dir, data_dir=args.data_dir, seed=args.seed,
                                      allow_degraded=args.quick))
    print(f"[{steps}/{steps}] streaming the test set through the runtime, sensors dropping out ...", flush=True)
    data = load_dataset(DATASET, args.data_dir, limit=200 if args.quick else None, seed=args.seed)
    results = [stream(bundle, data.split("test"), data.labels, p, seed=args.seed) for p in precisions]
    out = runs_dir / DATASET / "demo"
    write_json_atomic(out / "stream.json", {"bundle": str(bundle), "results": results})
    png = plot_stream(results, out / "stream.png")
    return bundle, results, out / "stream.json", png


def _reused(metrics: dict) -> str:
    """Re-running the demo resumes a finished run: say so rather than print a misleading 0 s."""
    done = metrics.get("resumed_from_epoch") is not None and metrics["resumed_from_epoch"] + 1 >= metrics["epochs"]
    return " (finished run reused)" if done else ""
