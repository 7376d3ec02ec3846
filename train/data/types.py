"""The in-memory form of every dataset: built-in sets and the user format.

A ``Sample`` holds *raw* sensor data, the way a device would deliver it.
Turning raw data into model inputs is ``runtime.preprocess``'s job, driven
by each modality's serialisable ``preprocess`` spec, so training and the
torch-free runtime run the exact same numpy code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.patterns import Pattern

ModalityType = Literal["image", "text", "audio", "timeseries"]
MODALITY_TYPES: tuple[str, ...] = ("image", "text", "audio", "timeseries")
Task = Literal["single-label", "multi-label", "binary"]
TASKS: tuple[str, ...] = ("single-label", "multi-label", "binary")
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality: its name in the data, its type, and how to preprocess it.

    ``preprocess`` is plain JSON (see ``runtime.preprocess``); it is fitted on
    the training split (normalisation statistics) and later copied verbatim
    into the bundle manifest.
    """

    name: str
    type: ModalityType
    preprocess: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One example. ``inputs`` maps modality name -> raw value; an absent key is a missing modality.

    Raw values: image -> uint8 or float array (H, W) or (H, W, C); text -> str;
    audio -> float32 features (T, F) or a 1-D float32 waveform; timeseries -> float32 (T, C).
    ``label`` is a class index (single-label, binary) or a tuple of indices (multi-label).
    """

    id: str
    inputs: dict[str, Any]
    label: int | tuple[int, ...]

    @property
    def pattern(self) -> Pattern:
        return Pattern.of_present(self.inputs)

    def restricted(self, keep: set[str] | frozenset[str]) -> "Sample":
        """A copy that only has the modalities in ``keep`` (the others become missing)."""
        return Sample(self.id, {k: v for k, v in self.inputs.items() if k in keep and v is not None}, self.label)


@dataclass
class MultimodalDataset:
    name: str
    task: Task
    labels: list[str]
    modalities: dict[str, ModalitySpec]
    splits: dict[str, list[Sample]]
    # Human-readable reasons for every sample a loader had to skip; never silently empty.
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]
