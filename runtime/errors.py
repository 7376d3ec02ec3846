"""The runtime's typed errors. Each says what was asked for, what exists and how to fix it.

Every error carries ``pattern`` (a pattern key, or None when no pattern is involved) so a
host loop can log which branch failed.

Contract of ``Runtime.predict`` / ``predict_batch`` / ``SensorHub.snapshot``: the only
exceptions they raise are subclasses of ``MMEdgeError``; bad *input* always raises a
``RuntimeInputError`` subclass. A sensor loop therefore needs one ``except MMEdgeError``
(or ``except RuntimeInputError`` to skip one bad sample and keep going)::

    try:
        pred = rt.predict(hub.snapshot())
    except RuntimeInputError as err:   # this sample is unusable; log err.pattern, err
        continue
"""
from __future__ import annotations

from collections.abc import Iterable


def _rebuild(cls: type, args: tuple, state: dict) -> "MMEdgeError":
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class MMEdgeError(Exception):
    """Root of every error mmedge raises on purpose (runtime, export, calibration, training, data).

    Every CLI maps it to exit code 2 with its message on one stderr line and no traceback
    (runtime/cli_errors.py); any other exception is a bug and keeps its traceback."""

    def __init__(self, message: str, *, pattern: str | None = None) -> None:
        self.pattern = pattern
        super().__init__(message)

    def __reduce__(self) -> tuple:  # keyword-only fields survive copy/pickle (e.g. across processes)
        return (_rebuild, (type(self), self.args, self.__dict__))


class ConfigError(MMEdgeError, ValueError):
    """A request that cannot be met as asked (an unknown name, a value out of range, options that
    contradict each other), refused before any work starts. Outside the runtime's predict contract:
    raised by the build, training and calibration front ends."""


class NotFound(MMEdgeError, FileNotFoundError):
    """A file, run or directory the request names does not exist; the message says how to create it."""


class BundleIntegrityError(MMEdgeError):
    """A bundle that must not be loaded: bad schema, wrong checksum, or a path leaving the bundle."""

    def __init__(self, message: str, *, pattern: str | None = None, path: str | None = None) -> None:
        self.path = path
        super().__init__(message, pattern=pattern)


class BundleSignatureError(BundleIntegrityError):
    """``Runtime.load(trusted_keys=...)``: the bundle is unsigned, or not signed by a trusted key, or its
    manifest is not the one that was signed."""


class UnknownPrecision(MMEdgeError, ValueError):
    """``Runtime.load(precision=...)`` named a precision the bundle does not hold."""

    def __init__(self, precision: object, available: Iterable[str]) -> None:
        self.precision = precision
        self.available = list(available)
        super().__init__(f"bundle has no {precision!r} graphs; it has {', '.join(self.available) or 'none'}. "
                         "Pass one of those, or export the precision (`mmedge export build --precision ...`)")


class InferenceError(MMEdgeError):
    """onnxruntime failed on inputs that passed every input check, or produced NaN/Inf outputs."""


class RuntimeInputError(MMEdgeError, ValueError):
    """Base of every error caused by one call's input (or a sensor's sample): skip it, keep looping.

    ``modality`` names the offending modality/sensor where one is to blame; ``index`` is the
    sample's position in a ``predict_batch`` call (None for ``predict``).
    """

    def __init__(self, message: str, *, pattern: str | None = None, modality: str | None = None,
                 index: int | None = None) -> None:
        self.modality = modality
        self.index = index
        super().__init__(message, pattern=pattern)


class UnknownModality(RuntimeInputError):
    """An input key (or sensor name) that is not one of the bundle's modalities."""


class InputShapeError(RuntimeInputError):
    """Wrong rank, wrong channel/feature count, or an empty array."""


class InputDtypeError(RuntimeInputError):
    """Wrong Python type (str for an image, ragged nested lists, ...) or a non-numeric/int-PCM dtype."""


class NonFiniteInput(RuntimeInputError):
    """NaN or Inf in a sample (or values that overflow the graph's input dtype)."""


class InputOutOfRange(RuntimeInputError):
    """A finite value far outside the range the graph was exported for (see ``ModalityEntry.input_range``),
    or one that drove the graph to NaN/Inf: a reduced-precision graph cannot represent it."""


class InvalidArgument(RuntimeInputError):
    """A bad keyword or container argument (``top_k``, ``errors``, a ``predict_batch`` that is not a
    list), refused before anything runs."""


class NoModalityAvailable(RuntimeInputError):
    """Every modality is missing (None, stale or dropped as unhealthy): there is no graph to run."""


class StaleInput(RuntimeInputError):
    """A sensor's latest sample is older than its ``max_age`` (policy "error")."""

    def __init__(self, message: str, *, modality: str, age_s: float, max_age_s: float) -> None:
        self.age_s = age_s
        self.max_age_s = max_age_s
        super().__init__(message, modality=modality)


class FlatlineInput(RuntimeInputError):
    """A sensor repeated the same sample (within eps) over its flat-line window: likely stuck."""


class PatternNotAvailable(RuntimeInputError):
    """The present modalities form a pattern whose graph is not in the bundle at this precision."""


class ProviderFallbackWarning(RuntimeWarning):
    """A requested GPU execution provider is not in use (onnxruntime fell back, e.g. to CPU)."""


class SequenceTooLong(InputShapeError):
    """A clip longer than the modality's trained maximum under its bundle's sequence policy "error";
    ``length`` and ``maximum`` are in frames."""

    def __init__(self, message: str, *, modality: str, length: int, maximum: int, pattern: str | None = None,
                 index: int | None = None) -> None:
        self.length = length
        self.maximum = maximum
        super().__init__(message, pattern=pattern, modality=modality, index=index)


class DegradedGraphWarning(UserWarning):
    """``Runtime.load`` of graphs written with ``--allow-degraded``: they missed their parity tolerance.
    A host that must not serve them: ``warnings.simplefilter("error", DegradedGraphWarning)``."""
