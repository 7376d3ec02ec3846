"""onnxruntime: the only place in the project that creates an ``InferenceSession``.

- ``session_options``: the one SessionOptions builder. Runtime.load, ``mmedge bench``, export parity,
  the ``.ort`` copies and calibration all build their sessions here, so what the benchmark times is
  what ``Runtime.load`` builds; options that legitimately differ are named parameters
  (``optimize=False`` for graphs that must run node for node as written, ``save_optimized_to`` for
  writing a graph back).
- ``create_session``: the one ``InferenceSession`` call.
- Provider resolution: default order TensorRT EP > CUDA EP > CPU, filtered to this build, CPU
  always last. onnxruntime-gpu imports fine without a GPU and silently runs on CPU, so every
  runner asks its session which providers it actually got and warns when a GPU one is missing.
- ``OnnxRuntimeRunner`` (registered as ``"onnxruntime"``): one graph of a bundle, built from bytes
  whose sha256 was just checked against the manifest; ``InferenceSession.run`` is thread-safe.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleIntegrityError, ProviderFallbackWarning
from runtime.graph_checks import check_io, check_metadata, read_verified
from runtime.manifest import GraphEntry, Manifest, TensorSpec
from runtime.runners.base import GraphSource, RunnerBase, RunnerOptions

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
DEFAULT_ORDER: tuple[str, ...] = (TRT, CUDA, CPU)
ALIASES: dict[str, str] = {"tensorrt": TRT, "trt": TRT, "tensorrt-ep": TRT, "cuda": CUDA, "cpu": CPU}
GPU_PROVIDERS = frozenset({TRT, CUDA, "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider"})
# what `mmedge bench` times for this backend: variant name -> RunnerOptions overrides
BENCH_VARIANTS: dict[str, dict[str, Any]] = {"cpu": {"providers": ("cpu",)}, "cuda": {"providers": ("cuda",)},
                                             "tensorrt-ep": {"providers": ("tensorrt", "cuda")}}

ProviderSpec = str | tuple[str, dict[str, Any]]


# ---------------------------------------------------------------------------------- providers
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


def canonical(name: str) -> str:
    return ALIASES.get(str(name).lower(), str(name))


def resolve(requested: Sequence[ProviderSpec] | None, precision: str, bundle_dir: Path,
            trt_cache_dir: Path | None = None) -> list[ProviderSpec]:
    """The provider chain to hand onnxruntime: requested (or TRT > CUDA > CPU), filtered to what this
    build of onnxruntime has, CPU always last as the fallback. Unavailable requests are warned about."""
    have = available()
    names_: list[ProviderSpec] = list(requested) if requested else [p for p in DEFAULT_ORDER if p in have]
    chain: list[ProviderSpec] = []
    for spec in names_:
        name, opts = (spec if isinstance(spec, tuple) else (spec, None))
        name = canonical(name)
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
    if CPU not in names(chain):
        chain.append(CPU)
    return chain


def names(chain: Sequence[ProviderSpec]) -> list[str]:
    return [c[0] if isinstance(c, tuple) else c for c in chain]


def check_fallback(requested: Sequence[ProviderSpec], used: list[str], pattern: str) -> list[str]:
    """GPU providers that were handed to onnxruntime but are not in the session; warns once per session."""
    lost = [p for p in names(requested) if p in GPU_PROVIDERS and p not in used]
    if lost:
        warnings.warn(ProviderFallbackWarning(
            f"pattern {pattern!r}: requested {lost} but onnxruntime runs it on {used}; check CUDA/cuDNN/TensorRT "
            "libraries (onnxruntime logs why with log_severity_level=0)"), stacklevel=3)
    return lost


# ---------------------------------------------------------------------------------- sessions
def session_options(*, threads: int | None = None, optimize: bool = True, log_severity: int = 3,
                    external_data_dir: Path | None = None, ort_format: bool = False,
                    save_optimized_to: Path | None = None, save_format: str | None = None) -> Any:
    """The one SessionOptions builder.

    ``threads``: intra-op threads (None: onnxruntime's default, all cores); inter-op is 1 and execution
    sequential either way (our graphs have no parallel branches worth a second pool).
    ``optimize=False``: ORT_DISABLE_ALL, every node runs as written (calibration ranges, .ort copies).
    ``log_severity`` 3: FP16/INT8 graphs log harmless cast warnings; fallbacks are reported by us.
    ``external_data_dir``: where a graph loaded from bytes finds its external-data files.
    ``ort_format``: the model bytes are an ORT-format file. ``save_optimized_to`` / ``save_format``:
    write the (optimised) graph there at session creation.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = log_severity
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if external_data_dir is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_data_dir))
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    if save_optimized_to is not None:
        so.optimized_model_filepath = str(save_optimized_to)
    if save_format is not None:
        so.add_session_config_entry("session.save_model_format", save_format)
    return so


def create_session(model: bytes | str | Path, options: Any = None,
                   providers: Sequence[ProviderSpec] = (CPU,)) -> Any:
    """The project's only ``onnxruntime.InferenceSession`` constructor call."""
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=options if options is not None else session_options(),
                                providers=list(providers))


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def _spec(arg: Any) -> TensorSpec:
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type),
                      [d if isinstance(d, int) else str(d) for d in (arg.shape or [])])


class OnnxRuntimeRunner(RunnerBase):
    """One onnxruntime session. ``output_names``: the outputs ``run`` returns, in that order (default: all)."""

    def __init__(self, session: Any, path: Path, requested: Sequence[ProviderSpec] = (CPU,),
                 output_names: Sequence[str] | None = None, pattern: str = "") -> None:
        self.session, self.path = session, Path(path)
        self.inputs = [_spec(a) for a in session.get_inputs()]
        by_name = {a.name: a for a in session.get_outputs()}
        self._names = list(output_names) if output_names else list(by_name)
        self.outputs = [_spec(by_name[n]) for n in self._names if n in by_name]
        self.requested = names(requested)
        self.lost_providers = check_fallback(requested, session.get_providers(), pattern)

    @property
    def providers_in_use(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._names, dict(feeds))

    def close(self) -> None:
        self.session = _Closed()


class _Closed:
    def run(self, *args: Any) -> Any:
        raise RuntimeError("this runner was closed")

    def get_providers(self) -> list[str]:
        return []


def open_graph(source: GraphSource, options: RunnerOptions) -> OnnxRuntimeRunner:
    """The registered factory: ``source.entry``'s graph (or its parity-checked ``.ort`` copy when asked
    for on a CPU-only chain) from verified bytes, its metadata and I/O checked against the manifest."""
    entry, bundle = source.entry, Path(source.bundle_dir)
    chain = list(options.providers) if options.providers else [CPU]
    # .ort copies load ~3x faster but are ORT-optimised for CPU, and only copies that passed their own
    # parity check are used (ORT applies fewer fusions to them at load, so INT8 numbers can differ)
    ort_file = entry.usable_ort_file if options.prefer_ort_format and names(chain) == [CPU] else None
    path = bundle / (ort_file or entry.file)
    model = read_verified(path, (entry.ort_sha256 or "") if ort_file else entry.sha256, entry.pattern)
    so = session_options(threads=options.threads, external_data_dir=path.parent, ort_format=path.suffix == ".ort")
    try:
        sess = create_session(model, so, chain)
    except Exception as exc:  # noqa: BLE001 - sha256 matched, so the exporter wrote a graph ORT rejects
        raise BundleIntegrityError(f"onnxruntime cannot load {path.name}: {type(exc).__name__}: {exc}; "
                                   "re-export the bundle with a matching onnxruntime", pattern=entry.pattern,
                                   path=entry.file) from None
    check_metadata(sess.get_modelmeta().custom_metadata_map, entry)
    check_io(sess.get_inputs(), sess.get_outputs(), entry)
    return OnnxRuntimeRunner(sess, path, chain, [o.name for o in entry.outputs], entry.pattern)


def resolve_options(options: RunnerOptions, bundle_dir: Path, precision: str) -> RunnerOptions:
    chain = resolve(list(options.providers) if options.providers else None, precision, bundle_dir,
                    options.trt_cache_dir)
    return options.replace(providers=tuple(chain))


def check(bundle_dir: Path, manifest: Manifest, entry: GraphEntry | None, options: RunnerOptions) -> str | None:
    """Why the first requested provider cannot run here (the benchmark times nothing it would not get)."""
    want = canonical(names(options.providers)[0]) if options.providers else CPU
    have = available()
    if want not in have:
        return f"{want} not in onnxruntime.get_available_providers() = {have}"
    return None
