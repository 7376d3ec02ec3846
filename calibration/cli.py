"""`mmedge calibrate`: FP16 search / INT8 calibration of one ONNX graph, and report printing.

`export build` runs these per pattern inside the bundle build; this command is for one graph:
  mmedge calibrate fp16 --onnx g.onnx --feeds feeds.npz --out g.fp16.onnx [--io-dtype fp16]
  mmedge calibrate int8 --onnx g.onnx --feeds feeds.npz --out g.int8.onnx --method entropy
  mmedge calibrate report g.fp16.onnx.report.json   (or a bundle directory)
feeds.npz holds one array per graph input name (e.g. "audio.values"), batch axis first.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import write_json_atomic
from runtime.cli_errors import EPILOG, EXIT_REFUSED, run_cli
from runtime.errors import ConfigError, NotFound


def load_feeds(path: Path, batch: int) -> list[dict[str, np.ndarray]]:
    if not path.is_file():
        raise NotFound(f"feeds file {path} not found; write one with "
                         "np.savez(path, **{input_name: array}) from real training samples")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    if not arrays:
        raise ConfigError(f"{path}: no arrays; save one per graph input, e.g. np.savez(path, **{{'audio.values': x}})")
    n = min(len(a) for a in arrays.values())
    return [{k: a[i:i + batch] for k, a in arrays.items()} for i in range(0, n, batch)]


def _summary(d: dict[str, Any]) -> str:
    lines = [f"precision: {d.get('precision')}  passed: {d.get('passed')}"]
    if "io_dtype" in d:
        lines.append(f"io dtype: {d['io_dtype']}  kept in FP32: {len(d.get('kept_fp32', []))} "
                     f"{d.get('kept_fp32_op_types', {})}")
        for key in ("error_before", "error_after"):
            for name, e in d[key]["outputs"].items():
                lines.append(f"  {key:<12} {name:<16} max_abs {e['max_abs']:.3g}  rel {e['rel']:.3g}  "
                             f"top1 {e['top1_agreement']}")
    if "method" in d:
        lines.append(f"method: {d['method']}  per_channel: {d['per_channel']}  symmetric: {d['symmetric']}  "
                     f"quantized: {d['quantized_ops']}")
        for name, e in d["agreement"]["outputs"].items():
            lines.append(f"  agreement    {name:<16} max_abs {e['max_abs']:.3g}  rel {e['rel']:.3g}  "
                         f"top1 {e['top1_agreement']}")
    if d.get("sizes"):
        lines.append(f"sizes: {d['sizes']}")
    lines += [f"  FAIL {f}" for f in d.get("failures", [])]
    return "\n".join(lines)


def _finish(report: Any, out: Path, allow_degraded: bool) -> int:
    from calibration.errors import PrecisionToleranceError, check_tolerance

    data = report.to_dict()
    write_json_atomic(Path(f"{out}.report.json"), data, indent=1)
    print(f"wrote {out} and {out}.report.json\n{_summary(data)}")
    try:
        check_tolerance(report, graph=str(out))
    except PrecisionToleranceError as err:
        print(f"mmedge calibrate: error: {err}", file=sys.stderr)
        return 0 if allow_degraded else EXIT_REFUSED
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmedge calibrate", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("fp16", "int8"):
        s = sub.add_parser(name, help=f"{name} graph from an FP32 graph and calibration feeds")
        s.add_argument("--onnx", type=Path, required=True, help="FP32 graph")
        s.add_argument("--feeds", type=Path, required=True, help=".npz, one array per input name")
        s.add_argument("--out", type=Path, required=True)
        s.add_argument("--batch", type=int, default=8, help="rows per calibration batch")
        s.add_argument("--allow-degraded", action="store_true", help="exit 0 even if the tolerance is missed")
        if name == "fp16":
            s.add_argument("--io-dtype", choices=["fp32", "fp16"], default="fp32")
            s.add_argument("--max-rel", type=float, default=1e-2, help="max |err| / max|fp32| per output")
            s.add_argument("--min-top1", type=float, default=0.99)
            s.add_argument("--keep", nargs="*", default=[], help="node names or op types to keep in FP32")
        else:
            s.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
            s.add_argument("--no-per-channel", action="store_true")
            s.add_argument("--min-top1", type=float, default=0.95)
    r = sub.add_parser("report", help="print a saved calibration report (file or bundle directory)")
    r.add_argument("path", type=Path)
    args = p.parse_args(argv)
    return run_cli(f"mmedge calibrate {args.cmd}", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "report":
        files = sorted(args.path.rglob("*report*.json")) if args.path.is_dir() else [args.path]
        if not files:
            raise NotFound(f"no *report*.json under {args.path}; give a report file or a bundle directory")
        for f in files:
            print(f"== {f}\n{_summary(json.loads(f.read_text()))}")
        return 0

    from dataclasses import replace

    from calibration.compare import FP16_TOLERANCE, INT8_TOLERANCE

    feeds = load_feeds(args.feeds, args.batch)
    if args.cmd == "fp16":
        from calibration.fp16 import convert_fp16

        report = convert_fp16(args.onnx, args.out, feeds, io_dtype=args.io_dtype, extra_keep=set(args.keep),
                              tolerance=replace(FP16_TOLERANCE, max_rel=args.max_rel, min_top1=args.min_top1))
    else:
        from calibration.int8 import quantize_int8

        report = quantize_int8(args.onnx, args.out, feeds, method=args.method, per_channel=not args.no_per_channel,
                               tolerance=replace(INT8_TOLERANCE, min_top1=args.min_top1))
    return _finish(report, args.out, args.allow_degraded)
