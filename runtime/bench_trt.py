"""Native TensorRT timing of a bundle's prebuilt engines (TensorRT 10 + cuda-python, imported lazily).

NOT RUN HERE: neither tensorrt nor a GPU is available on our machines (DESIGN.md); this is
written against the TensorRT 10 / cuda-python 12 APIs and is skipped with a reason when they
are absent. Engines are not built here: ``mmedge export build --engine tensorrt`` writes them
to ``engines/<precision>/<pattern>.engine`` (specific to one GPU and TensorRT version). A
timed call is host->device copies, ``execute_async_v3`` and device->host copies, so it is
comparable with ``session.run`` on the CUDA/TensorRT EPs (which copy too).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def engine_path(bundle: Path, precision: str, pattern: str) -> Path:
    return Path(bundle) / "engines" / precision / f"{pattern}.engine"


def status(bundle: Path, files: dict[str, str]) -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "native TensorRT: the tensorrt package is not importable"
    try:
        _cudart()
    except ImportError:
        return False, "native TensorRT: cuda-python (cuda.bindings.runtime / cuda.cudart) is not importable"
    if not any(k.startswith("engines/") and k.endswith(".engine") for k in files):
        return False, (f"native TensorRT: {Path(bundle).name} has no engines; build them on this GPU with "
                       "`mmedge export build --engine tensorrt`")
    return True, ""


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _ok(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class EngineRunner:
    """One engine, one execution context, device buffers sized per input shape (reused)."""

    def __init__(self, path: Path) -> None:
        import tensorrt as trt

        self.trt, self.cudart = trt, _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path} (other GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.stream = _ok(self.cudart.cudaStreamCreate())
        self._bufs: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._shape: tuple[Any, ...] | None = None
        self._host: dict[str, np.ndarray] = {}

    def _prepare(self, feeds: dict[str, np.ndarray]) -> None:
        key = tuple(feeds[n].shape for n in self.inputs)
        if key == self._shape:
            return
        for n in self.inputs:
            self.context.set_input_shape(n, feeds[n].shape)
        for n in self.names:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if n in self._bufs:
                _ok(self.cudart.cudaFree(self._bufs[n][0]))
            ptr = _ok(self.cudart.cudaMalloc(max(nbytes, 1)))
            self._bufs[n] = (ptr, nbytes)
            self.context.set_tensor_address(n, ptr)
            if n not in self.inputs:
                self._host[n] = np.empty(shape, dtype)
        self._shape = key

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._prepare(feeds)
        h2d, d2h = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.inputs:
            arr = np.ascontiguousarray(feeds[n])
            _ok(self.cudart.cudaMemcpyAsync(self._bufs[n][0], arr.ctypes.data, self._bufs[n][1], h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for n, host in self._host.items():
            _ok(self.cudart.cudaMemcpyAsync(host.ctypes.data, self._bufs[n][0], self._bufs[n][1], d2h, self.stream))
        _ok(self.cudart.cudaStreamSynchronize(self.stream))
        return self._host


def bench_engine(path: Path, feeds_for: Callable[[int], dict[str, np.ndarray]], batch_sizes: Sequence[int],
                 timer: Callable[[Callable[[], Any]], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    runner = EngineRunner(path)
    out: dict[str, Any] = {"session_create_s": time.perf_counter() - t0, "providers_in_use": ["tensorrt"],
                           "fell_back": False, "batches": {}}
    for b in batch_sizes:
        feeds = feeds_for(b)
        try:
            st = timer(lambda: runner.run(feeds))
        except Exception as exc:  # e.g. batch above the engine's optimisation profile
            out.setdefault("errors", {})[str(b)] = f"{type(exc).__name__}: {exc}"
            continue
        st["throughput_per_s"] = b / (st["p50_ms"] * 1e-3)
        out["batches"][str(b)] = st
    return out
