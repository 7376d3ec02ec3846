"""The torch-free runtime: raw sensor data in, the graph of the present modalities' pattern run.

    rt = Runtime.load("bundles/av-digits-cmpt-fp32-fp16-int8", precision="int8")
    pred = rt.predict({"image": frame, "audio": None})   # -> Prediction(pattern="image", ...)

Errors: ``predict``/``predict_batch`` raise only ``MMEdgeError`` subclasses, and bad input
only ``RuntimeInputError`` subclasses (see runtime.errors), so a host loop survives any input.
Backends: each graph runs through a runner (runtime.runners: ``backend="onnxruntime"`` or
``"tensorrt"``, or any registered one); everything in this module is the same code for all of them.
Threads: runners are safe to call from several threads (onnxruntime's ``run`` is thread-safe, the
TensorRT runner serialises calls on its one context), preprocessors are immutable apart from caches
of read-only all-ones masks (a race only builds an equal array twice), per-call state lives on the
stack; the only lock here guards lazy runner creation.
Feeds: every float feed handed to a graph is checked to be finite and inside the range the bundle
was exported for (runtime.inputs.check_feed), at every precision, so a value that would overflow
a reduced-precision graph is the input's typed error, not the graph's.
Sequences: a clip longer than its modality's trained maximum follows the bundle's sequence policy
(truncate, window or error; ``sequence_policies``); ``sequence_cuts`` counts the ones cut since load.
Degraded graphs (exported with --allow-degraded) load with a DegradedGraphWarning.
Integrity: a runner is built from the bytes whose sha256 was just checked against the manifest
(never a second read of the path), and the graph's own metadata (an engine's record) must name its
pattern and precision.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import (BundleIntegrityError, InferenceError, InputDtypeError, MMEdgeError, NoModalityAvailable,
                            PatternNotAvailable, RuntimeInputError, UnknownModality, UnknownPrecision)
from runtime.graph_state import PatternGraph, cast_feed, packer_for, warmup_input, warn_degraded
from runtime.inputs import check_batch, check_feed, check_top_k, from_preprocess_error, from_unexpected, safe_repr
from runtime.manifest import GraphEntry, Manifest, load_manifest
from runtime.modality_spec import spec_of
from runtime.patterns import Pattern, fallback_table
from runtime.prediction import Prediction
from runtime.preprocess import PreprocessError, Preprocessor, make_preprocessor
from runtime.runners import GraphSource, Runner, RunnerBackend, RunnerOptions, get_runner

if TYPE_CHECKING:
    from runtime.sensors import SensorHub


class Runtime:
    """Loaded bundle at one precision: one runner (on one backend) per availability pattern."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, precision: str, backend: RunnerBackend,
                 options: RunnerOptions) -> None:
        self.bundle_dir, self.manifest, self.precision = bundle_dir, manifest, precision
        self.backend, self._options = backend, options
        self._lock = threading.Lock()
        try:
            self._pre: dict[str, Preprocessor] = {
                m: make_preprocessor(e.preprocess, base_dir=bundle_dir) for m, e in manifest.modalities.items()}
        except PreprocessError as err:
            raise BundleIntegrityError(f"bundle preprocessing spec is unusable: {err}; re-export the bundle") from None
        except Exception as exc:  # noqa: BLE001 - a schema-valid spec whose values the preprocessor rejects
            raise BundleIntegrityError(f"bundle preprocessing spec is unusable: {type(exc).__name__}: {exc}; "
                                       "re-export the bundle") from None
        self._graphs: dict[str, PatternGraph] = {}
        self._by_set: dict[frozenset[str], str] = {}
        for g in manifest.graphs:
            if g.precision == precision:
                self._graphs[g.pattern] = PatternGraph(g, manifest, self._pre)
                self._by_set[Pattern.from_key(g.pattern)] = g.pattern
        self.fallbacks: dict[str, list[str]] = {}
        # sub-pattern fallback: present set -> (exported pattern to run, present modalities it ignores)
        self._fallback: dict[frozenset[str], tuple[str, tuple[str, ...]]] = {}

    def enable_fallback(self, order: Sequence[str] | None = None) -> None:
        """Run the best exported sub-pattern when the present modalities form a pattern the bundle lacks.

        Best = drops the fewest present modalities. Ties: the sub-pattern that keeps the modality that
        comes first in ``order`` (default: the bundle's modalities sorted by name), then the next one, and
        so on. ``Prediction.pattern`` names the graph that ran, ``Prediction.ignored`` what it left out.
        """
        self._fallback = fallback_table(list(self._graphs), list(self.manifest.modalities), order)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, bundle_dir: Path | str, precision: str = "fp32", providers: Sequence[Any] | None = None,
             *, backend: str = "onnxruntime", lazy: bool = False, warmup: bool = True,
             intra_op_threads: int | None = None, trt_cache_dir: Path | str | None = None,
             prefer_ort_format: bool = False, trusted_keys: Sequence[Any] | None = None, alpha: float | None = None,
             fallback: bool | Sequence[str] = False) -> "Runtime":
        """Verify the manifest and every file's sha256, then build (or, ``lazy``, defer) the runners.

        ``backend``: a registered runner (runtime.runners.available_runners()): ``"onnxruntime"`` runs the
        ONNX graphs; ``"tensorrt"`` runs the prebuilt TensorRT engines of the bundle
        (``mmedge export build --engine tensorrt``), refused with EngineMismatch when they were built for
        another GPU or TensorRT version. ``providers`` / ``trt_cache_dir`` / ``prefer_ort_format`` are
        onnxruntime options.

        ``trusted_keys``: ed25519 public keys (paths to .pub PEM files, PEM text, 32 raw bytes or key
        objects; needs ``mmedge[sign]``): the bundle must be signed by one of them
        (``mmedge export sign``), else BundleSignatureError. None (default): signatures are not checked.
        A runner (at load, or at first use when ``lazy``) is built from bytes re-hashed against the
        manifest, so a graph replaced after load is refused, not served.

        ``providers``: onnxruntime names or aliases ("cpu", "cuda", "tensorrt"), optionally
        ``(name, options)``; default TensorRT EP > CUDA EP > CPU, whichever this build has.
        ``prefer_ort_format``: on CPU-only chains, load the bundle's ``.ort`` copies that passed parity
        (faster cold start); other patterns load their ``.onnx``.
        ``alpha``: miscoverage of the conformal prediction sets (default: the bundle's, see runtime.confidence).
        ``fallback``: off by default; True (or a modality priority order for ties) runs the best exported
        sub-pattern when the present modalities form a pattern the bundle lacks (see ``enable_fallback``).
        """
        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir, verify=True, trusted_keys=trusted_keys)
        if precision not in manifest.precisions:
            raise UnknownPrecision(precision, manifest.precisions)
        runner = get_runner(backend)
        options = runner.resolve(RunnerOptions(providers=tuple(providers) if providers else None,
                                               threads=intra_op_threads, prefer_ort_format=prefer_ort_format,
                                               trt_cache_dir=Path(trt_cache_dir) if trt_cache_dir else None),
                                 bundle_dir, precision)
        rt = cls(bundle_dir, manifest, precision, runner, options)
        warn_degraded(bundle_dir, manifest, precision)
        if alpha is not None:
            rt.set_alpha(alpha)
        if fallback:
            rt.enable_fallback(None if fallback is True else list(fallback))
        if not lazy:
            for key in rt._graphs:
                rt.runner(key, warmup=warmup)
        return rt

    def runner(self, pattern: str | Pattern, *, warmup: bool = True) -> Runner:
        """The runner of ``pattern``'s graph, built on first use (thread-safe)."""
        key = pattern.key if isinstance(pattern, Pattern) else pattern
        graph = self._graphs.get(key)
        if graph is None:
            raise PatternNotAvailable(f"no {self.precision} graph for pattern {key!r}; this runtime has "
                                      f"{self.patterns}", pattern=key)
        if graph.runner is None:
            with self._lock:  # double-checked: concurrent first calls build one runner, not several
                if graph.runner is None:
                    runner = self._create(graph)
                    if warmup:
                        self._warmup(graph, runner)
                    graph.runner = runner
        return graph.runner

    def _create(self, graph: PatternGraph) -> Runner:
        try:
            runner = self.backend.open(GraphSource(self.bundle_dir, self.manifest, graph.entry), self._options)
        except MMEdgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a backend's own failure on a verified bundle
            raise BundleIntegrityError(f"{self.backend.name} cannot load the {graph.entry.precision} graph of "
                                       f"{graph.key!r}: {type(exc).__name__}: {exc}", pattern=graph.key,
                                       path=graph.entry.file) from None
        if runner.lost_providers:
            self.fallbacks[graph.key] = list(runner.lost_providers)
        return runner

    def _warmup(self, graph: PatternGraph, runner: Runner) -> None:
        feeds = {s.name: warmup_input(s, self.manifest) for s in graph.entry.inputs}
        try:
            runner.run(feeds)
        except Exception as exc:  # noqa: BLE001
            runner.close()
            raise InferenceError(f"warm-up of {graph.entry.file} on {self.backend.name} failed: "
                                 f"{type(exc).__name__}: {exc}", pattern=graph.key) from None

    def close(self) -> None:
        """Release every runner (GPU buffers and streams of TensorRT ones); the next call rebuilds lazily."""
        with self._lock:
            for g in self._graphs.values():
                runner, g.runner = g.runner, None
                if runner is not None:
                    runner.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_alpha(self, alpha: float) -> None:
        """Prediction sets at miscoverage ``alpha`` from now on (quantiles of the stored calibration scores)."""
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        for g in self._graphs.values():  # swapping a whole Packer keeps concurrent predicts consistent
            g.packer = packer_for(g.entry, self.manifest, float(alpha))

    # ------------------------------------------------------------------ introspection
    @property
    def modalities(self) -> list[str]:
        return sorted(self.manifest.modalities)

    @property
    def patterns(self) -> list[str]:
        return list(self._graphs)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def providers(self) -> dict[str, list[str]]:
        """Providers actually in use per pattern (runners built so far), as each runner reports them."""
        return {k: list(g.runner.providers_in_use) for k, g in self._graphs.items() if g.runner is not None}

    @property
    def sequence_policies(self) -> dict[str, str]:
        """Per sequence modality, what a clip longer than its trained maximum gets (runtime.modality_spec)."""
        return {m: spec_of(e.preprocess).sequence_policy for m, e in sorted(self.manifest.modalities.items())
                if hasattr(self._pre[m], "cuts")}

    @property
    def sequence_cuts(self) -> dict[str, int]:
        """Per sequence modality, the samples truncated or windowed to the trained maximum since load."""
        return {m: int(self._pre[m].cuts) for m in self.sequence_policies}

    @property
    def requested_providers(self) -> list[str]:
        """onnxruntime: the resolved provider chain; other backends: their name."""
        chain = self._options.providers
        return [c[0] if isinstance(c, tuple) else c for c in chain] if chain else [self.backend.name]

    def graph(self, pattern: str) -> GraphEntry:
        if pattern not in self._graphs:
            raise PatternNotAvailable(f"no {self.precision} graph for pattern {pattern!r}; this runtime has "
                                      f"{self.patterns}", pattern=pattern)
        return self._graphs[pattern].entry

    # ------------------------------------------------------------------ inference
    def pattern_of(self, inputs: Any, index: int | None = None) -> str:
        """The pattern key of the present (non-None) inputs; typed errors for anything else."""
        if not isinstance(inputs, dict) and not isinstance(inputs, Mapping):  # dict first: no ABC check per call
            raise InputDtypeError(f"predict takes a dict {{modality: data or None}} over {self.modalities}, got "
                                  f"{type(inputs).__name__}", index=index)
        try:
            present = []
            for k, v in inputs.items():
                if not isinstance(k, str) or k not in self._pre:  # a hostile non-str key's __eq__ never runs
                    raise UnknownModality(f"unknown modality {safe_repr(k)}; this bundle has {self.modalities} (pass "
                                          "None for a missing one)", modality=safe_repr(k), index=index)
                if v is not None:
                    present.append(k)
        except RuntimeInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a Mapping whose items()/__getitem__ raise is bad input too
            raise InputDtypeError(f"cannot read the inputs mapping ({type(exc).__name__}: {safe_repr(exc)}); "
                                  f"pass a plain dict {{modality: data or None}} over {self.modalities}",
                                  index=index) from None
        key = self._by_set.get(frozenset(present))
        if key is not None:
            return key
        if self._fallback and frozenset(present) in self._fallback:
            return self._fallback[frozenset(present)][0]
        if not present:
            raise NoModalityAvailable(f"every modality is missing (None); at least one of {self.modalities} is "
                                      "needed", index=index)
        key = Pattern(present).key
        raise PatternNotAvailable(f"no {self.precision} graph for pattern {key!r}; the bundle has {self.patterns}"
                                  " at this precision: drop a modality, export that pattern, or load with "
                                  "fallback=True to run the best exported sub-pattern", pattern=key,
                                  index=index)

    def feeds(self, key: str, samples: Sequence[Mapping[str, Any]], indices: Sequence[int] | None = None
              ) -> dict[str, np.ndarray]:
        """Preprocess ``samples`` (all of pattern ``key``) into one batch of graph feeds."""
        graph = self._graphs[key]
        out: dict[str, np.ndarray] = {}
        for m, pre, names in graph.steps:
            try:
                arrays = pre((samples[0][m],) if len(samples) == 1 else [s[m] for s in samples])
            except PreprocessError as err:
                pos = indices[err.index] if indices is not None and err.index is not None else None
                raise from_preprocess_error(err, m, key, pre.spec, pos) from None
            except Exception as exc:  # noqa: BLE001 - contract: bad input only ever raises typed errors
                raise from_unexpected(exc, m, key, pre.spec,
                                      indices[0] if indices and len(indices) == 1 else None) from None
            for name, arr in arrays.items():
                out[names.get(name, name)] = arr
        feeds = {f.name: cast_feed(out, f, key) for f in graph.feeds}
        for f in graph.feeds:
            if f.bounds is not None:
                check_feed(feeds[f.name], f.name, f.bounds, key, self.precision)
        return feeds

    def _run(self, key: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        graph = self._graphs[key]
        runner = graph.runner or self.runner(key)
        try:
            return runner.run(feeds)
        except MMEdgeError:  # the runner's own typed errors (e.g. a shape outside a TensorRT profile)
            raise
        except Exception as exc:  # noqa: BLE001
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise InferenceError(f"{self.backend.name} failed on pattern {key!r} with feeds {shapes}: "
                                 f"{type(exc).__name__}: {exc}", pattern=key) from None

    def predict(self, inputs: Mapping[str, Any], *, top_k: int = 5) -> Prediction:
        """One sample: ``{modality: raw data or None}`` -> Prediction of the present modalities' graph."""
        t0 = time.perf_counter()
        top_k = check_top_k(top_k)
        key = self.pattern_of(inputs)
        feeds = self.feeds(key, (inputs,))
        t1 = time.perf_counter()
        outs = self._run(key, feeds)
        t2 = time.perf_counter()
        timings = {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3}
        pred = self._graphs[key].packer(outs, top_k, timings, feeds)[0]
        if self._fallback:
            pred.ignored = self._ignored(inputs, key)
        timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        return pred

    def _ignored(self, inputs: Mapping[str, Any], key: str) -> tuple[str, ...]:
        """Present modalities the graph ``key`` does not use (only after a sub-pattern fallback)."""
        used = self._graphs[key].modalities
        return tuple(sorted(m for m, v in inputs.items() if v is not None and m not in used))

    def predict_batch(self, samples: Sequence[Mapping[str, Any]], *, top_k: int = 5, errors: str = "raise"
                      ) -> list[Prediction | RuntimeInputError]:
        """Many samples, any mix of patterns: grouped by pattern, each group preprocessed and run as one
        batch, results in input order. ``errors="raise"`` raises the first bad sample's typed error
        (``.index`` = its position); ``errors="return"`` puts that error in its slot and runs the rest."""
        check_batch(samples, errors)
        top_k = check_top_k(top_k)
        results: list[Any] = [None] * len(samples)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            try:
                groups.setdefault(self.pattern_of(s, index=i), []).append(i)
            except RuntimeInputError as err:
                if errors == "raise":
                    raise
                results[i] = err
        for key, idx in groups.items():
            t0 = time.perf_counter()
            try:
                feeds = self.feeds(key, [samples[i] for i in idx], idx)
                t1 = time.perf_counter()
                outs = self._run(key, feeds)
                t2 = time.perf_counter()
                timings = {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3}
                preds = self._graphs[key].packer(outs, top_k, timings, feeds)
            except RuntimeInputError as err:
                if errors == "raise" and err.index is not None:
                    raise
                # rare path: a bad sample, or one found only after the graph ran (a value that overflows
                # float32): run the group one by one so each error gets its index and the good ones a result
                for i in idx:
                    results[i] = self._one_or_error(samples[i], i, top_k, errors)
                continue
            for i, pred in zip(idx, preds):
                pred.timings["total_ms"] = (time.perf_counter() - t0) * 1e3
                if self._fallback:
                    pred.ignored = self._ignored(samples[i], key)
                results[i] = pred
        return results

    def _one_or_error(self, sample: Mapping[str, Any], index: int, top_k: int, errors: str
                      ) -> Prediction | RuntimeInputError:
        try:
            return self.predict(sample, top_k=top_k)
        except RuntimeInputError as err:
            err.index = index
            if errors == "raise":
                raise
            return err

    def predict_from(self, hub: "SensorHub", now: float | None = None, *, top_k: int = 5) -> Prediction:
        """``predict(hub.snapshot(now))``: the latest healthy, fresh sample of every sensor."""
        return self.predict(hub.snapshot(now), top_k=top_k)

    def sensor_hub(self, **kwargs: Any) -> "SensorHub":
        """A SensorHub over this bundle's modalities (health checks follow its preprocessing specs)."""
        from runtime.sensors import SensorHub

        return SensorHub(self.manifest, **kwargs)

    def __repr__(self) -> str:
        return (f"Runtime({str(self.bundle_dir)!r}, precision={self.precision!r}, backend={self.backend.name!r}, "
                f"patterns={self.patterns}, providers={self.requested_providers})")


__all__ = ["Prediction", "Runtime", "MMEdgeError"]
