"""Inference backends behind one seam (see runtime.runners.base): ``onnxruntime`` and native ``tensorrt``.

Importing this package imports neither onnxruntime nor tensorrt; each backend imports its library
when a runner is built. ``register_runner`` adds a backend (``Runtime.load(backend=...)`` and
``mmedge bench`` then use it).
"""
from __future__ import annotations

from runtime.runners import onnxrt as _onnxrt
from runtime.runners import tensorrt as _tensorrt
from runtime.runners.base import (ArtifactMissing, BackendUnavailable, EngineMismatch, GraphSource, Runner,
                                  RunnerBackend, RunnerBase, RunnerOptions, ShapeOutsideProfile, UnknownRunner,
                                  available_runners, get_runner, register_runner, unregister_runner)

register_runner("onnxruntime", _onnxrt.open_graph, check=_onnxrt.check, resolve=_onnxrt.resolve_options,
                variants=_onnxrt.BENCH_VARIANTS, replace=True)
register_runner("tensorrt", _tensorrt.open_engine, check=_tensorrt.check, resolve=_tensorrt.resolve_options,
                replace=True)

__all__ = ["ArtifactMissing", "BackendUnavailable", "EngineMismatch", "GraphSource", "Runner", "RunnerBackend",
           "RunnerBase", "RunnerOptions", "ShapeOutsideProfile", "UnknownRunner", "available_runners", "get_runner",
           "register_runner", "unregister_runner"]
