"""Native TensorRT 10 runner over a bundle's prebuilt engines (tensorrt + cuda-python, imported lazily).

NOT RUN ANYWHERE YET: neither tensorrt nor a GPU was available where this was written; it is
written against the TensorRT 10 Python API (``execute_async_v3``, ``set_input_shape``,
``set_tensor_address``, ``get_tensor_profile_shape``) and cuda-python's ``cudart``, and its
tests skip with a reason when those are absent. Everything up to deserialising the engine
(checksums, the hardware record) is plain Python and is tested here.

Engines come from ``mmedge export build --engine tensorrt`` at ``runtime.manifest.engine_files``
(``engines/<precision>/<pattern>.engine`` + a ``.json`` hardware record), both checksummed in the
manifest. Engines are specific to one GPU model, compute capability and TensorRT version: the
record is compared with the running machine and a mismatch is refused (``EngineMismatch``) with
the command that rebuilds them.

One runner = one engine, one execution context, one CUDA stream, and device buffers sized once
for the largest shapes of the engine's optimisation profile; all are freed by ``close()``.
Dynamic shapes are set per call (``set_input_shape``) within the profile; a shape outside it is
the input's typed error (``ShapeOutsideProfile``). Thread safety: one context cannot run two
calls at once, so ``run`` holds a lock (calls on one runner are serialised; for parallel GPU
work, load one Runtime per thread). A call is host->device copies, ``execute_async_v3`` and
device->host copies on the runner's stream, comparable with ``session.run`` on the CUDA EP.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleIntegrityError, InferenceError, InvalidArgument
from runtime.graph_checks import read_verified
from runtime.manifest import GraphEntry, Manifest, TensorSpec, engine_files
from runtime.patterns import feed_modality
from runtime.runners.base import (ArtifactMissing, BackendUnavailable, EngineMismatch, GraphSource, RunnerBase,
                                  RunnerOptions, ShapeOutsideProfile)

REBUILD = "rebuild the engines on this machine: `mmedge export build --engine tensorrt ...`"
RECORD_KEYS = ("gpu", "compute_capability", "tensorrt")  # what an engine is specific to


def import_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, cudart) or BackendUnavailable saying which one is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"the TensorRT backend needs the tensorrt (10.x) package: {exc}. It ships with "
                                 "JetPack on Jetson and with NVIDIA's pip index on x86 GPUs; use "
                                 "backend='onnxruntime' elsewhere") from None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise BackendUnavailable(f"the TensorRT backend needs cuda-python (cuda.bindings.runtime): {exc}; "
                                     "pip install cuda-python") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} found; this runner needs the TensorRT 10 API")
    return trt, cudart


def _ok(result: Any) -> Any:
    """cudart calls return (error, *values): raise on a non-zero error, else the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise InferenceError(f"CUDA error {err}")
    return None if not rest else rest[0] if len(rest) == 1 else rest


def current_machine() -> dict[str, str]:
    """The running GPU (device 0 of this process) and TensorRT version, in the record's terms."""
    trt, cudart = import_tensorrt()
    dev = _ok(cudart.cudaGetDevice())
    prop = _ok(cudart.cudaGetDeviceProperties(dev))
    name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu": name.strip(), "compute_capability": f"{prop.major}.{prop.minor}", "tensorrt": trt.__version__}


def check_record(record: Mapping[str, Any], machine: Mapping[str, str], where: str, pattern: str) -> None:
    """Refuse an engine whose hardware record does not name this GPU, compute capability and TensorRT."""
    diffs = [f"{k}: engine {record.get(k)!r}, this machine {machine.get(k)!r}" for k in RECORD_KEYS
             if str(record.get(k, "")).strip() != str(machine.get(k, "")).strip() or not record.get(k)]
    if diffs:
        raise EngineMismatch(f"TensorRT engine {where} was built for another machine ({'; '.join(diffs)}); engines "
                             f"are specific to one GPU and TensorRT version: {REBUILD}", pattern=pattern, path=where)


def read_record(source: GraphSource) -> tuple[Path, bytes, dict[str, Any]]:
    """The engine's verified bytes and hardware record, or a typed error (missing, tampered, swapped)."""
    entry, files = source.entry, source.manifest.files
    engine_rel, record_rel = engine_files(entry.precision, entry.pattern)
    missing = [r for r in (engine_rel, record_rel) if r not in files]
    if missing:
        raise ArtifactMissing(f"bundle {Path(source.bundle_dir).name} has no TensorRT engine for pattern "
                              f"{entry.pattern!r} at {entry.precision} (manifest lacks {missing}); {REBUILD}",
                              pattern=entry.pattern, path=missing[0])
    path = Path(source.bundle_dir) / engine_rel
    data = read_verified(path, files[engine_rel], entry.pattern)
    try:
        record = json.loads(read_verified(Path(source.bundle_dir) / record_rel, files[record_rel], entry.pattern))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleIntegrityError(f"engine record {record_rel} is not JSON ({exc}); {REBUILD}",
                                   pattern=entry.pattern, path=record_rel) from None
    if not isinstance(record, dict) or (record.get("pattern"), record.get("precision")) != (entry.pattern,
                                                                                           entry.precision):
        got = (record.get("pattern"), record.get("precision")) if isinstance(record, dict) else record
        raise BundleIntegrityError(f"engine record {record_rel} names {got}, not ({entry.pattern!r}, "
                                   f"{entry.precision!r}): engine files were swapped; {REBUILD}",
                                   pattern=entry.pattern, path=record_rel)
    if record.get("onnx") != entry.file:  # e.g. the full graph with placeholders: no engine is built for it
        raise ArtifactMissing(f"the TensorRT engine {engine_rel} was built from {record.get('onnx')!r}, not from "
                              f"{entry.file!r}; the bundle has no engine for that graph", pattern=entry.pattern,
                              path=engine_rel)
    return path, data, record


class TensorRTRunner(RunnerBase):
    """One deserialised engine with its context, stream and device buffers (see the module docstring)."""

    def __init__(self, data: bytes, entry: GraphEntry, path: Path) -> None:
        trt, cudart = import_tensorrt()
        self.trt, self.cudart, self.path, self.pattern = trt, cudart, Path(path), entry.pattern
        self._lock = threading.Lock()
        self._bufs: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self.stream: Any = None
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineMismatch(f"TensorRT could not deserialise {path.name} (another TensorRT version or GPU?); "
                                 f"{REBUILD}", pattern=entry.pattern, path=str(path))
        io = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in io}
        self._dtype = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in io}
        self._in = [n for n in io if is_in[n]]
        self._out = [o.name for o in entry.outputs]
        self._check_io(entry, {n for n in io if not is_in[n]})
        self.inputs = [TensorSpec(t.name, t.dtype, list(t.shape)) for t in entry.inputs]
        self.outputs = [TensorSpec(t.name, t.dtype, list(t.shape)) for t in entry.outputs]
        # profile 0: (min, opt, max) per input; the only profile export/tensorrt.py builds
        self.profile = {n: tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(n, 0))
                        for n in self._in}
        self.context = self.engine.create_execution_context()
        try:
            self.stream = _ok(cudart.cudaStreamCreate())
            self._allocate(io)
        except BaseException:
            self.close()
            raise

    def _check_io(self, entry: GraphEntry, outputs: set[str]) -> None:
        want = {t.name: np.dtype(t.dtype) for t in entry.inputs}
        problems = [] if set(self._in) == set(want) else [f"inputs {sorted(self._in)} != manifest {sorted(want)}"]
        problems += [f"input {n!r} is {self._dtype[n]}, manifest says {d}" for n, d in want.items()
                     if n in self._dtype and self._dtype[n] != d]
        problems += [f"output {n!r} is not an engine output ({sorted(outputs)})" for n in self._out if n not in outputs]
        if problems:
            raise BundleIntegrityError(f"engine {self.path.name} does not match its graph's manifest entry: "
                                       f"{'; '.join(problems)}; {REBUILD}", pattern=entry.pattern, path=str(self.path))

    def _allocate(self, io: list[str]) -> None:
        """Device buffers once, for the profile's largest shapes (output sizes inferred at those shapes)."""
        for n in self._in:
            if not self.context.set_input_shape(n, self.profile[n][2]):
                raise InferenceError(f"TensorRT refused the profile's max shape {self.profile[n][2]} for {n!r}",
                                     pattern=self.pattern)
        for n in io:
            nbytes = max(int(np.prod(tuple(self.context.get_tensor_shape(n)))) * self._dtype[n].itemsize, 1)
            ptr = _ok(self.cudart.cudaMalloc(nbytes))
            self._bufs[n] = (int(ptr), nbytes)
            self.context.set_tensor_address(n, int(ptr))

    @property
    def providers_in_use(self) -> list[str]:
        return ["tensorrt"]

    @property
    def lost_providers(self) -> list[str]:
        return []

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile[name]
        if len(shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(shape, lo, hi)):
            raise ShapeOutsideProfile(f"input {name!r} has shape {list(shape)}; the TensorRT engine accepts "
                                      f"{list(lo)} to {list(hi)} (its optimisation profile). Send smaller batches "
                                      "or shorter sequences, or rebuild the engines with a larger profile",
                                      pattern=self.pattern, modality=feed_modality(name))

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self._dtype[n]) for n in self._in}
        for n, arr in arrays.items():
            self._check_shape(n, arr.shape)
        with self._lock:  # one context: its shapes and buffers belong to one call at a time
            if self.stream is None:
                raise InferenceError("this TensorRT runner was closed", pattern=self.pattern)
            for n, arr in arrays.items():
                if not self.context.set_input_shape(n, arr.shape):
                    raise ShapeOutsideProfile(f"TensorRT refused shape {list(arr.shape)} for input {n!r}",
                                              pattern=self.pattern, modality=feed_modality(n))
                _ok(self.cudart.cudaMemcpyAsync(self._bufs[n][0], arr.ctypes.data, arr.nbytes, h2d, self.stream))
            if not self.context.execute_async_v3(int(self.stream)):
                raise InferenceError(f"TensorRT execute_async_v3 failed on {self.path.name}", pattern=self.pattern)
            outs = [np.empty(tuple(self.context.get_tensor_shape(n)), self._dtype[n]) for n in self._out]
            for n, host in zip(self._out, outs):
                _ok(self.cudart.cudaMemcpyAsync(host.ctypes.data, self._bufs[n][0], host.nbytes, d2h, self.stream))
            _ok(self.cudart.cudaStreamSynchronize(self.stream))
        return outs

    def close(self) -> None:
        """Free the device buffers and the stream (idempotent); the context and engine go with them."""
        with self._lock:
            for ptr, _ in self._bufs.values():
                self.cudart.cudaFree(ptr)
            self._bufs.clear()
            if self.stream is not None:
                self.cudart.cudaStreamDestroy(self.stream)
                self.stream = None
            self.context = None

    def __del__(self) -> None:  # a runner dropped without close() still returns its GPU memory
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: cudart may be gone
            pass


def open_engine(source: GraphSource, options: RunnerOptions) -> TensorRTRunner:
    """The registered factory: verified engine + record, hardware check, then the runner."""
    path, data, record = read_record(source)
    check_record(record, current_machine(), str(path.relative_to(source.bundle_dir)), source.entry.pattern)
    return TensorRTRunner(data, source.entry, path)


def check(bundle_dir: Path, manifest: Manifest, entry: GraphEntry | None, options: RunnerOptions) -> str | None:
    """Why native TensorRT cannot run here (libraries, engines), without loading anything."""
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return f"native TensorRT: {exc}"
    if entry is not None:
        rel, record_rel = engine_files(entry.precision, entry.pattern)
        if rel not in manifest.files or record_rel not in manifest.files:
            return f"native TensorRT: no engine {rel} in the bundle"
        try:  # advisory (``open_engine`` verifies the checksum): which graph the engine was built from
            built_from = json.loads((Path(bundle_dir) / record_rel).read_text()).get("onnx")
        except (OSError, ValueError, AttributeError):
            return f"native TensorRT: engine record {record_rel} is unreadable"
        return None if built_from == entry.file else f"native TensorRT: no engine built from {entry.file}"
    if not any(k.startswith("engines/") and k.endswith(".engine") for k in manifest.files):
        return (f"native TensorRT: {Path(bundle_dir).name} has no engines; build them on this GPU with "
                "`mmedge export build --engine tensorrt`")
    return None


def resolve_options(options: RunnerOptions, bundle_dir: Path, precision: str) -> RunnerOptions:
    """Refuse onnxruntime-only options: an engine has no provider chain, .ort copy or EP cache."""
    given = [name for name, value in (("providers", options.providers), ("prefer_ort_format", options.prefer_ort_format),
                                      ("trt_cache_dir", options.trt_cache_dir)) if value]
    if given:
        raise InvalidArgument(f"backend 'tensorrt' runs the bundle's prebuilt engines; {', '.join(given)} "
                              "only apply to backend 'onnxruntime' (whose TensorRT execution provider is "
                              "providers=['tensorrt'])")
    return options
