"""runtime.sensors.SensorHub: latest sample, staleness (fake clock), health checks, flat-line, policies,
and the hub feeding Runtime.predict."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.errors import (FlatlineInput, InputDtypeError, InputShapeError, NoModalityAvailable, NonFiniteInput,
                            RuntimeInputError, StaleInput, UnknownModality)
from runtime.sensors import SensorHub
from runtime.session import Runtime
from runtime_fixtures import audio, image, tiny_bundle

SPECS = {
    "image": {"type": "image", "size": [8, 8], "channels": 1},
    "audio": {"type": "audio", "input": "features", "n_features": 5},
    "text": {"type": "text", "tokenizer_file": "unused.json", "max_length": 8},
}


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def hub(**kw) -> tuple[SensorHub, FakeClock]:
    clock = FakeClock()
    return SensorHub(SPECS, clock=clock, **kw), clock


RNG = np.random.default_rng(0)


def test_latest_fresh_samples_pass_through_and_never_pushed_is_missing() -> None:
    h, clock = hub()
    first, second = image(RNG), image(RNG)
    h.push("image", first)
    h.push("image", second)
    clock.t += 0.05
    snap = h.snapshot()
    assert snap["image"] is second and snap["audio"] is None and snap["text"] is None
    assert h.report == {"image": None, "audio": "no sample yet", "text": "no sample yet"}


def test_stale_sample_is_missing_or_raises_by_policy() -> None:
    h, clock = hub(max_age={"image": 0.12, "audio": 1.0})
    h.push("image", image(RNG))
    h.push("audio", audio(RNG))
    clock.t += 0.2
    snap = h.snapshot()
    assert snap["image"] is None and snap["audio"] is not None
    assert h.report["image"].startswith("stale: 0.200 s")
    strict, clock = hub(policy={"image": "error"})
    strict.push("image", image(RNG), timestamp=clock.t - 0.5)  # explicit timestamps, same clock
    with pytest.raises(StaleInput) as err:
        strict.snapshot()
    assert err.value.modality == "image" and err.value.age_s == pytest.approx(0.5) and err.value.max_age_s == 0.12
    assert isinstance(err.value, RuntimeInputError) and "max_age" in str(err.value)
    assert strict.snapshot(now=clock.t - 0.45)["image"] is not None  # `now` overrides the clock


def test_max_age_none_disables_staleness() -> None:
    h, clock = hub(max_age=None)
    h.push("audio", audio(RNG))
    clock.t += 1e6
    assert h.snapshot()["audio"] is not None


@pytest.mark.parametrize("name,data,cls", [
    ("image", np.full((8, 8), np.nan, np.float32), NonFiniteInput),
    ("image", "not a frame", InputDtypeError),
    ("image", np.zeros((8, 8, 2)), InputShapeError),
    ("audio", np.zeros((4, 3), np.float32), InputShapeError),
    ("audio", np.zeros(5, np.float32), InputShapeError),
    ("audio", np.ones((4, 5), np.complex64), InputDtypeError),
    ("text", np.zeros(3), InputDtypeError),
])
def test_unhealthy_sample_is_reported_at_push_and_dropped_or_raised(name: str, data, cls) -> None:
    h, _ = hub()
    problem = h.push(name, data)
    assert isinstance(problem, cls) and problem.modality == name
    assert h.snapshot()[name] is None and h.report[name].startswith("unhealthy:")
    strict, _ = hub(policy="error")
    strict.push(name, data)
    with pytest.raises(cls):
        strict.snapshot()


def test_flatline_detector_flags_a_stuck_sensor_and_recovers() -> None:
    h, _ = hub(flatline={"audio": 3}, flatline_eps=1e-6)
    frame = audio(RNG, 4)
    buf = frame.copy()
    assert h.push("audio", buf) is None
    assert h.push("audio", buf) is None  # 2 identical: below the window
    problem = h.push("audio", buf + 1e-9)  # within eps: still the same
    assert isinstance(problem, FlatlineInput) and "stuck" in str(problem)
    assert h.snapshot()["audio"] is None
    buf[:] = frame + 1.0  # producer reuses its buffer with new data: not flat
    assert h.push("audio", buf) is None and h.snapshot()["audio"] is not None


def test_push_none_clears_the_sensor_and_text_is_checked_as_str() -> None:
    h, _ = hub()
    h.push("text", "what colour?")
    assert h.snapshot()["text"] == "what colour?"
    h.push("text", None)
    assert h.snapshot()["text"] is None and h.report["text"] == "no sample yet"


def test_wiring_mistakes_are_caught_early() -> None:
    h, _ = hub()
    with pytest.raises(UnknownModality, match="lidar"):
        h.push("lidar", np.zeros(3))
    with pytest.raises(UnknownModality, match="radar"):
        SensorHub(SPECS, max_age={"radar": 0.1})
    with pytest.raises(ValueError, match="policy"):
        SensorHub(SPECS, policy="ignore")


def test_hub_without_specs_still_checks_nan() -> None:
    h = SensorHub(["imu"], clock=FakeClock())
    assert isinstance(h.push("imu", np.array([np.inf])), NonFiniteInput)
    assert h.push("imu", np.ones(3)) is None and h.snapshot()["imu"] is not None


def test_concurrent_producers_and_a_consumer_see_whole_samples() -> None:
    h = SensorHub(SPECS, max_age=None)
    stop = threading.Event()

    def produce(name: str, make) -> None:
        while not stop.is_set():
            h.push(name, make())

    rngs = np.random.default_rng(1).spawn(2)  # one generator per producer thread
    threads = [threading.Thread(target=produce, args=("image", lambda: image(rngs[0]))),
               threading.Thread(target=produce, args=("audio", lambda: audio(rngs[1], 3)))]
    [t.start() for t in threads]
    try:
        for _ in range(200):
            snap = h.snapshot()
            assert snap["image"] is None or snap["image"].shape == (8, 8)
    finally:
        stop.set()
        [t.join() for t in threads]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime.load(tiny_bundle(tmp_path_factory.mktemp("rt")), intra_op_threads=1)


def test_runtime_predicts_from_the_hub_with_a_smaller_pattern_when_a_sensor_is_stale(rt: Runtime) -> None:
    clock = FakeClock()
    h = rt.sensor_hub(max_age={"image": 0.12, "audio": 0.5}, clock=clock)
    h.push("image", image(RNG))
    h.push("audio", audio(RNG))
    assert rt.predict_from(h).pattern == "audio+image"
    clock.t += 0.3
    assert rt.predict_from(h).pattern == "audio"
    h.push("audio", np.full((3, 5), np.nan, np.float32))
    with pytest.raises(NoModalityAvailable):
        rt.predict_from(h)
    assert "unhealthy" in h.report["audio"] and "stale" in h.report["image"]


def test_a_late_packet_never_replaces_a_fresher_sample_and_is_counted() -> None:
    h, clock = hub(max_age=None)
    new, late = image(RNG), image(RNG)
    h.push("image", new, timestamp=10.0)
    assert h.push("image", late, timestamp=9.5) is None  # not an unhealthy sample: just old news
    h.push("audio", np.ones((3, 5), np.float32), timestamp=10.0)
    h.push("audio", None, timestamp=9.0)  # a late "no data" does not clear a fresher sample either
    snap = h.snapshot(now=10.1)
    assert snap["image"] is new and snap["audio"] is not None
    assert h.out_of_order == {"audio": 1, "image": 1, "text": 0}
    h.push("image", late, timestamp=10.0)  # an equal timestamp is not out of order: the newer push wins
    assert h.snapshot(now=10.1)["image"] is late and h.out_of_order["image"] == 1
