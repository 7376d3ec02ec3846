"""A small sensor hub: latest sample per sensor, staleness window, health checks, per-sensor policy.

    hub = rt.sensor_hub(max_age={"image": 0.12, "audio": 0.5}, policy="treat-as-missing", flatline=5)
    hub.push("image", frame)                 # from the camera thread; timestamp = clock() by default
    pred = rt.predict(hub.snapshot())        # stale/unhealthy sensors are None -> a smaller pattern
    hub.report                               # {"image": None, "audio": "stale: ..."}

Timestamps and ``now`` must come from the same clock (``clock``, default ``time.monotonic``).
The default window, 0.12 s, is what Autoware's BEVFusion tolerates between camera and lidar.
Health checks (at push, cheap: no preprocessing): type, dtype, rank, channel/feature count and
NaN/Inf against the bundle's preprocessing spec where one is known, and an optional flat-line
detector (the same sample, within ``flatline_eps``, over ``flatline`` consecutive pushes).
Policy per sensor: "treat-as-missing" (the sensor becomes None) or "error" (``snapshot``
raises the typed error: StaleInput, NonFiniteInput, InputShapeError, FlatlineInput, ...).
A sensor that never delivered, or was pushed None, is simply missing under either policy.
The hub keeps a reference to pushed arrays (pass ``copy=True`` if the producer reuses buffers).
Out-of-order packets: a push whose timestamp is older than the sensor's latest one (a late packet
over a network, a reordered queue) never replaces the fresher sample, whether it carries data or
None; it is dropped and counted in ``out_of_order`` (per sensor). Equal timestamps replace.
"""
from __future__ import annotations

import copy as _copy
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import FlatlineInput, NonFiniteInput, RuntimeInputError, StaleInput, UnknownModality
from runtime.inputs import check_raw
from runtime.manifest import Manifest, ModalityEntry

DEFAULT_MAX_AGE = 0.12
POLICIES = ("error", "treat-as-missing")


@dataclass
class SensorStatus:
    name: str
    usable: bool
    age_s: float | None  # None: nothing pushed
    reason: str | None  # why it is not usable (None when usable)
    error: RuntimeInputError | None = None  # the typed error behind ``reason`` (missing: None)


@dataclass
class _Slot:
    data: Any = None
    timestamp: float | None = None  # of the latest push, None included (late packets are older than it)
    error: RuntimeInputError | None = None
    prev: np.ndarray | None = None  # private copy for the flat-line detector (producers reuse buffers)
    repeats: int = 0


def _per_sensor(value: Any, names: list[str], default: Any, what: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise UnknownModality(f"{what} names unknown sensors {unknown}; the sensors are {names}",
                                  modality=str(unknown[0]))
        return {n: value.get(n, default) for n in names}
    return {n: value for n in names}


class SensorHub:
    def __init__(self, modalities: Manifest | Mapping[str, ModalityEntry | dict[str, Any]] | Iterable[str],
                 max_age: float | None | Mapping[str, float | None] = DEFAULT_MAX_AGE,
                 policy: str | Mapping[str, str] = "treat-as-missing",
                 flatline: int | None | Mapping[str, int | None] = None, flatline_eps: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(modalities, Manifest):
            modalities = modalities.modalities
        if isinstance(modalities, Mapping):  # name -> ModalityEntry or preprocess spec
            self.specs: dict[str, dict[str, Any] | None] = {
                n: (e.preprocess if isinstance(e, ModalityEntry) else dict(e)) for n, e in modalities.items()}
        else:
            self.specs = {str(n): None for n in modalities}  # no spec: only NaN/Inf is checkable
        self.names = sorted(self.specs)
        if not self.names:
            raise ValueError("SensorHub needs at least one sensor")
        self.max_age = {n: (float("inf") if a is None else float(a))
                        for n, a in _per_sensor(max_age, self.names, DEFAULT_MAX_AGE, "max_age").items()}
        self.policy = _per_sensor(policy, self.names, "treat-as-missing", "policy")
        bad = {n: p for n, p in self.policy.items() if p not in POLICIES}
        if bad:
            raise ValueError(f"unknown policy {bad}; choose from {POLICIES}")
        self.flatline = _per_sensor(flatline, self.names, None, "flatline")
        self.flatline_eps = float(flatline_eps)
        self.clock = clock
        self._slots = {n: _Slot() for n in self.names}
        self._out_of_order = {n: 0 for n in self.names}
        self._lock = threading.Lock()
        self._report: dict[str, str | None] = {n: "no sample yet" for n in self.names}

    # ------------------------------------------------------------------ producers
    def push(self, name: str, data: Any, timestamp: float | None = None, *, copy: bool = False
             ) -> RuntimeInputError | None:
        """Store ``data`` as sensor ``name``'s latest sample; returns its health problem (None if healthy).

        Never raises for bad data (the consumer's policy decides); raises UnknownModality for a name
        that is not a sensor of this hub, since that is a wiring bug.
        """
        if name not in self._slots:
            raise UnknownModality(f"unknown sensor {name!r}; the sensors are {self.names}", modality=str(name))
        ts = self.clock() if timestamp is None else float(timestamp)
        error: RuntimeInputError | None = None
        value = data
        if data is not None:
            try:
                value = self._check(name, data)
            except RuntimeInputError as err:
                error = err
            if copy and isinstance(value, np.ndarray):
                value = value.copy()
        with self._lock:
            slot = self._slots[name]
            if slot.timestamp is not None and ts < slot.timestamp:  # a late packet: keep the newest reading
                self._out_of_order[name] += 1
                return None
            if data is None:  # the producer says "no data": missing, not unhealthy
                self._slots[name] = _Slot(timestamp=ts)
                return None
            if error is None and isinstance(value, np.ndarray) and self.flatline[name]:
                error = self._flatline(name, slot, value)
            slot.data, slot.timestamp, slot.error = value, ts, error
        return error

    def _check(self, name: str, data: Any) -> Any:
        spec = self.specs[name]
        if spec is not None:
            return check_raw(spec, data, name)
        if isinstance(data, np.ndarray) and data.dtype.kind == "f" and not np.all(np.isfinite(data)):
            raise NonFiniteInput(f"{name}: sample contains NaN or Inf", modality=name)
        return data

    def _flatline(self, name: str, slot: _Slot, arr: np.ndarray) -> RuntimeInputError | None:
        same = (slot.prev is not None and slot.prev.shape == arr.shape and arr.dtype.kind in "uif"
                and bool(np.all(np.abs(arr.astype(np.float64) - slot.prev) <= self.flatline_eps)))
        slot.repeats = slot.repeats + 1 if same else 1
        slot.prev = arr.astype(np.float64)  # a copy, whatever the producer does with its buffer
        window = int(self.flatline[name])
        if slot.repeats >= window:
            return FlatlineInput(f"{name}: the last {slot.repeats} samples are identical (within eps "
                                 f"{self.flatline_eps}); the sensor looks stuck (flat-line window {window})",
                                 modality=name)
        return None

    # ------------------------------------------------------------------ consumers
    def status(self, now: float | None = None) -> dict[str, SensorStatus]:
        """Per sensor: usable or not, its age and why not."""
        return self._read(now)[0]

    def _read(self, now: float | None) -> tuple[dict[str, SensorStatus], dict[str, Any]]:
        now = self.clock() if now is None else float(now)
        with self._lock:  # one consistent view of all sensors
            slots = {n: (s.data, s.timestamp, s.error) for n, s in self._slots.items()}
        out: dict[str, SensorStatus] = {}
        for n, (data, ts, err) in slots.items():
            if ts is None or (data is None and err is None):  # never pushed, or pushed None
                out[n] = SensorStatus(n, False, None, "no sample yet")
                continue
            age = now - ts
            if err is not None:
                out[n] = SensorStatus(n, False, age, f"unhealthy: {err}", err)
            elif age > self.max_age[n]:
                stale = StaleInput(f"{n}: latest sample is {age:.3f} s old, max_age is {self.max_age[n]} s; check the "
                                   "sensor or raise its max_age", modality=n, age_s=age, max_age_s=self.max_age[n])
                out[n] = SensorStatus(n, False, age, f"stale: {age:.3f} s > max_age {self.max_age[n]} s", stale)
            else:
                out[n] = SensorStatus(n, True, age, None)
        return out, {n: d for n, (d, _, _) in slots.items()}

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """``{sensor: latest usable sample or None}``, ready for ``Runtime.predict``.

        Under policy "error" a stale or unhealthy sensor raises its typed error instead of
        becoming None. ``report`` says why each dropped sensor was dropped.
        """
        statuses, data = self._read(now)
        self._report = {n: s.reason for n, s in statuses.items()}
        out: dict[str, Any] = {}
        for n, s in statuses.items():
            if s.usable:
                out[n] = data[n]
                continue
            if s.error is not None and self.policy[n] == "error":
                raise _copy.copy(s.error)  # a fresh instance: the stored one may be raised by other threads
            out[n] = None
        return out

    @property
    def out_of_order(self) -> dict[str, int]:
        """Per sensor, how many pushes were dropped because their timestamp was older than the latest."""
        with self._lock:
            return dict(self._out_of_order)

    @property
    def report(self) -> dict[str, str | None]:
        """Per sensor, why the last snapshot dropped it (None: it was used)."""
        return dict(self._report)

    def __repr__(self) -> str:
        return f"SensorHub({self.names}, max_age={self.max_age}, policy={self.policy})"
