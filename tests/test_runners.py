"""The runner seam (runtime.runners): the protocol over every registered backend, a second
onnxruntime-backed runner proving everything above the runner is shared, the one InferenceSession
call site, and the TensorRT runner's refusals that need no TensorRT (tampered engine, engine from
another GPU, missing engine, shapes outside the profile)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from runtime.bench import BenchConfig, run_benchmark, targets
from runtime.errors import BundleIntegrityError, MMEdgeError, RuntimeInputError
from runtime.graph_checks import read_verified
from runtime.manifest import engine_files, load_manifest, sha256_file
from runtime.runners import (ArtifactMissing, BackendUnavailable, EngineMismatch, GraphSource, Runner, RunnerBase,
                             RunnerOptions, ShapeOutsideProfile, UnknownRunner, available_runners, get_runner,
                             register_runner, unregister_runner)
from runtime.runners import tensorrt as trt_runner
from runtime.runners.onnxrt import create_session, session_options
from runtime.session import Runtime
from runtime_fixtures import copy_bundle, sample, tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ["audio", "audio+image", "image"]
PLAIN = "plain-onnxruntime"
H200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.3.0"}


class PlainOrtRunner(RunnerBase):
    """A second onnxruntime-backed runner written against the protocol alone (not OnnxRuntimeRunner)."""

    def __init__(self, source: GraphSource, options: RunnerOptions) -> None:
        e = source.entry
        self.path = Path(source.bundle_dir) / e.file
        self._session = create_session(read_verified(self.path, e.sha256, e.pattern),
                                       session_options(threads=options.threads, external_data_dir=self.path.parent))
        self.inputs, self.outputs = list(e.inputs), list(e.outputs)
        self._names = [o.name for o in e.outputs]

    @property
    def providers_in_use(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []

    @property
    def lost_providers(self) -> list[str]:
        return []

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._session is None:
            raise RuntimeError("closed")
        return self._session.run(self._names, dict(feeds))

    def close(self) -> None:
        self._session = None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("runners"))


@pytest.fixture
def plain() -> Iterator[str]:
    register_runner(PLAIN, PlainOrtRunner)
    yield PLAIN
    unregister_runner(PLAIN)  # other tests' benchmarks must not time it


# ------------------------------------------------------------------------------ the protocol, per backend
@pytest.mark.parametrize("name", [*available_runners(), PLAIN])
def test_runner_protocol(name: str, bundle: Path, request: pytest.FixtureRequest) -> None:
    if name == PLAIN:
        request.getfixturevalue("plain")
    manifest = load_manifest(bundle)
    why = get_runner(name).check(bundle, manifest, None, RunnerOptions())
    if why:
        pytest.skip(why)  # native TensorRT: not importable here, or the bundle has no engines
    rng = np.random.default_rng(0)
    with Runtime.load(bundle, backend=name, intra_op_threads=1) as rt:
        for key in PATTERNS:
            runner = rt.runner(key)
            entry = manifest.graph(key, "fp32")
            assert isinstance(runner, Runner)
            assert [t.name for t in runner.inputs] == [t.name for t in entry.inputs]
            assert [t.name for t in runner.outputs] == [t.name for t in entry.outputs]
            assert runner.providers_in_use and runner.lost_providers == []
            feeds = rt.feeds(key, [sample(rng, key), sample(rng, key)])
            outs = runner.run(feeds)
            assert len(outs) == len(entry.outputs) and all(o.shape[0] == 2 for o in outs)
            assert all(np.isfinite(o).all() for o in outs)
    assert rt.providers == {}  # the context manager closed every runner
    with pytest.raises(Exception):
        runner.run(feeds)  # a closed runner never runs
    rt.predict(sample(rng, "image"))  # ... and a closed Runtime rebuilds lazily


def test_unknown_backend_is_a_typed_error_naming_the_registered_ones(bundle: Path) -> None:
    with pytest.raises(UnknownRunner, match="onnxruntime"):
        Runtime.load(bundle, backend="openvino")


# ------------------------------------------------------------------------------ everything above is shared
def test_second_onnxruntime_runner_gives_bit_identical_predictions(bundle: Path, plain: str) -> None:
    ref = Runtime.load(bundle, intra_op_threads=1)
    other = Runtime.load(bundle, backend=plain, intra_op_threads=1)
    assert other.requested_providers == [plain] and f"backend={plain!r}" in repr(other)
    rng = np.random.default_rng(1)
    samples = [sample(rng, key) for key in PATTERNS for _ in range(3)]
    for a, b in zip([*map(ref.predict, samples), *ref.predict_batch(samples)],
                    [*map(other.predict, samples), *other.predict_batch(samples)]):
        assert a.pattern == b.pattern and a.top == b.top
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.probabilities, b.probabilities)
        assert np.array_equal(a.embedding, b.embedding)
    assert sorted({p.pattern for p in ref.predict_batch(samples)}) == PATTERNS
    with pytest.raises(RuntimeInputError):  # typed input errors are the shared code's, whatever the backend
        other.predict({"image": np.zeros((3, 3, 3, 3), np.float32)})


def test_bench_times_every_registered_runner(bundle: Path, plain: str, tmp_path: Path) -> None:
    assert plain in targets() and {"cpu", "cuda", "tensorrt-ep", "tensorrt"} <= set(targets())
    cfg = BenchConfig(bundle=bundle, runs=2, warmup=0, batch_sizes=(1,), providers=("cpu", plain), cold_start=False)
    rec = run_benchmark(cfg)
    cells = {(r["pattern"], r["provider"]) for r in rec["results"]}
    assert cells == {(k, p) for k in PATTERNS for p in ("cpu", plain)}
    assert all(r["pass"] == "table" and r["batches"]["1"]["p50_ms"] > 0 for r in rec["results"])


# ------------------------------------------------------------------------------ one session builder
def test_inference_session_is_constructed_in_exactly_one_module() -> None:
    needle = "InferenceSession" + "("
    skip = {".venv", ".git", "node_modules", "data", "bundles", "runs"}
    hits = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                  if not skip & set(p.relative_to(ROOT).parts[:-1]) and needle in p.read_text(errors="replace"))
    assert hits == ["runtime/runners/onnxrt.py"]


def test_importing_the_runners_imports_no_backend_library() -> None:
    code = ("import sys, runtime.runners, runtime.runners.tensorrt; "
            "assert not {'onnxruntime', 'tensorrt', 'torch'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ------------------------------------------------------------------------------ TensorRT refusals, no TensorRT
def with_engines(src: Path, dst: Path, **record: object) -> Path:
    """A copy of ``src`` whose fp32 graphs each have an engine (placeholder bytes: never deserialised in
    these tests) and a hardware record, checksummed in the manifest like export/tensorrt.py writes them."""
    copy_bundle(src, dst)
    m = load_manifest(dst)
    for g in m.graphs:
        rel, record_rel = engine_files(g.precision, g.pattern)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(b"serialized engine of " + g.pattern.encode())
        meta = {"pattern": g.pattern, "precision": g.precision, "onnx": g.file, **H200, **record}
        (dst / record_rel).write_text(json.dumps(meta))
        m.files[rel], m.files[record_rel] = sha256_file(dst / rel), sha256_file(dst / record_rel)
    m.save(dst)
    return dst


@pytest.fixture
def this_machine(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    machine = dict(H200)
    monkeypatch.setattr(trt_runner, "current_machine", lambda: machine)
    return machine


def test_tampered_engine_is_refused(bundle: Path, tmp_path: Path, this_machine: dict) -> None:
    copy = with_engines(bundle, tmp_path / "b")
    rel = engine_files("fp32", "image")[0]
    (copy / rel).write_bytes(b"another engine")
    with pytest.raises(BundleIntegrityError) as err:  # at load: every manifest file is verified
        Runtime.load(copy, backend="tensorrt")
    assert rel in str(err.value) and "sha256" in str(err.value)
    copy2 = with_engines(bundle, tmp_path / "c")
    rt = Runtime.load(copy2, backend="tensorrt", lazy=True)
    (copy2 / rel).write_bytes(b"swapped after load")
    with pytest.raises(BundleIntegrityError, match="sha256") as err:  # the runner hashes the bytes it loads
        rt.runner("image")
    assert err.value.pattern == "image"


def test_engine_from_another_gpu_is_refused_with_rebuild_advice(bundle: Path, tmp_path: Path,
                                                                this_machine: dict) -> None:
    copy = with_engines(bundle, tmp_path / "b", gpu="NVIDIA GeForce RTX 4090", compute_capability="8.9")
    with pytest.raises(EngineMismatch) as err:
        Runtime.load(copy, backend="tensorrt")
    msg = str(err.value)
    assert isinstance(err.value, MMEdgeError) and "RTX 4090" in msg and "H200" in msg and "8.9" in msg
    assert "rebuild" in msg and "--engine tensorrt" in msg
    other_trt = with_engines(bundle, tmp_path / "c", tensorrt="10.0.1")
    with pytest.raises(EngineMismatch, match="10.0.1"):
        Runtime.load(other_trt, backend="tensorrt", lazy=True).runner("audio")


def test_matching_record_reaches_tensorrt_itself(bundle: Path, tmp_path: Path, this_machine: dict) -> None:
    copy = with_engines(bundle, tmp_path / "b")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="tensorrt"):
            Runtime.load(copy, backend="tensorrt")
    else:  # a real TensorRT refuses the placeholder bytes: typed, with the rebuild advice
        with pytest.raises(EngineMismatch, match="rebuild"):
            Runtime.load(copy, backend="tensorrt")


def test_record_checks_and_missing_engines_are_typed(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineMismatch, match="gpu"):  # a record without the GPU is not a match
        trt_runner.check_record({"compute_capability": "9.0", "tensorrt": "10.3.0"}, H200, "x.engine", "image")
    trt_runner.check_record({**H200, "driver": "550"}, H200, "x.engine", "image")  # same machine: accepted
    m = load_manifest(bundle)
    with pytest.raises(ArtifactMissing, match="--engine tensorrt"):  # a bundle without engines
        trt_runner.read_record(GraphSource(bundle, m, m.graph("image", "fp32")))
    copy = with_engines(bundle, tmp_path / "b")
    mc = load_manifest(copy)
    # same pattern key, another graph (the full graph with placeholders): no engine is built for it
    fake_baseline = dataclasses.replace(mc.graph("image", "fp32"), file="baseline/fp32/full-placeholders.onnx")
    with pytest.raises(ArtifactMissing, match="built from"):
        trt_runner.read_record(GraphSource(copy, mc, fake_baseline))
    assert get_runner("tensorrt").check(copy, mc, fake_baseline, RunnerOptions()) is not None
    rec_rel = engine_files("fp32", "audio")[1]
    (copy / rec_rel).write_text(json.dumps({"pattern": "image", "precision": "fp32", "onnx": "x", **H200}))
    mc.files[rec_rel] = sha256_file(copy / rec_rel)
    with pytest.raises(BundleIntegrityError, match="swapped"):
        trt_runner.read_record(GraphSource(copy, mc, mc.graph("audio", "fp32")))


def test_shape_outside_the_profile_is_the_inputs_typed_error() -> None:
    runner = trt_runner.TensorRTRunner.__new__(trt_runner.TensorRTRunner)  # the check alone, no engine
    runner.pattern = "audio"
    runner.profile = {"audio.values": ((1, 1, 5), (1, 6, 5), (8, 6, 5))}
    runner._check_shape("audio.values", (8, 6, 5))
    for bad in [(9, 6, 5), (1, 7, 5), (1, 6)]:
        with pytest.raises(ShapeOutsideProfile) as err:
            runner._check_shape("audio.values", bad)
        assert isinstance(err.value, RuntimeInputError) and err.value.modality == "audio"
        assert "[8, 6, 5]" in str(err.value)


def test_onnxruntime_only_options_are_refused_for_the_tensorrt_backend(bundle: Path) -> None:
    from runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="providers only apply to backend 'onnxruntime'"):
        Runtime.load(bundle, precision="fp32", backend="tensorrt", providers=["cpu"], lazy=True)
