"""`mmedge export` / `python -m export`: per-pattern ONNX export into a deployable bundle."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from runtime.cli_errors import EPILOG, EXIT_REFUSED
from runtime.errors import MMEdgeError
from runtime.manifest import PRECISIONS, Manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmedge export",
        description="Export one ONNX graph per modality-availability pattern into a deployable bundle.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    b = sub.add_parser("build", help="export a trained run to a bundle",
                       description="Export a trained run: one graph per pattern at fp32/fp16/int8, validated "
                                   "against PyTorch on held-out samples, written atomically with a manifest. "
                                   "Precisions are checked in turn (fp32, fp16, int8); the first failing graph "
                                   "stops the build and prints the commands that write what passed.",
                       epilog=EPILOG)
    b.add_argument("--method", default="cmpt", help="method of the run (default: cmpt)")
    b.add_argument("--precision", default="fp32",
                   help=f"{', '.join(PRECISIONS)} or a comma list, e.g. fp32,fp16,int8 (default: fp32)")
    b.add_argument("--run", type=Path, help="run directory (default: runs/<dataset>/<method>)")
    b.add_argument("--dataset", help="dataset of the default run, and the source of calibration/validation samples "
                                     "(default: av-digits for the run; the run's own dataset for samples)")
    b.add_argument("--out", type=Path, help="bundle directory (default: bundles/<dataset>-<method>-<precisions>)")
    b.add_argument("--allow-degraded", action="store_true",
                   help="write graphs that miss their parity tolerance anyway, marked degraded in the manifest")
    b.add_argument("--engine", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                   help="also build TensorRT engines (needs TensorRT 10 and a GPU) (default: onnxruntime)")
    b.add_argument("--calib-samples", type=int, default=64, help="train samples per pattern for calibration (default: 64)")
    b.add_argument("--val-samples", type=int, default=512, help="test samples per pattern for parity (default: 512)")
    b.add_argument("--int8-method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="INT8 calibration method (default: minmax)")
    b.add_argument("--io-dtype", choices=("fp32", "fp16"), default="fp32",
                   help="FP16 graphs: float inputs/outputs as fp32 (simple hosts) or fp16 (GPU pipelines) (default: fp32)")
    b.add_argument("--ort-format", action="store_true", help="also write .ort copies for onnxruntime minimal builds")
    b.add_argument("--no-placeholders", action="store_true",
                   help="skip the papers' full graph with placeholders (a benchmark baseline)")
    b.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                   help="torch.onnx exporter; legacy (TorchScript tracing) is a faster escape hatch (default: dynamo)")
    b.add_argument("--alpha", type=float, default=0.1,
                   help="miscoverage of the per-pattern conformal prediction sets (default: 0.1; the runtime can "
                        "override it)")
    b.add_argument("--target-accuracy", type=float, default=None,
                   help="per-pattern abstention threshold for this selective accuracy on the validation split, "
                        "e.g. 0.99 (default: no abstention)")
    b.add_argument("--confidence-samples", type=int, default=1000,
                   help="validation samples per pattern for confidence calibration (default: 1000)")
    b.add_argument("--no-confidence", action="store_true", help="skip confidence calibration")
    b.add_argument("--patterns", help="export only these patterns, a comma list of keys such as audio+image,image "
                                      "(default: all 2^M - 1)")
    b.add_argument("--min-modalities", type=int, default=1,
                   help="export only patterns with at least this many modalities (default: 1)")
    b.add_argument("--require", action="append", default=[], metavar="MODALITY",
                   help="export only patterns that contain MODALITY (repeatable)")
    b.add_argument("--int8-target", choices=("cpu", "tensorrt"), default="cpu",
                   help="INT8 form: cpu = uint8 activations (static QDQ or dynamic, measured per graph); tensorrt "
                        "= symmetric S8S8 QDQ (implied by --engine tensorrt) (default: cpu)")
    b.add_argument("--shared-weights", choices=("auto", "always", "never"), default="auto",
                   help="one weights file per precision shared by its graphs; auto: when the graphs total >= 16 MiB "
                        "(default: auto)")
    b.add_argument("--no-optimize", action="store_true",
                   help="skip onnxruntime's transformer fusions (graphs stay standard ONNX)")
    b.add_argument("--sequence-policy", action="append", default=[], metavar="MODALITY=POLICY",
                   help="what the runtime does with an audio/timeseries input longer than the trained max_frames: "
                        "truncate (keep the first max_frames frames; the default), window (keep the last "
                        "max_frames: a sliding window over a stream) or error (SequenceTooLong); repeatable, one "
                        "per modality; recorded in the manifest, shown by `mmedge runtime info`")
    b.add_argument("--no-progress", action="store_true")
    k = sub.add_parser("keygen", help="create an ed25519 key pair for signing bundles (needs mmedge[sign])",
                       description="Write KEY (private, PEM, mode 0600) and KEY.pub (public, PEM). Keep KEY off the "
                                   "devices; ship KEY.pub to them as a trusted key.")
    k.add_argument("--out", type=Path, required=True, help="path of the private key; the public key is OUT.pub")
    s = sub.add_parser("sign", help="sign a bundle's manifest (detached ed25519 signature, needs mmedge[sign])",
                       description="Verify BUNDLE, then write BUNDLE/manifest.sig over its canonical manifest, which "
                                   "pins every file's sha256. Devices load it with Runtime.load(..., "
                                   "trusted_keys=[KEY.pub]).")
    s.add_argument("bundle", type=Path)
    s.add_argument("--key", type=Path, required=True, help="private key from `mmedge export keygen`")
    return parser


def _keys(args: argparse.Namespace) -> int:
    """keygen / sign: torch-free, runtime.signing does the work."""
    from runtime.signing import generate_key, key_id, load_public_key, sign_bundle

    prog = f"mmedge export {args.command}"
    try:
        if args.command == "keygen":
            private, public = generate_key(args.out)
            raw = load_public_key(public).public_bytes_raw()
            print(f"private key {private} (keep it secret)\npublic key  {public} (key id {key_id(raw)}): pass it as "
                  "Runtime.load(..., trusted_keys=[...])")
            return 0
        path = sign_bundle(args.bundle, args.key)
        print(f"signed {args.bundle}: {path}")
        return 0
    except FileExistsError as exc:
        print(f"{prog}: error: {exc.filename} exists; choose another --out (keys are never overwritten)",
              file=sys.stderr)
    except (MMEdgeError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    return EXIT_REFUSED


def rerun_commands(argv: list[str], passed: tuple[str, ...]) -> list[str]:
    """The exact commands that write the precisions that passed, or everything marked degraded."""
    rest: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--precision":
            skip = True
        elif not a.startswith("--precision="):
            rest.append(a)
    lines = []
    if passed:
        lines.append("write the passing precisions: " + shlex.join(["mmedge", "export", *rest, "--precision",
                                                                      ",".join(passed)]))
    if "--allow-degraded" not in argv:
        lines.append("write everything, failing graphs marked degraded: "
                     + shlex.join(["mmedge", "export", *argv, "--allow-degraded"]))
    return lines


def parse_sequence_policies(values: list[str]) -> dict[str, str]:
    """``["accel=window", ...]`` -> {"accel": "window"}; ValueError for a malformed or repeated entry."""
    out: dict[str, str] = {}
    for v in values:
        m, sep, policy = v.partition("=")
        if not sep or not m or not policy:
            raise ValueError(f"--sequence-policy takes MODALITY=POLICY (e.g. accel=window), got {v!r}")
        if m in out:
            raise ValueError(f"--sequence-policy gives {m!r} twice ({out[m]!r} and {policy!r})")
        out[m] = policy
    return out


def format_table(manifest: Manifest) -> str:
    head = ("pattern", "precision", "size KB", "max|dlogits|", "top1 agree", "metric d", "cos min", "export s", "calib s", "")
    rows = [head]
    for g in manifest.graphs:
        p = g.parity
        delta = p.get("metric_delta")
        rows.append((g.pattern, g.precision, f"{g.size_bytes / 1024:.0f}", f"{p['max_abs']['logits']:.2e}",
                     f"{p['top1_agreement']:.4f}", "-" if delta is None else f"{delta:+.4f}",
                     f"{p['cosine_min']:.5f}", f"{g.export_time_s:.1f}",
                     f"{g.calibration['seconds']:.1f}" if g.calibration else "-", "DEGRADED" if g.degraded else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ("keygen", "sign"):
        return _keys(args)
    from export.build import BuildConfig, PrecisionStopped, build_bundle
    from export.validate import ParityError
    from runtime.manifest import load_manifest

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = BuildConfig(method=args.method, precisions=args.precision, run=args.run, dataset=args.dataset,
                          out=args.out, allow_degraded=args.allow_degraded, engine=args.engine,
                          calib_samples=args.calib_samples, val_samples=args.val_samples,
                          int8_method=args.int8_method, io_dtype=args.io_dtype, ort_format=args.ort_format,
                          placeholders=not args.no_placeholders, progress=not args.no_progress,
                          exporter=args.exporter, confidence=not args.no_confidence, alpha=args.alpha,
                          target_accuracy=args.target_accuracy, confidence_samples=args.confidence_samples,
                          patterns=tuple(args.patterns.split(",")) if args.patterns else None,
                          min_modalities=args.min_modalities, require=tuple(args.require),
                          int8_target=args.int8_target, shared_weights=args.shared_weights,
                          optimize=not args.no_optimize,
                          sequence_policy=parse_sequence_policies(args.sequence_policy))
        out = build_bundle(cfg)
    except MMEdgeError as exc:
        kind = "parity failed" if isinstance(exc, ParityError) else "error"
        print(f"mmedge export build: {kind}: {exc}", file=sys.stderr)
        if isinstance(exc, PrecisionStopped):
            for line in rerun_commands(argv, exc.passed):
                print(line, file=sys.stderr)
        return EXIT_REFUSED
    manifest = load_manifest(out)
    print(format_table(manifest))
    for b in manifest.baselines:
        print(f"baseline (benchmark only): {b.file}  {b.size_bytes / 1024:.0f} KB  {b.export_time_s:.1f} s")
    if any(g.confidence for g in manifest.graphs):
        from runtime.confidence import confidence_table

        print("confidence (validation split, ECE over 15 equal-mass bins):")
        print(confidence_table(manifest.graphs))
    for g in manifest.graphs:
        if g.fused_ops is not None:
            kind = f" [{g.int8_type}]" if g.int8_type else ""
            print(f"fused {g.precision}/{g.pattern}{kind}: "
                  + (", ".join(f"{k} {v}" for k, v in g.fused_ops.items()) or "none"))
    for w in manifest.shared_weights:
        print(f"shared weights {w.file}: {w.size_bytes / 1e6:.2f} MB for {w.referenced_bytes / 1e6:.2f} MB referenced")
    if manifest.excluded_patterns:
        print(f"not exported: {', '.join(manifest.excluded_patterns)}")
    print(f"bundle: {out}  ({len(manifest.graphs)} graphs, precisions {', '.join(manifest.precisions)})")
    return 0
