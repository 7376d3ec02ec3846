"""runtime.session.Runtime on a tiny 2-modality bundle: pattern selection, batches, typed errors,
integrity, providers, threads, malformed input (hypothesis), and the no-torch subprocess."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from runtime.errors import (BundleIntegrityError, InputDtypeError, InputShapeError, MMEdgeError, NoModalityAvailable,
                            NonFiniteInput, PatternNotAvailable, ProviderFallbackWarning, RuntimeInputError,
                            UnknownModality, UnknownPrecision)
from runtime.manifest import load_manifest
from runtime.patterns import all_patterns
from runtime.preprocess import make_preprocessor
from runtime.runners.onnxrt import create_session, session_options
from runtime.session import Prediction, Runtime
from runtime_fixtures import audio, image, sample, tiny_bundle

PATTERNS = [p.key for p in all_patterns(["audio", "image"])]
FUZZ_EXAMPLES = int(os.environ.get("MMEDGE_FUZZ_EXAMPLES", "120"))  # raise it for a longer fuzz run
REAL = Path(__file__).resolve().parents[1] / "bundles" / "av-digits-cmpt-fp32-fp16-int8"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("rt"))


@pytest.fixture(scope="module")
def rt(bundle: Path) -> Runtime:
    return Runtime.load(bundle, intra_op_threads=1)


def direct(bundle: Path, pattern: str, inputs: dict) -> dict[str, np.ndarray]:
    """The graph run by hand: bundle preprocessing + a bare onnxruntime session."""
    m = load_manifest(bundle)
    g = m.graph(pattern, "fp32")
    feeds = {}
    for mod in sorted(x for x, v in inputs.items() if v is not None):
        pre = make_preprocessor(m.modalities[mod].preprocess, bundle)
        feeds.update({f"{mod}.{k}": v for k, v in pre([inputs[mod]]).items()})
    sess = create_session(bundle / g.file, session_options(threads=1))
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def assert_same(a: Prediction, b: Prediction) -> None:
    assert a.pattern == b.pattern and [t[0] for t in a.top] == [t[0] for t in b.top]
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ selection & results
@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_runs_its_own_graph_and_matches_a_bare_session(rt: Runtime, bundle: Path, pattern: str) -> None:
    inputs = sample(np.random.default_rng(1), pattern)
    pred = rt.predict(inputs, top_k=2)
    assert pred.pattern == pattern
    ref = direct(bundle, pattern, inputs)
    np.testing.assert_allclose(pred.probabilities, ref["probabilities"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.logits, ref["logits"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.embedding, ref["fused_embedding"][0], rtol=1e-5, atol=1e-6)
    assert len(pred.top) == 2 and pred.top[0][1] >= pred.top[1][1] and pred.label == pred.top[0][0]
    assert pred.top[0] == (rt.labels[int(np.argmax(pred.probabilities))], float(pred.probabilities.max()))
    assert set(pred.timings) == {"preprocess_ms", "inference_ms", "total_ms"}
    assert pred.timings["total_ms"] >= pred.timings["inference_ms"] > 0


def test_absent_key_and_none_are_the_same_missing_modality(rt: Runtime) -> None:
    img = image(np.random.default_rng(2))
    assert_same(rt.predict({"image": img}), rt.predict({"image": img, "audio": None}))


def test_mixed_pattern_batch_comes_back_in_input_order_and_equals_one_by_one(rt: Runtime) -> None:
    rng = np.random.default_rng(3)
    samples = [sample(rng, PATTERNS[i % 3 if i % 4 else 2]) for i in range(11)]
    batch = rt.predict_batch(samples)
    assert len(batch) == len(samples)
    for s, b in zip(samples, batch):
        assert isinstance(b, Prediction)
        assert_same(b, rt.predict(s))
    assert {b.batch_size for b in batch if b.pattern == "image"} == {sum(b.pattern == "image" for b in batch)}


def test_batch_errors_raise_with_index_or_come_back_in_their_slot(rt: Runtime) -> None:
    rng = np.random.default_rng(4)
    good = sample(rng, "audio+image")
    samples = [good, {"image": np.full((8, 8), np.nan, np.float32)}, {"audio": None}, sample(rng, "image")]
    with pytest.raises(NoModalityAvailable) as err:
        rt.predict_batch(samples)
    assert err.value.index == 2
    out = rt.predict_batch(samples, errors="return")
    assert isinstance(out[0], Prediction) and isinstance(out[3], Prediction)
    assert isinstance(out[1], NonFiniteInput) and out[1].index == 1 and out[1].pattern == "image"
    assert isinstance(out[2], NoModalityAvailable)
    assert_same(out[0], rt.predict(good))


# ------------------------------------------------------------------------------ typed errors
BAD = [
    ("nan frame", {"image": np.full((8, 8), np.nan, np.float32)}, NonFiniteInput, "image"),
    ("inf audio", {"audio": np.array([[np.inf] * 5] * 3)}, NonFiniteInput, "audio"),
    ("overflow", {"image": np.full((8, 8), 1e300)}, NonFiniteInput, "image"),
    ("str image", {"image": "frame.png"}, InputDtypeError, "image"),
    ("complex dtype", {"image": np.ones((8, 8), np.complex64)}, InputDtypeError, "image"),
    ("int PCM-like bool", {"audio": np.ones((4, 5), bool)}, InputDtypeError, "audio"),
    ("ragged list", {"audio": [[1.0, 2.0], [3.0]]}, InputDtypeError, "audio"),
    ("audio features", {"audio": np.zeros((4, 3), np.float32)}, InputShapeError, "audio"),
    ("image rank", {"image": np.zeros((2, 8, 8, 1), np.float32)}, InputShapeError, "image"),
    ("empty audio", {"audio": np.zeros((0, 5), np.float32)}, InputShapeError, "audio"),
    ("unknown sensor", {"lidar": np.zeros(3), "image": np.zeros((8, 8))}, UnknownModality, None),
    ("all missing", {"image": None, "audio": None}, NoModalityAvailable, None),
    ("empty dict", {}, NoModalityAvailable, None),
    ("not a dict", [np.zeros((8, 8))], InputDtypeError, None),
]


@pytest.mark.parametrize("inputs,cls,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_its_typed_error(rt: Runtime, inputs, cls, pattern) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warning for the 1e300 frame
        with pytest.raises(cls) as err:
            rt.predict(inputs)
    assert isinstance(err.value, RuntimeInputError) and err.value.pattern == pattern
    if cls is UnknownModality:
        assert "'lidar'" in str(err.value) and "['audio', 'image']" in str(err.value)
    if cls in (InputShapeError, InputDtypeError) and pattern:
        assert "takes" in str(err.value)  # says what the modality expects


def test_missing_pattern_graph_is_pattern_not_available(bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    data = json.loads((copy / "manifest.json").read_text())
    data["graphs"] = [g for g in data["graphs"] if g["pattern"] != "audio"]
    (copy / "manifest.json").write_text(json.dumps(data))
    rt = Runtime.load(copy, intra_op_threads=1, lazy=True)
    with pytest.raises(PatternNotAvailable) as err:
        rt.predict({"audio": audio(np.random.default_rng(0))})
    assert err.value.pattern == "audio" and "audio+image" in str(err.value)


def test_tampered_graph_is_refused_at_load(bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    path = copy / "graphs" / "fp32" / "image.onnx"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleIntegrityError) as err:
        Runtime.load(copy, lazy=True)
    assert err.value.pattern == "image" and "sha256" in str(err.value)


def test_unknown_precision_lists_what_the_bundle_has(bundle: Path) -> None:
    with pytest.raises(UnknownPrecision) as err:
        Runtime.load(bundle, precision="int8")
    assert "fp32" in str(err.value) and err.value.available == ["fp32"]


# ------------------------------------------------------------------------------ sessions & providers
def test_lazy_sessions_are_created_once_on_first_use_even_under_contention(bundle: Path) -> None:
    rt = Runtime.load(bundle, lazy=True, intra_op_threads=1)
    assert rt.providers == {}
    img = image(np.random.default_rng(0))
    threads = [threading.Thread(target=rt.predict, args=({"image": img},)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert list(rt.providers) == ["image"] and rt.providers["image"] == ["CPUExecutionProvider"]


def test_requested_gpu_provider_that_is_absent_warns_and_reports_cpu(bundle: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: no fallback to observe")
    with pytest.warns(ProviderFallbackWarning, match="CUDAExecutionProvider"):
        rt = Runtime.load(bundle, providers=["cuda", "cpu"], lazy=True, intra_op_threads=1)
    rt.predict({"image": image(np.random.default_rng(0))})
    assert rt.requested_providers == ["CPUExecutionProvider"] and rt.providers == {"image": ["CPUExecutionProvider"]}


@pytest.mark.gpu
def test_gpu_provider_is_really_used_when_available(bundle: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider in this onnxruntime build (install onnxruntime-gpu on a GPU machine)")
    rt = Runtime.load(bundle, providers=["cuda"], intra_op_threads=1)
    assert all(p[0] == "CUDAExecutionProvider" for p in rt.providers.values()) and not rt.fallbacks


# ------------------------------------------------------------------------------ concurrency
def test_eight_threads_with_mixed_patterns_equal_sequential_results(rt: Runtime) -> None:
    rng = np.random.default_rng(5)
    samples = [sample(rng, PATTERNS[i % 3]) for i in range(96)]
    expected = [rt.predict(s) for s in samples]
    got: dict[int, Prediction] = {}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(offset, len(samples), 8):
                got[i] = rt.predict(samples[i])
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and sorted(got) == list(range(len(samples)))
    for i, e in enumerate(expected):
        assert_same(got[i], e)


# ------------------------------------------------------------------------------ malformed input
_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64, np.bool_, np.complex64,
                           np.dtype("U3"), np.dtype("O")])
_ARRAYS = _DTYPES.flatmap(lambda dt: arrays(dt, array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
                                            elements=None if dt != np.dtype("O") else st.none() | st.integers()))
_SCALARS = st.none() | st.integers() | st.floats() | st.text(max_size=4) | st.binary(max_size=4) | st.booleans()
_NESTED = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=2), c, max_size=2),
                       max_leaves=12)
_NEAR = arrays(st.sampled_from([np.float16, np.float32, np.float64, np.uint8, np.int64]),
               st.sampled_from([(8, 8), (8, 8, 1), (5, 7, 3), (4, 4, 4), (3, 5), (6, 5), (9, 5), (5,), (2, 5, 1)]))


def _poison(a: np.ndarray, where: int) -> np.ndarray:
    if a.dtype.kind == "f" and a.size and where:
        a = a.copy()
        a.flat[where % a.size] = (np.nan, np.inf, -np.inf)[where % 3]
    return a


_RAW = st.none() | st.builds(_poison, _NEAR, st.integers(0, 50)) | _ARRAYS | _NESTED | st.builds(lambda r: audio(np.random.default_rng(r)), st.integers(0, 9))
_INPUTS = (st.fixed_dictionaries({}, optional={"image": _RAW, "audio": _RAW})
           | st.dictionaries(st.sampled_from(["image", "audio", "text", "", "lidar"]) | st.text(max_size=3), _RAW,
                             max_size=3)
           | _NESTED)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(inputs=_INPUTS)
def test_malformed_input_gives_a_typed_error_or_a_valid_prediction(rt: Runtime, inputs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            pred = rt.predict(inputs)
        except RuntimeInputError as err:
            event(type(err).__name__)
            return
    event("prediction")
    assert pred.pattern in rt.patterns
    assert pred.probabilities.shape == (len(rt.labels),) and np.all(np.isfinite(pred.probabilities))
    assert abs(float(pred.probabilities.sum()) - 1.0) < 1e-4


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(samples=st.lists(_INPUTS, min_size=1, max_size=4))
def test_malformed_batches_never_escape_untyped(rt: Runtime, samples) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = rt.predict_batch(samples, errors="return")
    assert len(out) == len(samples) and all(isinstance(o, (Prediction, RuntimeInputError)) for o in out)


# ------------------------------------------------------------------------------ no torch, real bundle
NO_TORCH = """
import sys, numpy as np
from runtime import Runtime
rt = Runtime.load(sys.argv[1], intra_op_threads=1)
p = rt.predict({"image": np.zeros((8, 8), np.float32), "audio": np.ones((4, 5), np.float32)})
bad = [m for m in ("torch", "transformers", "train", "export", "calibration") if m in sys.modules]
print("PATTERN", p.pattern, "LOADED:" + ",".join(bad))
"""


def test_loading_and_predicting_never_imports_torch(bundle: Path) -> None:
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("PATTERN audio+image LOADED:"), out.stdout


@pytest.mark.skipif(not (REAL / "manifest.json").is_file(), reason="real av-digits bundle not built here")
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_real_av_digits_bundle_smoke(precision: str) -> None:
    rt = Runtime.load(REAL, precision=precision, intra_op_threads=1, lazy=True)
    rng = np.random.default_rng(0)
    img, aud = rng.integers(0, 17, (8, 8)).astype(np.float32), rng.normal(0, 30, (40, 13)).astype(np.float32)
    preds = rt.predict_batch([{"image": img, "audio": aud}, {"image": img}, {"audio": aud}])
    assert [p.pattern for p in preds] == ["audio+image", "image", "audio"]
    assert all(p.probabilities.shape == (10,) and p.embedding.shape == (64,) for p in preds)
    with pytest.raises(InputShapeError):
        rt.predict({"audio": aud[:, :5]})
    ort_file = rt.manifest.graph("audio", precision).usable_ort_file
    if ort_file:  # only when the bundle was exported with --ort-format and the copy passed its parity
        fast = Runtime.load(REAL, precision=precision, providers=["cpu"], intra_op_threads=1, prefer_ort_format=True)
        assert fast.runner("audio").path == REAL / ort_file
        again = fast.predict_batch([{"image": img, "audio": aud}, {"image": img}, {"audio": aud}])
        for a, b in zip(preds, again):  # FP32: the same graph; INT8: ORT fuses less in .ort files
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5 if precision == "fp32" else 0.1)


def test_all_errors_share_the_base(rt: Runtime) -> None:
    assert issubclass(RuntimeInputError, MMEdgeError) and issubclass(UnknownPrecision, MMEdgeError)


@pytest.mark.parametrize("errors", ["return", "raise"])
def test_a_value_that_overflows_float32_is_a_typed_error_with_its_index(rt: Runtime, errors: str) -> None:
    """Finite as float64, inf once cast: found only after the graph ran, still reported per sample."""
    good = {"image": np.ones((8, 8), np.float32)}
    huge = {"image": np.full((8, 8), 3.5e38, np.float64)}
    if errors == "raise":
        with pytest.raises(NonFiniteInput) as info:
            rt.predict_batch([good, huge], errors="raise")
        assert info.value.index == 1
        return
    out = rt.predict_batch([good, huge, good], errors="return")
    assert isinstance(out[0], Prediction) and isinstance(out[2], Prediction)
    assert isinstance(out[1], NonFiniteInput) and out[1].index == 1
