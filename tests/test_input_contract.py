"""The input contract under hostile input, at every precision of a tiny fp32/fp16/int8 bundle:
values that overflow float32 or leave the exported range, bad keyword arguments, hostile
containers, unbounded caches and text. Only ``RuntimeInputError`` subclasses or valid results."""
from __future__ import annotations

import collections.abc
import gc
import math
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime import preprocess_image
from runtime.errors import (InputDtypeError, InputOutOfRange, InvalidArgument, MMEdgeError, NonFiniteInput,
                            RuntimeInputError)
from runtime.preprocess import make_preprocessor
from runtime.preprocess_text import TEXT_CHARS_PER_TOKEN
from runtime.session import Prediction, Runtime
from runtime_fixtures import ALL_PRECISIONS, audio, image, tiny_bundle

PRECISIONS = ALL_PRECISIONS.split(",")
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("rt3"), ALL_PRECISIONS)


@pytest.fixture(scope="module")
def runtimes(bundle: Path) -> dict[str, Runtime]:
    return {p: Runtime.load(bundle, precision=p, intra_op_threads=1) for p in PRECISIONS}


def _img(value: float | None = None, dtype: Any = np.float32) -> np.ndarray:
    x = np.random.default_rng(0).normal(0, 1, (8, 8)).astype(np.float64)
    if value is not None:
        x[3, 4] = value
    return x.astype(dtype)


# ------------------------------------------------------------------------------ 1: float32 overflow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_value_that_overflows_float32_is_non_finite_at_every_precision(runtimes, precision: str) -> None:
    rt = runtimes[precision]
    with pytest.raises(NonFiniteInput):
        rt.predict({"image": _img(1e39, np.float64)})
    with pytest.raises(NonFiniteInput):  # in a sequence modality, in a mixed batch
        rt.predict_batch([{"audio": np.full((3, 5), 1e39)}], errors="raise")


# ------------------------------------------------------------------------------ 2: finite but huge
HUGE = [(1e30, np.float64), (F32_MAX, np.float32), (-F32_MAX, np.float32), (1e30, np.float32)]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("value,dtype", HUGE)
def test_finite_but_huge_inputs_are_input_errors_with_their_index(runtimes, precision: str, value, dtype) -> None:
    rt = runtimes[precision]
    with pytest.raises(RuntimeInputError):
        rt.predict({"image": _img(value, dtype)})
    good = {"image": _img(), "audio": audio(np.random.default_rng(1))}
    out = rt.predict_batch([good, {"image": _img(value, dtype), "audio": good["audio"]}, good], errors="return")
    assert isinstance(out[0], Prediction) and isinstance(out[2], Prediction)
    assert isinstance(out[1], RuntimeInputError) and out[1].index == 1


@pytest.mark.parametrize("precision", PRECISIONS)
def test_int64_extremes_are_input_errors(runtimes, precision: str) -> None:
    for v in (np.iinfo(np.int64).max, np.iinfo(np.int64).min):
        x = np.zeros((8, 8), np.int64)
        x[0, 0] = v
        with pytest.raises(RuntimeInputError):
            runtimes[precision].predict({"image": x})


def test_the_exported_input_range_is_recorded_and_inputs_inside_it_predict(runtimes) -> None:
    rt = runtimes["fp16"]
    rng_ = rt.manifest.modalities["image"].input_range["image.pixel_values"]
    lo, hi = rng_
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi
    inside = np.full((8, 8), hi, np.float32)  # the calibration extreme itself is in range
    assert isinstance(rt.predict({"image": inside}), Prediction)
    with pytest.raises(InputOutOfRange) as info:
        rt.predict({"image": np.full((8, 8), hi + 1e6 * (hi - lo), np.float32)})
    assert info.value.modality == "image" and "range" in str(info.value)


# ------------------------------------------------------------------------------ 3: keyword arguments
@pytest.mark.parametrize("kw", [{"top_k": None}, {"top_k": "x"}, {"top_k": math.nan}, {"top_k": 2.5},
                                {"top_k": True}, {"top_k": 0}])
def test_bad_top_k_is_a_typed_error_before_inference(runtimes, kw) -> None:
    rt = runtimes["fp32"]
    ran = []
    real = rt._run
    rt._run = lambda *a: (ran.append(1), real(*a))[1]  # type: ignore[method-assign]
    try:
        with pytest.raises(InvalidArgument):
            rt.predict({"image": _img()}, **kw)
        with pytest.raises(InvalidArgument):
            rt.predict_batch([{"image": _img()}], **kw)
    finally:
        del rt._run
    assert ran == []


@pytest.mark.parametrize("samples,kw", [(None, {}), ((s for s in [{"image": None}]), {}), ({"image": None}, {}),
                                        ([{"image": None}], {"errors": "ignore"}), ([], {"errors": None})])
def test_bad_batch_arguments_are_typed_errors(runtimes, samples, kw) -> None:
    with pytest.raises(InvalidArgument) as info:
        runtimes["fp32"].predict_batch(samples, **kw)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MMEdgeError)


# ------------------------------------------------------------------------------ 4: hostile containers
class EqRaises:
    def __hash__(self) -> int:
        return hash("image")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("hostile __eq__")


class GetRaises(collections.abc.Mapping):
    def __getitem__(self, k: str) -> Any:
        raise RuntimeError("hostile __getitem__")

    def __iter__(self):
        return iter(["image"])

    def __len__(self) -> int:
        return 1


class UnhashableKey(collections.abc.Mapping):
    def __getitem__(self, k: Any) -> Any:
        return _img()

    def __iter__(self):
        return iter([["image"]])

    def __len__(self) -> int:
        return 1


class ReprRaises:
    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return False

    def __repr__(self) -> str:
        raise RuntimeError("hostile __repr__")


HOSTILE = [GetRaises(), UnhashableKey(), {EqRaises(): _img()}, {ReprRaises(): _img()}]


@pytest.mark.parametrize("inputs", HOSTILE, ids=["getitem", "unhashable", "eq", "repr"])
def test_hostile_containers_are_typed_and_do_not_abort_a_batch(runtimes, inputs) -> None:
    rt = runtimes["fp32"]
    with pytest.raises(RuntimeInputError):
        rt.predict(inputs)
    good = {"image": _img()}
    out = rt.predict_batch([good, inputs, good], errors="return")
    assert isinstance(out[0], Prediction) and isinstance(out[2], Prediction)
    assert isinstance(out[1], InputDtypeError | RuntimeInputError) and out[1].index == 1


# ------------------------------------------------------------------------------ 5: resize cache by bytes
def test_resize_cache_is_bounded_by_bytes_not_entries() -> None:
    pre = make_preprocessor({"type": "image", "size": [8, 8], "channels": 1, "scale": 1.0})
    budget = preprocess_image.RESIZE_CACHE_BYTES
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        width = budget // (8 * 4) // 4  # one matrix is budget/4 bytes: 12 widths would hold 3x the budget
        for i in range(12):
            pre([np.zeros((8, width + i), np.float32)])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held <= budget * 1.25, f"{held / 2**20:.1f} MiB held after 12 frame widths; budget {budget / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------ 6: raw text length
def test_text_reads_a_bounded_number_of_characters() -> None:
    from train.data.cache import default_tokenizer_file

    pre = make_preprocessor({"type": "text", "tokenizer_file": str(default_tokenizer_file()), "max_length": 16})
    long = "shape " * 400_000  # 2.4 M characters
    t0 = time.perf_counter()
    got = pre([long])
    seconds = time.perf_counter() - t0
    want = pre([long[: 16 * TEXT_CHARS_PER_TOKEN]])
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    assert got["input_ids"].shape == (1, 16)
    assert seconds < 0.5, f"{seconds:.2f} s for 2.4 M characters"


# ------------------------------------------------------------------------------ hypothesis over everything
def _huge(value: float, dtype: Any) -> np.ndarray:
    """One huge pixel per dtype (a float32 cast of 1e39 is Inf on purpose); int64 extremes everywhere."""
    if dtype == "i64":
        return np.full((8, 8), np.iinfo(np.int64).max if value > 0 else np.iinfo(np.int64).min)
    with np.errstate(over="ignore"):
        return _img(value, np.float64).astype(dtype)


_HUGE_VALUES = st.sampled_from([1e39, 1e30, F32_MAX, -F32_MAX, 6.6e4, 1e8])
_RAW = st.one_of(
    st.none(),
    st.builds(lambda s: image(np.random.default_rng(s)), st.integers(0, 99)),
    st.builds(lambda s: audio(np.random.default_rng(s)), st.integers(0, 99)),
    st.builds(lambda v, dt: _huge(v, dt), _HUGE_VALUES, st.sampled_from([np.float64, np.float32, "i64"])),
    st.builds(lambda v: np.full((4, 5), v), _HUGE_VALUES),
    st.sampled_from([np.full((8, 8), np.nan), "x", b"y", 3, [[1, 2], [3]], np.zeros((0, 5)), np.zeros((8, 8), bool)]),
)
_CONTAINER = st.one_of(
    st.fixed_dictionaries({}, optional={"image": _RAW, "audio": _RAW}),
    st.sampled_from(HOSTILE + [None, [1], "image"]),
    st.dictionaries(st.sampled_from(["image", "audio", "lidar", ""]), _RAW, max_size=3),
)
_TOP_K = st.sampled_from([5, 1, 3, None, "x", math.nan, 0, -2, 2.5, True, 10**30])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(precision=st.sampled_from(PRECISIONS), inputs=_CONTAINER, top_k=_TOP_K)
def test_predict_gives_a_typed_error_or_a_valid_prediction_at_every_precision(runtimes, precision, inputs,
                                                                             top_k) -> None:
    rt = runtimes[precision]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            pred = rt.predict(inputs, top_k=top_k)
        except RuntimeInputError as err:
            event(type(err).__name__)
            return
    event("prediction")
    assert np.all(np.isfinite(pred.probabilities)) and abs(float(pred.probabilities.sum()) - 1) < 1e-3


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(precision=st.sampled_from(PRECISIONS), samples=st.lists(_CONTAINER, min_size=1, max_size=4))
def test_predict_batch_returns_one_entry_per_input_at_every_precision(runtimes, precision, samples) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = runtimes[precision].predict_batch(samples, errors="return")
    assert len(out) == len(samples)
    for i, o in enumerate(out):
        assert isinstance(o, Prediction) or (isinstance(o, RuntimeInputError) and o.index == i)
