"""onnxruntime execution providers: default order, TensorRT EP options, fallback detection.

onnxruntime-gpu imports fine without a GPU and silently runs on CPU, so the runtime asks
every session which providers it actually got and warns when a GPU one is missing.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

from runtime.errors import ProviderFallbackWarning

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
DEFAULT_ORDER: tuple[str, ...] = (TRT, CUDA, CPU)
ALIASES: dict[str, str] = {"tensorrt": TRT, "trt": TRT, "tensorrt-ep": TRT, "cuda": CUDA, "cpu": CPU}
GPU_PROVIDERS = frozenset({TRT, CUDA, "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider"})

ProviderSpec = str | tuple[str, dict[str, Any]]


def available() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def default_trt_cache_dir(bundle_dir: Path, precision: str) -> Path:
    """Per bundle + precision, outside the bundle (a bundle may be read-only and must stay hash-clean)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmedge" / "trt"
    digest = hashlib.sha256(str(Path(bundle_dir).resolve()).encode()).hexdigest()[:12]
    return root / f"{Path(bundle_dir).name}-{digest}" / precision


def trt_options(precision: str, cache_dir: Path) -> dict[str, Any]:
    return {
        "trt_fp16_enable": precision == "fp16",
        # INT8 bundles are explicit QDQ graphs: TensorRT needs the INT8 flag to honour the Q/DQ nodes.
        "trt_int8_enable": precision == "int8",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
    }


def resolve(requested: list[ProviderSpec] | None, precision: str, bundle_dir: Path,
            trt_cache_dir: Path | None = None) -> list[ProviderSpec]:
    """The provider chain to hand onnxruntime: requested (or TRT > CUDA > CPU), filtered to what this
    build of onnxruntime has, CPU always last as the fallback. Unavailable requests are warned about."""
    have = available()
    names: list[ProviderSpec] = list(requested) if requested else [p for p in DEFAULT_ORDER if p in have]
    chain: list[ProviderSpec] = []
    for spec in names:
        name, opts = (spec if isinstance(spec, tuple) else (spec, None))
        name = ALIASES.get(str(name).lower(), str(name))
        if name not in have:
            warnings.warn(ProviderFallbackWarning(
                f"provider {name} was requested but this onnxruntime build only has {have}; skipping it "
                "(install onnxruntime-gpu, never beside onnxruntime, for CUDA/TensorRT)"), stacklevel=3)
            continue
        if name == TRT:
            cache = Path(trt_cache_dir) if trt_cache_dir else default_trt_cache_dir(bundle_dir, precision)
            cache.mkdir(parents=True, exist_ok=True)
            opts = {**trt_options(precision, cache), **(opts or {})}
        chain.append((name, opts) if opts else name)
    if CPU not in [c[0] if isinstance(c, tuple) else c for c in chain]:
        chain.append(CPU)
    return chain


def names(chain: list[ProviderSpec]) -> list[str]:
    return [c[0] if isinstance(c, tuple) else c for c in chain]


def check_fallback(requested: list[ProviderSpec], used: list[str], pattern: str) -> list[str]:
    """GPU providers that were handed to onnxruntime but are not in the session; warns once per session."""
    lost = [p for p in names(requested) if p in GPU_PROVIDERS and p not in used]
    if lost:
        warnings.warn(ProviderFallbackWarning(
            f"pattern {pattern!r}: requested {lost} but onnxruntime runs it on {used}; check CUDA/cuDNN/TensorRT "
            "libraries (onnxruntime logs why with log_severity_level=0)"), stacklevel=3)
    return lost
