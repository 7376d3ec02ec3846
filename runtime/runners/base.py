"""The runner seam: what the runtime and the benchmark need from an inference backend.

A *runner* executes one graph of a bundle (one pattern at one precision) on one backend
(onnxruntime, native TensorRT, ...). Everything above it (preprocessing, pattern routing, typed
errors, the sensor hub, ``Prediction``) is backend-independent code in ``runtime.session``.

A backend plugs in with ``register_runner(name, open, ...)``:

- ``open(source, options) -> Runner`` builds the runner of ``source.entry`` (verifying the bytes it
  loads against the manifest's sha256 and refusing, typed, an artifact it cannot serve);
- ``check(bundle_dir, manifest, entry, options)`` (optional) says why the backend cannot run here with
  ``options``, or this graph (``entry``; None: the backend at all), without building anything: the
  benchmark's skip reasons;
- ``resolve(options, bundle_dir, precision)`` (optional) settles per-load options once (onnxruntime:
  the provider chain, so an unavailable provider is warned about once, not once per graph);
- ``variants`` (optional) names the configurations the benchmark times, each a set of option
  overrides (onnxruntime: ``cpu``, ``cuda``, ``tensorrt-ep``); default one variant, the runner's name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from runtime.errors import BundleIntegrityError, InputShapeError, MMEdgeError
from runtime.manifest import GraphEntry, Manifest, TensorSpec


@runtime_checkable
class Runner(Protocol):
    """One graph on one backend. ``inputs``/``outputs`` use the manifest's TensorSpec (numpy dtype
    names, symbolic axes as strings); ``run`` returns one array per ``outputs`` entry, in that order."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    path: Path  # the artifact it was built from (graph, .ort copy, engine)

    @property
    def providers_in_use(self) -> list[str]: ...

    @property
    def lost_providers(self) -> list[str]:
        """Accelerators that were requested but are not in use (a silent fallback); [] when none."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
                 ) -> None: ...


class RunnerBase:
    """Context-manager plumbing for runners (``with runner: ...`` closes it)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class GraphSource:
    """What a runner is built from: a verified bundle and one of its graph entries."""

    bundle_dir: Path
    manifest: Manifest
    entry: GraphEntry


@dataclass(frozen=True)
class RunnerOptions:
    """Options every backend receives; each reads the ones it understands.

    ``providers``: onnxruntime names or aliases, optionally ``(name, options)`` (resolved to a chain
    by the onnxruntime backend). ``threads``: intra-op threads (None: the backend's default).
    """

    providers: tuple[Any, ...] | None = None
    threads: int | None = None
    trt_cache_dir: Path | None = None
    prefer_ort_format: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "RunnerOptions":
        return dataclasses.replace(self, **changes)


Open = Callable[[GraphSource, RunnerOptions], Runner]
Check = Callable[[Path, Manifest, "GraphEntry | None", RunnerOptions], "str | None"]
Resolve = Callable[[RunnerOptions, Path, str], RunnerOptions]


@dataclass(frozen=True)
class RunnerBackend:
    name: str
    open: Open
    check: Check = lambda bundle_dir, manifest, entry, options: None
    resolve: Resolve = lambda options, bundle_dir, precision: options
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def bench_variants(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.variants.items()} or {self.name: {}}


# ---------------------------------------------------------------------------------- errors
class UnknownRunner(MMEdgeError, ValueError):
    """``Runtime.load(backend=...)`` / ``get_runner`` named a backend that is not registered."""


class EngineMismatch(BundleIntegrityError):
    """A prebuilt engine was built for another GPU, compute capability or backend version: rebuild it here."""


class ArtifactMissing(BundleIntegrityError):
    """The bundle holds no artifact for this backend (e.g. no TensorRT engine for a graph)."""


class BackendUnavailable(MMEdgeError):
    """The backend's libraries (tensorrt, cuda-python) are not importable on this machine."""


class ShapeOutsideProfile(InputShapeError):
    """An input shape outside what the engine was built for (its optimisation profile)."""


# ---------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, RunnerBackend] = {}


def register_runner(name: str, open: Open, *, check: Check | None = None, resolve: Resolve | None = None,
                    variants: Mapping[str, Mapping[str, Any]] | None = None, replace: bool = False) -> RunnerBackend:
    """Make ``name`` loadable by ``Runtime.load(backend=name)`` and timed by ``mmedge bench``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"a runner named {name!r} is already registered; pass replace=True to swap it")
    kwargs: dict[str, Any] = {"variants": dict(variants or {})}
    if check is not None:
        kwargs["check"] = check
    if resolve is not None:
        kwargs["resolve"] = resolve
    backend = RunnerBackend(name, open, **kwargs)
    _REGISTRY[name] = backend
    return backend


def unregister_runner(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_runner(name: str) -> RunnerBackend:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownRunner(f"no runner backend named {name!r}; registered: {available_runners()}. Register one "
                            "with runtime.runners.register_runner(name, open)") from None


def available_runners() -> list[str]:
    """Registered backend names, in registration order (importable or not: ``check`` says)."""
    return list(_REGISTRY)
