"""Build a deployable bundle from a trained run: export, convert, validate, write atomically.

One bundle holds every requested precision (``Runtime.load(bundle_dir, precision=...)``
picks one), so ``--precision fp32,fp16,int8`` writes ``bundles/<dataset>-<method>-fp32-fp16-int8/``
with ``graphs/<precision>/<pattern>.onnx``; see runtime/manifest.py for the layout.

Per pattern: an export copy of the branch (LoRA merged, fusable attention; export/fusion.py) is
exported once as standard ONNX (the FP16 and TensorRT-INT8 source) and, for onnxruntime targets,
optimised into the fused FP32 graph (the CPU-INT8 source). Every graph's parity is measured
against the original branch. Then each precision's weights may move to one shared file
(export/weights.py), after parity and the .ort copies.

Dependency note (DESIGN.md: runtime <- calibration <- export <- train): onnx.py, validate.py
and tensorrt.py never import train; they take any module with ``input_names`` /
``output_names``. This file is the one bridge that turns a *trained run* into a bundle, so it
imports ``train.runs`` (the run-directory format) and the data registry, lazily, and nothing
else from ``train``.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.bundle_parts import (baseline_graph, bundle_manifest, graph_entry, manifest_specs, stamp_graph,
                                 widen_ranges)
from export.errors import BuildError, PrecisionStopped
from export.fusion import export_copy, fused_op_counts, optimise_graph
from export.onnx import export_pattern, sequence_axes
from export.validate import (DEFAULT_TOLERANCES, ParityError, ParityResult, Tolerance, torch_outputs,
                             validate_graph)
from export.weights import share_bundle_weights
from runtime.atomic import atomic_dir as atomic_bundle_dir
from runtime.errors import ConfigError
from runtime.manifest import PRECISIONS, GraphEntry, Manifest, relpath, sha256_file

DEFAULT_DATASET = "av-digits"
ENGINES = ("onnxruntime", "tensorrt")


@dataclass
class BuildConfig:
    method: str = "cmpt"
    precisions: tuple[str, ...] = ("fp32",)
    run: Path | None = None  # default: <runs_dir>/<dataset>/<method>
    dataset: str | None = None  # where to take samples from; default: the run's own dataset
    out: Path | None = None  # default: <bundles_dir>/<dataset>-<method>-<precisions joined by '-'>
    runs_dir: Path = Path("runs")
    bundles_dir: Path = Path("bundles")
    data_dir: Path | None = None
    allow_degraded: bool = False
    engine: str = "onnxruntime"
    calib_samples: int = 64  # train-split rows per pattern for FP16 ranges / INT8 calibration
    val_samples: int | None = 512  # held-out test rows per pattern for parity (None: all)
    batch_size: int = 32
    int8_method: str = "minmax"
    io_dtype: str = "fp32"
    ort_format: bool = False  # also write .ort copies for onnxruntime minimal builds
    placeholders: bool = True  # also export the papers' full graph with placeholders (benchmark only)
    exporter: str = "dynamo"
    # CPU INT8: uint8 activations (qdq-u8s8 or dynamic-u8s8, measured per graph); "tensorrt":
    # the symmetric S8S8 QDQ form TensorRT's explicit INT8 wants (implied by engine="tensorrt")
    int8_target: str = "cpu"
    patterns: tuple[str, ...] | None = None  # export only these pattern keys (export/select.py)
    min_modalities: int = 1
    require: tuple[str, ...] = ()  # every exported pattern contains these modalities
    shared_weights: str = "auto"  # auto | always | never: one weights file per precision (export/weights.py)
    optimize: bool = True  # ORT-fuse the CPU graphs (export/fusion.py); TensorRT graphs stay standard ONNX
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    seed: int = 0
    threads: int = 1
    progress: bool = True
    # confidence calibration (export/confidence.py) on the val split, per (pattern, precision) graph
    confidence: bool = True
    alpha: float = 0.1  # default miscoverage of the conformal sets; the runtime can override it
    target_accuracy: float | None = None  # per-pattern abstention threshold for this selective accuracy
    confidence_samples: int | None = 1000  # val rows per pattern (None: all)
    # modality -> what the runtime does with a sequence longer than its trained maximum: "truncate"
    # (default), "window" (the last max_frames frames) or "error"; written into the manifest's spec
    sequence_policy: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.precisions, str):
            self.precisions = tuple(p.strip() for p in self.precisions.split(",") if p.strip())
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ConfigError(f"unknown precision(s) {bad or self.precisions}; choose from {', '.join(PRECISIONS)} "
                             "or a comma list such as fp32,fp16,int8")
        self.precisions = tuple(p for p in PRECISIONS if p in self.precisions)  # canonical order, no dupes
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        if self.int8_target not in ("cpu", "tensorrt"):
            raise ConfigError(f"unknown int8 target {self.int8_target!r}; choose cpu or tensorrt")
        if self.engine == "tensorrt":
            self.int8_target = "tensorrt"
        if self.calib_samples < 2:
            raise ConfigError("calib_samples must be >= 2 (the export example needs two rows)")
        if not 0.0 < self.alpha < 1.0 or not (self.target_accuracy is None or 0.0 < self.target_accuracy <= 1.0):
            raise ConfigError(f"alpha must be in (0, 1) and target accuracy in (0, 1], got {self.alpha!r} and "
                             f"{self.target_accuracy!r}")

    def run_dir(self) -> Path:
        from train.runs import run_dir

        return Path(self.run) if self.run else run_dir(self.runs_dir, self.dataset or DEFAULT_DATASET, self.method)


@dataclass
class PatternData:
    """Per pattern: positional torch batches and numpy feeds (calibration: train, validation: test)."""

    calib_args: list[tuple[Any, ...]]
    calib_feeds: list[dict[str, np.ndarray]]
    val_args: list[tuple[Any, ...]]
    val_feeds: list[dict[str, np.ndarray]]
    val_labels: np.ndarray


# ---- inputs ---------------------------------------------------------------------------------
def load_inputs(cfg: BuildConfig) -> tuple[Any, Any]:
    """(model in eval mode, dataset) from the run directory; the dataset is the run's own by default."""
    from train.data.registry import load_dataset
    from train.runs import load_run, read_run_config

    run_dir = cfg.run_dir()
    config = read_run_config(run_dir)
    if config["method"] != cfg.method and cfg.run is None:
        raise BuildError(f"{run_dir} holds a {config['method']!r} run, not {cfg.method!r}")
    model = load_run(run_dir)
    train_cfg = config.get("train", {})
    source = cfg.dataset or train_cfg.get("dataset") or config["dataset"]["name"]
    data_dir = cfg.data_dir or train_cfg.get("data_dir")
    return model, load_dataset(source, data_dir, seed=cfg.seed)


def pattern_data(model: Any, dataset: Any, pattern: Any, cfg: BuildConfig) -> PatternData:
    from train.runs import branch_batches

    module = model.pattern_module(pattern)

    def pick(split: str, n: int | None) -> list[Any]:
        rows = [s for s in dataset.split(split) if all(s.inputs.get(m) is not None for m in pattern)]
        random.Random(cfg.seed).shuffle(rows)
        return [s.restricted(pattern) for s in rows[:n]]

    def batches(samples: list[Any]) -> tuple[list[tuple[Any, ...]], list[dict[str, np.ndarray]], np.ndarray]:
        args, feeds, labels = [], [], []
        for a, y in branch_batches(model, module, samples, cfg.batch_size):
            args.append(a)
            feeds.append({n: t.numpy() for n, t in zip(module.input_names, a)})
            labels.append(y)
        return args, feeds, (np.concatenate(labels) if labels else np.zeros(0))

    calib, val = pick("train", cfg.calib_samples), pick("test", cfg.val_samples)
    if len(calib) < 2 or not val:
        raise BuildError(f"pattern {pattern.key}: {len(calib)} train / {len(val)} test samples have it; export "
                         "needs >= 2 train and >= 1 test samples with every modality of the pattern")
    c_args, c_feeds, _ = batches(calib)
    v_args, v_feeds, v_labels = batches(val)
    return PatternData(c_args, c_feeds, v_args, v_feeds, v_labels)


def default_bundle_dir(cfg: BuildConfig, dataset_name: str) -> Path:
    return cfg.bundles_dir / f"{Path(dataset_name).name}-{cfg.method}-{'-'.join(cfg.precisions)}"


# ---- conversion (calibration/ owns FP16 and INT8) -------------------------------------------------
def convert_precision(precision: str, fp32_path: Path, out_path: Path, feeds: Sequence[dict[str, np.ndarray]],
                      cfg: BuildConfig) -> dict[str, Any]:
    """Write ``out_path`` at ``precision`` from the FP32 graph; returns the calibration report (JSON-able)."""
    try:
        if precision == "fp16":
            from calibration.fp16 import convert_fp16

            report = convert_fp16(fp32_path, out_path, list(feeds), io_dtype=cfg.io_dtype)
        elif cfg.int8_target == "tensorrt":
            from calibration.int8 import quantize_int8

            report = quantize_int8(fp32_path, out_path, list(feeds), method=cfg.int8_method, form="s8s8")
        else:
            from calibration.int8_cpu import choose_cpu_int8

            report = choose_cpu_int8(fp32_path, out_path, list(feeds), method=cfg.int8_method)
    except ImportError as exc:
        raise BuildError(f"{precision} needs calibration/{'fp16' if precision == 'fp16' else 'int8'}.py, which is "
                         f"not available ({exc}); build --precision fp32 instead") from exc
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def _calibration_summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("precision", "method", "form", "io_dtype", "passed", "failures", "kept_fp32_op_types", "tolerance",
            "sizes")
    out = {k: report[k] for k in keys if k in report}
    if "kept_fp32" in report:
        out["kept_fp32_count"] = len(report["kept_fp32"])
    if report.get("choice"):
        c = report["choice"]
        out["choice"] = {"chosen": c["chosen"], "why": c["why"],
                         "ratio_to_fp32": {f: v.get("ratio_to_fp32") for f, v in c["candidates"].items()},
                         "unbuilt": {f: v["error"] for f, v in c["candidates"].items() if "error" in v}}
    return out


# ---- the build ------------------------------------------------------------------------------
def build_bundle(cfg: BuildConfig, *, model: Any = None, dataset: Any = None) -> Path:
    """Export every pattern of the run at every requested precision into one atomic bundle.

    ``model``/``dataset`` skip loading the run (tests, notebooks). Precisions are built and
    parity-checked one at a time (fp32, fp16, int8), each for every pattern, so a failure is
    known as soon as it happens: unless ``allow_degraded``, the first failing graph stops the
    build with ``PrecisionStopped`` (a ParityError naming the precisions that passed). Nothing is
    written under the bundle's name then (runtime/atomic.py).
    """
    if cfg.engine == "tensorrt":
        from export.tensorrt import require_tensorrt

        require_tensorrt()  # fail before minutes of export work
    if model is None or dataset is None:
        model, dataset = load_inputs(cfg)
    from tqdm.auto import tqdm

    from export.select import select_patterns

    patterns, excluded = select_patterns(model.modalities, cfg.patterns, cfg.min_modalities, cfg.require)
    manifest_specs(model, cfg)  # a bad --sequence-policy fails before minutes of export
    out = Path(cfg.out or default_bundle_dir(cfg, model.info.name))
    seq = sequence_axes(model.info.modalities)
    entries: list[GraphEntry] = []
    ranges: dict[str, list[float]] = {}
    fusion: dict[str, Any] = {}  # pattern -> what the optimisation step fused (and what it expected)
    optimise = cfg.optimize and cfg.int8_target != "tensorrt"
    with atomic_bundle_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="mmedge-export-") as work:
        steps = tqdm(total=len(patterns) * len(cfg.precisions), desc=f"export {out.name}", unit="graph",
                     disable=not cfg.progress)
        sources: list[_PatternSource] = []
        for pattern in patterns:  # the FP32 export of every pattern: the source of every precision
            key, module = pattern.key, model.pattern_module(pattern).eval()
            data = pattern_data(model, dataset, pattern, cfg)
            widen_ranges(ranges, data.calib_feeds)
            fp32 = tmp / "graphs" / "fp32" / f"{key}.onnx"
            example = tuple(t[: min(4, len(t))] for t in data.calib_args[0])
            # LoRA merged, fusable attention; parity below is against the original (unmerged) branch
            twin = export_copy(module)
            standard = Path(work) / f"{key}.onnx"  # standard ONNX: the FP16 and TensorRT INT8 source
            info = export_pattern(twin.module, example, standard, dynamic_seq=seq,
                                  exporter=cfg.exporter)  # type: ignore[arg-type]
            fp32.parent.mkdir(parents=True, exist_ok=True)
            if optimise:
                opt = optimise_graph(standard, fp32, twin.attention_layers)
                fusion[key] = {**opt.to_dict(), "lora_merged": twin.lora_merged}
                for line in opt.warnings:
                    tqdm.write(f"warning: pattern {key}: {line}", file=sys.stderr)
            else:
                shutil.copyfile(standard, fp32)
            stamp_graph(fp32, key, "fp32")
            sources.append(_PatternSource(key, data, fp32, standard, info.seconds, torch_outputs(module, data.val_args),
                                          _confidence_data(model, dataset, pattern, cfg)))
        passed: list[str] = []
        for precision in cfg.precisions:
            for src in sources:
                steps.set_postfix_str(f"{src.key} {precision}")
                entry, parity = _build_graph(tmp, src, precision, model.task, cfg, optimise)
                entries.append(entry)
                steps.update(1)
                if not parity.passed and not cfg.allow_degraded:
                    steps.close()
                    raise PrecisionStopped(parity.failures, precision, passed, cfg.precisions)
            passed.append(precision)
        steps.close()
        order = {p.key: i for i, p in enumerate(patterns)}
        entries.sort(key=lambda e: (order[e.pattern], PRECISIONS.index(e.precision)))
        if "fp32" not in cfg.precisions:  # the FP32 graphs were only the source of the conversions
            shutil.rmtree(tmp / "graphs" / "fp32", ignore_errors=True)
        manifest = bundle_manifest(tmp, model, entries, cfg, ranges)
        manifest.extra["fusion"] = fusion
        manifest.excluded_patterns = excluded
        share_bundle_weights(tmp, manifest, cfg.shared_weights)
        if cfg.placeholders:
            manifest.baselines, manifest.placeholders = baseline_graph(tmp, model, cfg)
        if cfg.engine == "tensorrt":
            from export.tensorrt import build_engines

            manifest.extra["tensorrt"] = build_engines(tmp, manifest)
        for rep in sorted((tmp / "reports").rglob("*.json")) if (tmp / "reports").is_dir() else []:
            manifest.files[relpath(rep, tmp)] = sha256_file(rep)
        _add_confidence_files(tmp, manifest)
        manifest.save(tmp)  # last: a directory without manifest.json never loads
    return out


@dataclass
class _PatternSource:
    """One pattern's FP32 export and what every precision of it is built and checked against."""

    key: str
    data: PatternData
    fp32: Path  # the (fused) FP32 graph in the bundle: CPU-INT8 source
    standard: Path  # standard ONNX: FP16 and TensorRT-INT8 source
    export_seconds: float
    ref: dict[str, np.ndarray]  # the PyTorch branch's outputs on data.val_args
    confidence: Any


def _build_graph(tmp: Path, src: _PatternSource, precision: str, task: str, cfg: BuildConfig,
                 optimise: bool) -> tuple[GraphEntry, ParityResult]:
    """Convert (unless fp32), parity-check and describe one graph of the bundle."""
    path, calib, report = src.fp32, None, {}
    if precision != "fp32":
        path = tmp / "graphs" / precision / f"{src.key}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        source = src.fp32 if precision == "int8" and cfg.int8_target == "cpu" else src.standard
        report = convert_precision(precision, source, path, src.data.calib_feeds, cfg)
        seconds = time.perf_counter() - t0
        stamp_graph(path, src.key, precision)
        rep = tmp / "reports" / precision / f"{src.key}.json"
        rep.parent.mkdir(parents=True, exist_ok=True)
        rep.write_text(json.dumps(report, indent=1, default=str) + "\n")
        calib = {**_calibration_summary(report), "report": relpath(rep, tmp), "seconds": round(seconds, 3)}
    # one check for the .onnx and its .ort copy: same torch reference, feeds, labels, tolerance
    check = partial(validate_graph, pattern=src.key, precision=precision, feeds=src.data.val_feeds, ref=src.ref,
                    task=task, labels=src.data.val_labels, tolerance=cfg.tolerances.get(precision),
                    threads=cfg.threads)
    parity = check(path)
    entry = graph_entry(tmp, path, parity, calib, src.export_seconds, check if cfg.ort_format else None)
    if optimise:  # None: standard ONNX throughout (TensorRT target or --no-optimize)
        entry.fused_ops = fused_op_counts(onnx.load(str(path), load_external_data=False))
    if precision == "int8":
        entry.int8_type = str(report.get("form", "qdq-s8s8"))
    if src.confidence is not None:
        entry.confidence = _fit_confidence(path, src.key, precision, src.confidence, task, tmp, cfg)
    return entry, parity


# ---- confidence calibration (export/confidence.py) ---------------------------------------------
def _confidence_data(model: Any, dataset: Any, pattern: Any, cfg: BuildConfig) -> Any:
    if not cfg.confidence:
        return None
    from export.confidence import confidence_data

    return confidence_data(model, dataset, pattern, samples=cfg.confidence_samples, batch_size=cfg.batch_size,
                           seed=cfg.seed)


def _fit_confidence(path: Path, key: str, precision: str, data: Any, task: str, tmp: Path,
                    cfg: BuildConfig) -> dict[str, Any]:
    from export.confidence import fit_graph

    return fit_graph(path, key, precision, data, task, tmp, alpha=cfg.alpha, target_accuracy=cfg.target_accuracy,
                     threads=cfg.threads)


def _add_confidence_files(tmp: Path, manifest: Manifest) -> None:
    from export.confidence import report_files

    for png in report_files(tmp):
        manifest.files[relpath(png, tmp)] = sha256_file(png)
