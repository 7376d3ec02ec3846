"""The pieces of a bundle other than its graphs: manifest entries, the manifest, the baseline graph.

``export.build`` drives the build; this module turns what it measured into manifest records
(graph entries with their parity and .ort copies, each modality's spec as the bundle records it,
tool versions) and writes the papers' placeholder baseline.
"""
from __future__ import annotations

import datetime as _dt
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.errors import BuildError
from export.onnx import export_full_with_placeholders
from export.validate import ParityResult
from runtime.manifest import GraphEntry, Manifest, ModalityEntry, relpath, sha256_file
from runtime.modality_spec import placeholder_recipe, with_sequence_policy
from runtime.patterns import Pattern, all_patterns, feed_modality
from runtime.preprocess import FILE_KEYS, PreprocessError

if TYPE_CHECKING:
    from export.build import BuildConfig


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("mmedge", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxconverter-common",
                "numpy", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def ort_copy(src: Path, dst: Path) -> None:
    """ORT-format copy of exactly the validated graph, for onnxruntime minimal builds.

    No graph optimisation: even ORT's "basic" level constant-folds the weight Casts of an FP16
    graph and the weight DequantizeLinear of a QDQ graph back into FP32 initializers (the .ort
    files came out larger than the .onnx ones). The device's ORT optimises at load time.
    """
    from runtime.runners.onnxrt import create_session, session_options

    create_session(src, session_options(optimize=False, save_optimized_to=dst, save_format="ORT"))


def graph_entry(tmp: Path, path: Path, parity: ParityResult, calib: dict[str, Any] | None, seconds: float,
           ort_check: Callable[[Path], ParityResult] | None) -> GraphEntry:
    """The manifest entry; with ``ort_check`` also the .ort copy, parity-checked on its own.

    ORT cannot apply all its load-time fusions to a .ort file (e.g. QDQ -> QLinear*), so the
    copy's numbers can differ from the .onnx's. A failing copy is only recorded (the runtime
    then ignores it, see GraphEntry.usable_ort_file): it neither fails the build nor marks
    the .onnx graph degraded.
    """
    from export.onnx import graph_io

    ins, outs = graph_io(path)
    entry = GraphEntry(parity.pattern, parity.precision, relpath(path, tmp), sha256_file(path), path.stat().st_size,
                       ins, outs, parity=parity.to_dict(), calibration=calib, degraded=not parity.passed,
                       export_time_s=round(seconds, 3))
    if ort_check is not None:
        ort_path = path.with_suffix(".ort")
        ort_copy(path, ort_path)
        entry.ort_file, entry.ort_sha256 = relpath(ort_path, tmp), sha256_file(ort_path)
        entry.ort_parity = ort_parity(ort_check, ort_path, parity)
        if not entry.ort_parity["passed"]:
            from tqdm.auto import tqdm  # write() keeps a running progress bar intact

            tqdm.write(f"warning: .ort copy of pattern {parity.pattern} [{parity.precision}] failed parity, the "
                       f"runtime will use the .onnx: {'; '.join(entry.ort_parity['failures'])}", file=sys.stderr)
    return entry


def ort_parity(check: Callable[[Path], ParityResult], ort_path: Path, onnx: ParityResult) -> dict[str, Any]:
    """``check(ort_path)`` as a dict; a copy ORT cannot even run is recorded as failed, not raised."""
    try:
        return check(ort_path).to_dict()
    except Exception as exc:  # onnxruntime raises its own (pybind) exception types
        return {"pattern": onnx.pattern, "precision": onnx.precision, "passed": False,
                "failures": [f"cannot run {ort_path.name}: {type(exc).__name__}: {exc}"]}


def stamp_graph(path: Path, pattern: str, precision: str) -> None:
    """Write the graph's pattern and precision into its own ONNX ``metadata_props`` (the runtime
    cross-checks them against the manifest entry: runtime.graph_checks). External data stays as is."""
    import onnx

    from runtime.graph_checks import PATTERN_KEY, PRECISION_KEY

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({PATTERN_KEY: pattern, PRECISION_KEY: precision})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def widen_ranges(ranges: dict[str, list[float]], feeds: Sequence[dict[str, np.ndarray]]) -> None:
    """[low, high] per float feed over the calibration batches: the range the runtime accepts (widened)."""
    for batch in feeds:
        for name, arr in batch.items():
            if arr.dtype.kind == "f" and arr.size:
                low, high = float(arr.min()), float(arr.max())
                if name in ranges:
                    low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
                ranges[name] = [low, high]


def manifest_specs(model: Any, cfg: BuildConfig) -> dict[str, dict[str, Any]]:
    """Each modality's preprocess spec as the bundle records it: with its sequence policy written out."""
    unknown = sorted(set(cfg.sequence_policy) - set(model.info.modalities))
    if unknown:
        raise BuildError(f"--sequence-policy names {unknown}, which are not modalities of this model "
                         f"({sorted(model.info.modalities)})")
    try:
        return {m: with_sequence_policy(s.preprocess, cfg.sequence_policy.get(m))
                for m, s in model.info.modalities.items()}
    except PreprocessError as err:
        raise BuildError(f"--sequence-policy: {err}") from None


def bundle_manifest(tmp: Path, model: Any, entries: list[GraphEntry], cfg: BuildConfig,
              ranges: dict[str, list[float]] | None = None) -> Manifest:
    first: dict[str, GraphEntry] = {}  # a modality's inputs come from the first exported graph that has it
    for e in entries:
        for m in sorted(Pattern.from_key(e.pattern)):
            first.setdefault(m, e)
    modalities, files = {}, {}
    specs = manifest_specs(model, cfg)
    for m, spec in model.info.modalities.items():
        pre = specs[m]
        for k in FILE_KEYS:
            if pre.get(k):
                src = Path(pre[k]).expanduser()
                if not src.is_file():
                    raise BuildError(f"modality {m!r} preprocessing references {src}, which does not exist")
                dst = tmp / "preprocess" / m / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                pre[k] = relpath(dst, tmp)
                files[pre[k]] = sha256_file(dst)
        inputs = [replace(i) for i in (first[m].inputs if m in first else []) if feed_modality(i.name) == m]
        own = {n: r for n, r in (ranges or {}).items() if feed_modality(n) == m}
        modalities[m] = ModalityEntry(m, spec.type, inputs, pre, input_range=own or None)
    return Manifest(method=model.method_name, dataset=model.info.name, task=model.task,
                    labels=list(model.info.labels), modalities=modalities, graphs=entries, files=files,
                    tools=tool_versions(), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    extra={"exporter": cfg.exporter, "opset": 18, "int8_method": cfg.int8_method,
                           "int8_target": cfg.int8_target,
                           "optimisation": ({"tool": "onnxruntime.transformers.optimizer", "opt_level": 1}
                                            if cfg.optimize and cfg.int8_target != "tensorrt" else None),
                           "io_dtype": cfg.io_dtype, "calib_samples": cfg.calib_samples,
                           "val_samples": cfg.val_samples, "seed": cfg.seed})


def baseline_graph(tmp: Path, model: Any, cfg: BuildConfig) -> tuple[list[GraphEntry], dict[str, Any]]:
    """The papers' full graph with placeholders, FP32 only (a latency baseline, not a product graph)."""
    path = tmp / "baseline" / "fp32" / "full-placeholders.onnx"
    info = export_full_with_placeholders(model, path, exporter=cfg.exporter)  # type: ignore[arg-type]
    entry = GraphEntry(all_patterns(model.modalities)[0].key, "fp32", relpath(path, tmp), sha256_file(path),
                       info.size_bytes, info.inputs, info.outputs, export_time_s=round(info.seconds, 3))
    return [entry], {m: placeholder_recipe(s.preprocess) for m, s in model.info.modalities.items()}
