"""Per-pattern evaluation, always through ``model.pattern_module(pattern)``.

This is the only evaluation path: the branch measured here is the exact module the
exporter traces, so test numbers are the numbers of what ships.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from runtime.patterns import Pattern, all_patterns
from train.engine.batches import Collate
from train.data.types import Sample
from train.methods.base import MultimodalModel, PatternModule, pattern_inputs
from train.engine.metrics import task_metrics


def predict_pattern(module: PatternModule, samples: Sequence[Sample], collate: Collate, batch_size: int = 128
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and encoded labels of samples that all have exactly ``module.pattern``."""
    logits, labels = [], []
    device = next(module.parameters()).device
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = collate(samples[start : start + batch_size])
            inputs = tuple(t.to(device) for t in pattern_inputs(batch, module))
            logits.append(module(*inputs)[0].float().cpu().numpy())
            labels.append(batch.labels.numpy())
    if not logits:
        return np.zeros((0, collate.num_classes), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_by_pattern(model: MultimodalModel, samples: Sequence[Sample], collate: Collate, batch_size: int = 128
                        ) -> dict[str, dict[str, Any]]:
    """Group ``samples`` by their own pattern and score each group through its branch.

    Returns {pattern key: task metrics + "num_samples"}, fullest patterns first.
    """
    groups: dict[Pattern, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.pattern].append(s)
    order = [p for p in all_patterns(model.modalities) if p in groups]
    unknown = sorted(p.key for p in groups if p not in order)
    if unknown:
        raise ValueError(f"samples with patterns {unknown} do not fit a model over {model.modalities}")
    was_training = model.training
    model.eval()
    try:
        out: dict[str, dict[str, Any]] = {}
        for pattern in order:
            logits, labels = predict_pattern(model.pattern_module(pattern), groups[pattern], collate, batch_size)
            out[pattern.key] = {**task_metrics(model.task, logits, labels), "num_samples": len(groups[pattern])}
        return out
    finally:
        model.train(was_training)


def restrict_to_pattern(samples: Sequence[Sample], pattern: Pattern) -> list[Sample]:
    """The samples that have every modality of ``pattern``, with the others removed."""
    return [s.restricted(pattern) for s in samples if pattern <= s.pattern]


def evaluate_all_patterns(model: MultimodalModel, samples: Sequence[Sample], collate: Collate, batch_size: int = 128
                          ) -> dict[str, dict[str, Any]]:
    """Each pattern P scored on the samples that have P, with the other modalities withheld.

    "What if only these sensors delivered?" for every P, on the same test set.
    """
    out: dict[str, dict[str, Any]] = {}
    for pattern in all_patterns(model.modalities):
        subset = restrict_to_pattern(samples, pattern)
        if subset:
            out.update(evaluate_by_pattern(model, subset, collate, batch_size))
    return out


def predict_mixed(model: MultimodalModel, samples: Sequence[Sample], collate: Collate, batch_size: int = 128
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and encoded labels of samples with mixed availability, in input order.

    Each pattern group runs through its own branch (as on a device, where each sample
    takes the graph of the sensors that delivered), then rows go back to their places.
    """
    groups: dict[Pattern, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.pattern].append(i)
    known = set(all_patterns(model.modalities))
    unknown = sorted(p.key for p in groups if p not in known)
    if unknown:
        raise ValueError(f"samples with patterns {unknown} do not fit a model over {model.modalities}")
    logits = np.zeros((len(samples), collate.num_classes), np.float32)
    labels: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        for pattern, rows in groups.items():
            part_logits, part_labels = predict_pattern(model.pattern_module(pattern), [samples[i] for i in rows],
                                                       collate, batch_size)
            if labels is None:  # (N,) class indices or (N, C) multi-hot, whatever the collate encodes
                labels = np.zeros((len(samples), *part_labels.shape[1:]), part_labels.dtype)
            logits[rows], labels[rows] = part_logits, part_labels
    finally:
        model.train(was_training)
    return logits, (labels if labels is not None else np.zeros((0,), np.int64))


def evaluate_mixed(model: MultimodalModel, samples: Sequence[Sample], collate: Collate, batch_size: int = 128
                   ) -> dict[str, Any]:
    """Task metrics over ALL ``samples`` (mixed patterns), each scored through its own branch.

    Returns task metrics + "num_samples" + "patterns" ({pattern key: count}, fullest first).
    """
    logits, labels = predict_mixed(model, samples, collate, batch_size)
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        counts[s.pattern.key] += 1
    order = [p.key for p in all_patterns(model.modalities) if p.key in counts]
    return {**task_metrics(model.task, logits, labels), "num_samples": len(samples),
            "patterns": {k: counts[k] for k in order}}
