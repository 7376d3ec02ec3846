"""TensorRT engines from a bundle's ONNX graphs (TensorRT 10 Python API, imported lazily).

NOT RUN HERE: tensorrt cannot be installed on our machines (DESIGN.md). This is written
against the TensorRT 10 API and has never been executed; its tests skip when it is absent.

Per (pattern, precision) graph of a bundle:
- fp32: the FP32 graph, no precision flags;
- fp16: the *calibrated* FP16 graph, parsed STRONGLY_TYPED so TensorRT keeps exactly the
  nodes calibration left in FP32 (a plain FP16 flag would let it re-pick precisions and
  undo the keep-list that avoids LayerNorm/Softmax overflow, NVIDIA/TensorRT#2564);
- int8: the QDQ graph (explicit quantization); BuilderFlag.INT8 (+FP16 for the layers
  between Q/DQ pairs); the scales come from the graph, no TensorRT calibrator.
One optimisation profile per graph: batch 1 / opt / max, sequence 1 / max / max (the
preprocess spec's max_frames / max_length). A timing cache file is shared by every graph of
the bundle, the workspace is capped (Jetson boards run out of memory otherwise), and the
GPU name, compute capability and TensorRT version are written beside each engine (the hardware
record at ``runtime.manifest.engine_files``), read by the same function the TensorRT runner
compares them with (``runtime.runners.tensorrt.current_machine``): engines are not portable
across GPUs or TensorRT versions, and the runner refuses a mismatch. Engine and record are both
checksummed in the manifest's ``files``.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from runtime.errors import MMEdgeError
from runtime.manifest import GraphEntry, Manifest, engine_files, sha256_file
from runtime.modality_spec import DEFAULT_MAX_FRAMES, spec_of
from runtime.patterns import seq_axis_modality

DEFAULT_WORKSPACE = 1 << 30  # 1 GiB
TIMING_CACHE = "engines/timing.cache"


class TensorRTUnavailable(MMEdgeError, RuntimeError):
    """--engine tensorrt on a machine without TensorRT 10."""


def require_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise TensorRTUnavailable(
            "--engine tensorrt needs the TensorRT 10 Python package (`import tensorrt` failed: "
            f"{exc}). It ships with JetPack on Jetson and with NVIDIA's pip index on x86 GPUs; it cannot be "
            "installed on a machine without an NVIDIA GPU. Use --engine onnxruntime here, and build engines on "
            "the target device (engines are specific to its GPU and TensorRT version).") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} found; this code targets the TensorRT 10 API")
    return trt


def gpu_info() -> dict[str, str]:
    """GPU name / compute capability / driver from nvidia-smi (empty when unavailable)."""
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, cap, driver = (s.strip() for s in line.split(","))
    return {"gpu": name, "compute_capability": cap, "driver": driver}


def _profile_shapes(entry: GraphEntry, seq_max: dict[str, int], max_batch: int, opt_batch: int
                    ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    out = {}
    for spec in entry.inputs:
        lo, opt, hi = [], [], []
        for dim in spec.shape:
            if dim == "batch":
                lo.append(1), opt.append(opt_batch), hi.append(max_batch)
            elif isinstance(dim, str):  # "<modality>_seq"
                top = seq_max.get(seq_axis_modality(dim) or "", DEFAULT_MAX_FRAMES)
                lo.append(1), opt.append(top), hi.append(top)
            else:
                lo.append(dim), opt.append(dim), hi.append(dim)
        out[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def build_engine(onnx_path: Path, engine_path: Path, entry: GraphEntry, *, seq_max: dict[str, int],
                 timing_cache: Path, max_batch: int = 32, opt_batch: int = 1,
                 workspace: int = DEFAULT_WORKSPACE) -> dict[str, Any]:
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0  # explicit batch is the only mode in TensorRT 10
    if entry.precision == "fp16":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path} (pattern {entry.pattern}): {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if entry.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales from the graph's Q/DQ
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shapes = _profile_shapes(entry, seq_max, max_batch, opt_batch)
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (pattern {entry.pattern})")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    from runtime.runners.tensorrt import current_machine

    meta = {"pattern": entry.pattern, "precision": entry.precision, "onnx": entry.file,
            "workspace_bytes": workspace, "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
            "driver": gpu_info().get("driver"), **current_machine()}
    engine_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def build_engines(bundle_dir: Path, manifest: Manifest, *, max_batch: int = 32,
                  workspace: int = DEFAULT_WORKSPACE) -> dict[str, Any]:
    """One engine per graph of the bundle, under engines/<precision>/<pattern>.engine; returns the manifest note."""
    bundle_dir = Path(bundle_dir)
    seq_max = {m: int(spec_of(e.preprocess).sequence_length or 1) for m, e in manifest.modalities.items()}
    cache = bundle_dir / TIMING_CACHE
    engines = []
    for entry in manifest.graphs:
        rel, record_rel = engine_files(entry.precision, entry.pattern)
        path = bundle_dir / rel
        if path.with_suffix(".json") != bundle_dir / record_rel:
            raise RuntimeError(f"engine record path {record_rel} is not beside {rel}")
        meta = build_engine(bundle_dir / entry.file, path, entry, seq_max=seq_max, timing_cache=cache,
                            max_batch=max_batch, workspace=workspace)
        manifest.files[rel] = sha256_file(path)
        manifest.files[record_rel] = sha256_file(bundle_dir / record_rel)
        engines.append({**meta, "file": rel, "record": record_rel})
    return {"engines": engines, "timing_cache": TIMING_CACHE, **gpu_info()}
