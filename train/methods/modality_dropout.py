"""The CMPT paper's second ablation baseline (Sec. 4.6.1, A5): modality dropout without CMPTs.

Same model as ``late-fusion`` (frozen encoders + rank-1 LoRA, additive fusion of CLS,
one linear head), trained with the same random modality dropout CMPT uses: each
sample with several modalities keeps a uniformly random non-empty subset of them
(two modalities: both / only the first / only the second, 1/3 each).
"""
from __future__ import annotations

from dataclasses import dataclass

from train.methods.registry import register
from train.methods.late_fusion import LateFusion, LateFusionConfig


@dataclass
class ModalityDropoutConfig(LateFusionConfig):
    modality_dropout: bool = True


@register("modality-dropout")
class ModalityDropout(LateFusion):
    config_class = ModalityDropoutConfig
