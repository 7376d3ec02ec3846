"""mmedge runtime: torch-free inference over a bundle of per-pattern graphs.

Imports numpy, onnxruntime and tokenizers only (TensorRT lazily). Never
imports torch, transformers, train, export or calibration.

    from runtime import Runtime
    rt = Runtime.load(bundle_dir, precision="fp32")
    rt.predict({"image": frame, "audio": None})
"""
from __future__ import annotations

from typing import Any

from runtime.patterns import Pattern, all_patterns

__all__ = ["Pattern", "all_patterns", "Runtime", "Prediction", "SensorHub"]


def __getattr__(name: str) -> Any:
    # Lazy: `mmedge --help` and manifest/pattern users should not pay for importing onnxruntime.
    if name in ("Runtime", "Prediction"):
        from runtime import session

        return getattr(session, name)
    if name == "SensorHub":
        from runtime.sensors import SensorHub

        return SensorHub
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
