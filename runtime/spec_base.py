"""The spec registry and the base class every modality's spec class extends (torch-free).

Import specs through runtime.modality_spec, which registers every built-in type; this module
holds only what the type modules share (runtime.modality_spec documents the questions a spec answers).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.patterns import feed_name
from runtime.preprocess_base import DEFAULT_SEQUENCE_POLICY, PreprocessError

DEFAULT_MAX_FRAMES = 512  # an audio/timeseries spec without max_frames (fit_preprocess normally sets it)
DEFAULT_MAX_TOKENS = 128  # a text spec without max_length
POLICY_KEY = "sequence_policy"
TEXT_WORD = "token"  # synthetic text: this word repeated past max_length tokens

SPEC_TYPES: dict[str, type["PreprocessSpec"]] = {}
OUTPUTS: dict[str, tuple[tuple[str, str], ...]] = {}  # type -> (input name, dtype) its preprocessor makes


def register(cls: type["PreprocessSpec"]) -> type["PreprocessSpec"]:
    """Make ``cls`` the spec class of modality type ``cls.type`` (make_preprocessor dispatches through it)."""
    SPEC_TYPES[cls.type] = cls
    OUTPUTS[cls.type] = cls.outputs
    return cls


def spec_of(spec: Mapping[str, Any]) -> "PreprocessSpec":
    """The spec object of a preprocess spec dict; PreprocessError("spec") for an unknown type."""
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    cls = SPEC_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise PreprocessError("spec", f"unknown preprocess type {kind!r}; expected one of {sorted(SPEC_TYPES)}")
    return cls(spec)


class PreprocessSpec:
    """Answers about one modality's spec; subclasses set ``type`` and ``outputs``."""

    type: ClassVar[str]
    outputs: ClassVar[tuple[tuple[str, str], ...]]  # (input name, dtype) its preprocessor produces
    sequence: ClassVar[bool] = False  # has a symbolic "<modality>_seq" axis
    policies: ClassVar[tuple[str, ...]] = (DEFAULT_SEQUENCE_POLICY,)  # policies its preprocessor implements

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    # ---- lengths and widths
    @property
    def max_length(self) -> int | None:
        return None

    @property
    def sequence_length(self) -> int | None:
        return None

    @property
    def warmup_length(self) -> int:
        """A sequence length every graph of this spec accepts: the trained maximum, or 1 when the spec records
        none (a hand-edited manifest: the graph's position table may be shorter than sequence_length)."""
        return self.max_length or 1

    @property
    def feature_width(self) -> int | None:
        return None

    @property
    def sequence_policy(self) -> str:
        policy = self.spec.get(POLICY_KEY, DEFAULT_SEQUENCE_POLICY)
        if policy not in self.policies:
            raise PreprocessError("spec", f"{self.type} {POLICY_KEY} must be one of {list(self.policies)}, got "
                                          f"{policy!r}")
        return str(policy)

    @property
    def fits_stats(self) -> bool:
        """Whether ``train.data.stats.fit_preprocess`` fits mean/std on the training split for this spec."""
        return True

    def feed_names(self, modality: str) -> list[str]:
        return [feed_name(modality, n) for n, _ in self.outputs]

    # ---- inputs
    def placeholder_recipe(self) -> dict[str, Any]:
        raise NotImplementedError

    def placeholder_raw(self) -> Any:
        return raw_from_recipe(self.placeholder_recipe())

    def synthetic_raw(self, seed: int = 0) -> Any:
        raise NotImplementedError

    def expected_raw(self) -> str:
        raise NotImplementedError

    def check_raw(self, raw: Any, index: int | None = None, what: str | None = None) -> Any:
        """Type, dtype, rank, channels, emptiness and NaN/Inf of one raw sample, without preprocessing it;
        returns it as an array (or str); raises PreprocessError."""
        raise NotImplementedError

    def preprocessor(self, base_dir: Path | None = None) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``mmedge runtime info``."""
        return self.expected_raw()




def raw_from_recipe(recipe: Mapping[str, Any]) -> Any:
    """The raw value (str or numpy array) a placeholder recipe describes."""
    if recipe["kind"] == "text":
        return str(recipe["value"])
    if recipe["kind"] != "zeros":
        raise ValueError(f"unknown placeholder recipe kind {recipe['kind']!r}; known: zeros, text")
    return np.zeros([int(d) for d in recipe["shape"]], dtype=recipe.get("dtype", "float32"))
