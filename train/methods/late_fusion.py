"""The CMPT paper's ablation baseline (Sec. 4.6.1, Fig. 3/5): CMPT without proxy tokens.

"A standard model trained without modality dropout or CMPTs": the same frozen encoders
with the same rank-1 LoRA, additive fusion of the final CLS tokens and one linear head,
trained on the data as given. A missing modality drops its term from the sum (what
Eq. 5 does without proxies; the same as a zero feature). ``modality-dropout`` is this
model trained with random modality dropout (see modality_dropout.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from runtime.patterns import Pattern
from train.engine.batches import Batch
from train.methods.base import (
    DatasetInfo,
    MultimodalModel,
    PatternModule,
    freeze_and_adapt,
    present_matrix,
    sample_modality_dropout,
    scatter_rows,
    shared_width,
    task_loss,
)
from train.methods.registry import register


@dataclass
class LateFusionConfig:
    lora_rank: int = 1
    lora_alpha: float = 1.0
    lora_dropout: float = 0.1
    modality_dropout: bool = False


def additive_fuse_masked(cls: Mapping[str, Tensor], present: Tensor, modalities: list[str]) -> Tensor:
    """Sum of the present modalities' CLS per row; ``present`` (B, M) bool."""
    ref = next(iter(cls.values()))
    zero = torch.zeros_like(ref)
    fused: Tensor | None = None
    for i, m in enumerate(modalities):
        term = torch.where(present[:, i : i + 1], cls.get(m, zero), zero)
        fused = term if fused is None else fused + term
    assert fused is not None
    return fused


@register("late-fusion")
class LateFusion(MultimodalModel):
    config_class = LateFusionConfig

    def __init__(self, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: LateFusionConfig) -> None:
        super().__init__(info, encoders, config)
        hidden = shared_width(self.encoders, "additive fusion sums CLS tokens of different modalities")
        freeze_and_adapt(self.encoders, config.lora_rank, config.lora_alpha, config.lora_dropout)
        self.head = nn.Linear(hidden, self.num_classes)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        device = self.head.weight.device
        in_data = present_matrix(batch, self.modalities, device)
        use = in_data
        if self.training and self.config.modality_dropout:
            use = sample_modality_dropout(in_data)
        cls: dict[str, Tensor] = {}
        for m in self.modalities:
            mb = batch.modalities.get(m)
            if mb is None:
                continue
            cls[m] = scatter_rows(self.encoders[m](mb.inputs)[:, 0], mb.rows, batch.size)
        fused = additive_fuse_masked(cls, use, self.modalities)
        logits = self.head(fused)
        out = {"logits": logits, "embedding": fused}
        if self.training:
            out["loss"] = task_loss(self.task, logits, batch.labels)
        return out

    def pattern_module(self, pattern: Pattern) -> "AdditiveBranch":
        return AdditiveBranch(self, self.check_pattern(pattern))


class AdditiveBranch(PatternModule):
    def __init__(self, model: LateFusion, pattern: Pattern) -> None:
        super().__init__(pattern, model.encoders, model.task)
        self.head = model.head

    def fuse(self, inputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        fused: Tensor | None = None
        for m in self.modalities:
            cls = self.encoders[m](inputs[m])[:, 0]
            fused = cls if fused is None else fused + cls
        assert fused is not None
        return self.head(fused), fused
