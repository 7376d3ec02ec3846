"""`mmedge runtime info|predict BUNDLE`: look inside a bundle, try a prediction. Torch-free.

    mmedge runtime info bundles/av-digits-cmpt-fp32-fp16-int8
    mmedge runtime predict bundles/av-digits-cmpt-fp32-fp16-int8 --image digit.png --audio mfcc.npy

The per-modality flags (--image, --audio, --question/--text ...) come from the bundle's manifest:
arrays as .npy (always), images also as .png/.jpg when Pillow is installed (not a runtime
dependency), waveform audio also as a 16-bit PCM mono .wav at the bundle's sample rate (stdlib
``wave``; another rate is refused, never resampled), text inline or as @file.txt.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli_errors import EPILOG, EXIT_REFUSED
from runtime.errors import MMEdgeError
from runtime.manifest import GraphEntry, Manifest, load_manifest
from runtime.modality_spec import POLICY_KEY, spec_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


class CLIInputError(MMEdgeError):
    """A file the CLI cannot read (the runtime itself never sees it)."""


def read_raw(path_or_text: str, modality_type: str, spec: dict[str, Any] | None = None) -> Any:
    """A CLI value as the runtime's raw input for a modality of ``modality_type`` (preprocess ``spec``: a .wav
    for a waveform/samples audio spec, checked against its sample rate)."""
    if modality_type == "text":
        if path_or_text.startswith("@"):
            return Path(path_or_text[1:]).read_text().strip()
        return path_or_text
    path = Path(path_or_text)
    if not path.is_file():
        raise CLIInputError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:  # not a .npy file, or an object array
            raise CLIInputError(f"cannot read {path} as a .npy array ({exc}); save it with np.save") from None
    if suffix == ".wav" and modality_type == "audio" and spec is not None:
        return spec_of(spec).read_file(path)
    if suffix in IMAGE_SUFFIXES and modality_type == "image":
        try:
            from PIL import Image
        except ImportError:
            raise CLIInputError(f"reading {suffix} needs Pillow, which the runtime does not depend on: "
                                "pip install pillow, or save the frame as .npy (np.save)") from None
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB", "RGBA") else img)
    raise CLIInputError(f"cannot read {path} for a {modality_type} input; use .npy"
                        + (" or an image file (Pillow)" if modality_type == "image" else ""))


def _flags(manifest: Manifest) -> dict[str, list[str]]:
    """modality -> its CLI flags; text modalities also answer to --question/--text when unambiguous."""
    out = {m: [f"--{m}"] for m in sorted(manifest.modalities)}
    texts = [m for m, e in manifest.modalities.items() if e.type == "text"]
    if len(texts) == 1:
        out[texts[0]] += [f for f in ("--question", "--text") if f != f"--{texts[0]}"]
    return out


def _ort_status(g: GraphEntry) -> str:
    """The .ort copy: "passed" (the runtime may use it), "failed" parity or "unchecked" (older bundles)."""
    return "passed" if g.usable_ort_file else ("failed" if g.ort_parity else "unchecked")


def info(bundle: Path, precision: str | None, providers: list[str] | None, as_json: bool,
         trusted_keys: list[str] | None = None) -> dict[str, Any]:
    import onnxruntime as ort

    from runtime.session import Runtime

    m = load_manifest(bundle, trusted_keys=trusted_keys)
    precision = precision or m.precisions[0]
    rt = Runtime.load(bundle, precision=precision, providers=providers, warmup=False, intra_op_threads=1,
                      trusted_keys=trusted_keys)
    out: dict[str, Any] = {
        "bundle": str(bundle), "method": m.method, "dataset": m.dataset, "task": m.task, "labels": m.labels,
        "precisions": m.precisions,
        "signature": "verified" if trusted_keys else "not checked",
        "patterns": {p: m.patterns(p) for p in m.precisions},
        "inputs": {name: {"type": e.type, "tensors": [{"name": t.name, "dtype": t.dtype, "shape": t.shape}
                                                      for t in e.inputs]} for name, e in m.modalities.items()},
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in m.graphs[0].outputs],
        "graph_bytes": {f"{g.precision}/{g.pattern}": g.size_bytes for g in m.graphs},
        "ort_copies": {f"{g.precision}/{g.pattern}": _ort_status(g) for g in m.graphs if g.ort_file},
        "fused_ops": {f"{g.precision}/{g.pattern}": g.fused_ops for g in m.graphs if g.fused_ops is not None},
        "int8_type": {g.pattern: g.int8_type for g in m.graphs if g.precision == "int8" and g.int8_type},
        "shared_weights": {w.precision: {"file": w.file, "size_bytes": w.size_bytes, "tensors": w.tensors}
                           for w in getattr(m, "shared_weights", [])},
        "excluded_patterns": list(getattr(m, "excluded_patterns", [])),
        "degraded": {f"{g.precision}/{g.pattern}": g.degraded for g in m.graphs},
        "sequences": _sequence_info(m),
        "providers_available": ort.get_available_providers(),
        "providers_requested": rt.requested_providers,
        "providers_in_use": {f"{precision}/{k}": v for k, v in rt.providers.items()},
        "confidence": _confidence_info(m),
    }
    if as_json:
        print(json.dumps(out, indent=2))
        return out
    print(f"bundle      {bundle}  ({m.method} on {m.dataset}, {m.task}, {len(m.labels)} labels)")
    print(f"precisions  {', '.join(m.precisions)}")
    print(f"signature   {out['signature']}")
    for p in m.precisions:
        sizes = ", ".join(f"{g.pattern} {g.size_bytes / 1e6:.2f} MB"
                          + (f" (+.ort, parity {_ort_status(g)})" if g.ort_file else "")
                          + (" DEGRADED" if g.degraded else "")
                          for g in m.graphs if g.precision == p)
        print(f"  {p:<5} {sizes}")
        for g in (g for g in m.graphs if g.precision == p and g.fused_ops is not None):
            fused = ", ".join(f"{k} {v}" for k, v in g.fused_ops.items()) or "none"
            kind = f" [{g.int8_type}]" if g.int8_type else ""
            print(f"        fused {g.pattern}{kind}: {fused}")
    for w in getattr(m, "shared_weights", []):
        print(f"weights     {w.precision}: {w.file} {w.size_bytes / 1e6:.2f} MB, {w.tensors} tensors shared by its graphs")
    if getattr(m, "excluded_patterns", None):
        print(f"excluded    {', '.join(m.excluded_patterns)} (not exported)")
    bad = [k for k, v in out["degraded"].items() if v]
    if bad:
        print(f"degraded    {', '.join(bad)}: missed parity, written with --allow-degraded (Runtime.load warns "
              "DegradedGraphWarning)")
    print("inputs")
    for name, e in m.modalities.items():
        tensors = ", ".join(f"{t.name} {t.dtype}{t.shape}" for t in e.inputs)
        print(f"  {name:<10} ({e.type}) -> {tensors}")
        seq = out["sequences"].get(name)
        if seq:
            samples = e.type == "audio" and spec_of(e.preprocess).samples
            if samples:
                print(f"  {'':<10} waveform: {spec_of(e.preprocess).expected_raw()}, normalised "
                      f"{e.preprocess.get('normalize', 'per-clip')}")
            unit = "samples" if samples else "frames"
            print(f"  {'':<10} sequence: at most {seq['max_frames']} {unit}; longer -> {seq['policy']}"
                  + ("" if seq["recorded"] else " (not recorded in this bundle: the default)"))
    print(f"outputs     {', '.join(o['name'] for o in out['outputs'])}")
    print(f"providers   available {out['providers_available']}")
    print(f"            requested {rt.requested_providers}; in use at {precision}: "
          f"{sorted({p for v in rt.providers.values() for p in v})}")
    if out["confidence"]:
        from runtime.confidence import confidence_table

        print("confidence  per pattern: temperature, ECE (15 equal-mass bins) and NLL on the validation split "
              "before->after, conformal quantile q at alpha (sets: p >= 1 - q), calibration n")
        print("\n".join("  " + line for line in confidence_table(m.graphs).splitlines()))
    else:
        print("confidence  none (this bundle predates calibration or was built with --no-confidence)")
    return out


def _sequence_info(m: Manifest) -> dict[str, Any]:
    """Per frames modality: its trained maximum and what a longer clip gets (runtime.modality_spec)."""
    out = {}
    for name, e in m.modalities.items():
        view = spec_of(e.preprocess)
        if len(view.policies) > 1:
            out[name] = {"max_frames": view.max_length, "policy": view.sequence_policy,
                         "recorded": POLICY_KEY in e.preprocess}
    return out


def _confidence_info(m: Manifest) -> dict[str, Any]:
    from runtime.confidence import summary

    return {f"{g.precision}/{g.pattern}": summary(g.confidence) for g in m.graphs if g.confidence is not None}


def predict(bundle: Path, precision: str, providers: list[str] | None, raw: dict[str, Any], top_k: int,
            as_json: bool, trusted_keys: list[str] | None = None, backend: str = "onnxruntime") -> dict[str, Any]:
    from runtime.session import Runtime

    rt = Runtime.load(bundle, precision=precision, providers=providers, lazy=True, trusted_keys=trusted_keys,
                      backend=backend)
    inputs = {m: raw.get(m) for m in rt.modalities}
    pred = rt.predict(inputs, top_k=top_k)
    cut = {m: rt.sequence_policies[m] for m, n in rt.sequence_cuts.items() if n}
    out = {"pattern": pred.pattern, "precision": precision, "top": pred.top, "timings_ms": pred.timings,
           "providers_in_use": rt.providers.get(pred.pattern), "sequences_cut": cut}
    if as_json:
        print(json.dumps(out, indent=2))
        return out
    print(f"pattern   {pred.pattern}  (missing: {', '.join(m for m in rt.modalities if inputs[m] is None) or 'none'})")
    for label, p in pred.top:
        print(f"  {label:<20} {p:.4f}")
    t = pred.timings
    print(f"timings   preprocess {t['preprocess_ms']:.2f} ms, inference {t['inference_ms']:.2f} ms, "
          f"total {t['total_ms']:.2f} ms (first call: includes session creation)")
    print(f"providers {out['providers_in_use']}")
    for m, policy in cut.items():
        print(f"note      {m} was longer than its trained maximum: {policy} "
              f"(`mmedge runtime info` shows the maximum)")
    return out


def _common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--precision", default=None if name == "info" else "fp32")
    p.add_argument("--providers", default=None, help="comma list, e.g. cpu or tensorrt,cuda,cpu (default: best)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--trusted-key", action="append", dest="trusted_keys", metavar="KEY.pub",
                   help="refuse the bundle unless signed by this ed25519 public key (repeatable; mmedge[sign])")
    if name == "predict":
        p.add_argument("--top-k", type=int, default=5)
        p.add_argument("--backend", default="onnxruntime",
                       help="onnxruntime (the ONNX graphs; --providers picks its execution providers) or tensorrt "
                            "(the bundle's prebuilt engines, `mmedge export build --engine tensorrt`) "
                            "(default: onnxruntime)")


def _modality_parser(bundle: Path, manifest: Manifest, full: bool) -> argparse.ArgumentParser:
    """The bundle's per-modality flags; ``full`` adds the predict options too (for --help)."""
    mp = argparse.ArgumentParser(prog=f"mmedge runtime predict {bundle}",
                                 description=f"one prediction with {bundle} ({manifest.method} on "
                                             f"{manifest.dataset}); give the modalities that delivered data")
    if full:
        _common(mp, "predict")
    group = mp.add_argument_group("modalities of this bundle (omit a flag: that modality is missing)")
    for m, names in _flags(manifest).items():
        e = manifest.modalities[m]
        takes_wav = e.type == "audio" and spec_of(e.preprocess).takes_waveform
        source = "text, or @file.txt" if e.type == "text" else (
            ".npy" + (" or .png/.jpg (needs Pillow)" if e.type == "image" else " or .wav" if takes_wav else ""))
        group.add_argument(*names, dest=m, default=None, metavar="FILE" if e.type != "text" else "TEXT",
                           help=f"{e.type}: {source}; {spec_of(e.preprocess).describe()}".replace("%", "%%"))
    return mp


def _bundle_help(argv: list[str]) -> str | None:
    """``predict BUNDLE ... --help`` with a readable bundle: its help, modality flags included."""
    if argv[:1] != ["predict"] or not {"-h", "--help"} & set(argv):
        return None
    valued = {"--precision", "--providers", "--trusted-key", "--top-k", "--backend"}
    bundle = next((Path(a) for i, a in enumerate(argv[1:], 1)
                   if not a.startswith("-") and argv[i - 1] not in valued), None)
    if bundle is None or not bundle.is_dir():
        return None
    try:
        manifest = load_manifest(bundle, verify=False)
    except (MMEdgeError, OSError, ValueError):
        return None  # argparse's generic help, then the bundle's error when it is used
    return _modality_parser(bundle, manifest, full=True).format_help()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    text = _bundle_help(argv)
    if text is not None:
        print(text)
        return 0
    parser = argparse.ArgumentParser(prog="mmedge runtime", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("info", "patterns, precisions, inputs, sequence policies and providers of a bundle"),
                        ("predict", "one prediction from files (per-modality flags come from the manifest; "
                                    "`predict BUNDLE --help` lists them)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("bundle", type=Path)
        _common(p, name)
    args, rest = parser.parse_known_args(argv)
    providers = args.providers.split(",") if args.providers else None
    try:
        if args.cmd == "info":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            info(args.bundle, args.precision, providers, args.json, args.trusted_keys)
            return 0
        manifest = load_manifest(args.bundle, verify=False)  # Runtime.load verifies; here only for the flags
        flags = _flags(manifest)
        mp = _modality_parser(args.bundle, manifest, full=False)
        margs = mp.parse_args(rest)
        raw = {m: read_raw(v, manifest.modalities[m].type, manifest.modalities[m].preprocess)
               for m, v in vars(margs).items() if v is not None}
        if not raw:
            mp.error(f"give at least one of {', '.join(f[0] for f in flags.values())}")
        predict(args.bundle, args.precision, providers, raw, args.top_k, args.json, args.trusted_keys, args.backend)
        return 0
    except (MMEdgeError, OSError) as err:  # typed refusals, and files the CLI cannot read; else a bug
        print(f"mmedge runtime {args.cmd}: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
