"""Coarser pretraining labels, so that the frozen unimodal encoders do not already know the downstream task.

The multimodal methods can only show an advantage where the unimodal encoders leave room: an
encoder pretrained on the very labels it is later fused for sits at the unimodal ceiling. With
``coarse-parity`` or ``coarse-mod3`` the av-digits encoders learn digit parity or digit mod 3,
and the methods then learn the ten digits on top of them.
"""
from __future__ import annotations

import dataclasses

from train.data.types import MultimodalDataset, Sample

LABELS_TASK = "labels"  # the downstream labels themselves (same-label pretraining)
# task -> (modulus, names of the coarse classes); only for data sets whose labels are the digits 0-9.
COARSE: dict[str, tuple[int, list[str]]] = {
    "coarse-parity": (2, ["even", "odd"]),
    "coarse-mod3": (3, ["mod3=0", "mod3=1", "mod3=2"]),
}
PRETRAIN_TASKS: tuple[str, ...] = (LABELS_TASK, *COARSE)
DIGITS = [str(d) for d in range(10)]


def coarse_label(digit: int, task: str) -> int:
    """The coarse class of ``digit`` under ``task`` (parity: 0 even / 1 odd; mod 3: the remainder)."""
    return digit % COARSE[task][0]


def relabel_for_pretraining(data: MultimodalDataset, task: str) -> MultimodalDataset:
    """``data`` with its labels replaced by ``task``'s coarse labels (``labels``: ``data`` unchanged).

    Coarse tasks need single-label data whose labels are the digits "0".."9" (av-digits); any other
    data set is refused, since its classes have no parity or remainder.
    """
    if task == LABELS_TASK:
        return data
    if task not in COARSE:
        raise ValueError(f"unknown pretraining task {task!r}; choose one of {', '.join(PRETRAIN_TASKS)}")
    if data.task != "single-label" or list(data.labels) != DIGITS:
        raise ValueError(f"--pretrain-task {task} needs a data set labelled with the digits 0-9 (av-digits); "
                         f"{data.name!r} has {data.task} labels {list(data.labels)[:5]}...; use --pretrain-task "
                         f"{LABELS_TASK} there")
    digit = {i: int(name) for i, name in enumerate(data.labels)}

    def relabel(s: Sample) -> Sample:
        return Sample(s.id, s.inputs, coarse_label(digit[int(s.label)], task))

    splits = {name: [relabel(s) for s in samples] for name, samples in data.splits.items()}
    return dataclasses.replace(data, labels=list(COARSE[task][1]), splits=splits)
