"""Samples -> tensors, through the same numpy preprocessing the runtime uses."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from runtime.preprocess import Preprocessor, make_preprocessor
from train.data.types import ModalitySpec, Sample, Task


@dataclass
class ModalityBatch:
    """Inputs of one modality for the rows of the batch that have it."""

    rows: torch.Tensor  # (n,) int64 indices into the batch
    inputs: dict[str, torch.Tensor]  # preprocessed tensors, n rows each


@dataclass
class Batch:
    size: int
    modalities: dict[str, ModalityBatch]  # only modalities present in at least one row
    labels: torch.Tensor  # (B,) int64, or (B, C) float multi-hot for multi-label
    ids: list[str]

    def present(self, name: str) -> torch.Tensor:
        """(B,) bool: which rows have modality ``name``."""
        mask = torch.zeros(self.size, dtype=torch.bool)
        if name in self.modalities:
            mask[self.modalities[name].rows] = True
        return mask


def encode_labels(samples: Sequence[Sample], task: Task, num_classes: int) -> torch.Tensor:
    if task == "multi-label":
        hot = np.zeros((len(samples), num_classes), dtype=np.float32)
        for i, s in enumerate(samples):
            labels = s.label if isinstance(s.label, tuple) else (s.label,)
            hot[i, list(labels)] = 1.0
        return torch.from_numpy(hot)
    return torch.tensor([int(s.label) for s in samples], dtype=torch.long)  # type: ignore[arg-type]


class Collate:
    """A DataLoader collate_fn: list[Sample] -> Batch (picklable, so workers can use it)."""

    def __init__(self, modalities: Mapping[str, ModalitySpec], task: Task, num_classes: int) -> None:
        self.task = task
        self.num_classes = num_classes
        self.preprocessors: dict[str, Preprocessor] = {
            name: make_preprocessor(spec.preprocess) for name, spec in modalities.items()
        }

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        per_modality: dict[str, ModalityBatch] = {}
        for name, pre in self.preprocessors.items():
            rows = [i for i, s in enumerate(samples) if s.inputs.get(name) is not None]
            if not rows:
                continue
            arrays = pre([samples[i].inputs[name] for i in rows])
            per_modality[name] = ModalityBatch(
                rows=torch.tensor(rows, dtype=torch.long),
                inputs={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
            )
        return Batch(
            size=len(samples),
            modalities=per_modality,
            labels=encode_labels(samples, self.task, self.num_classes),
            ids=[s.id for s in samples],
        )
