"""Audio and time-series encoder: a BERT over linearly projected frames.

values (B, T, F) -> Linear(F -> H) -> prepend a learned CLS -> BertEmbeddings via
``inputs_embeds`` (adds position + token-type embeddings and LayerNorm) -> BERT layers.
The projection and CLS live outside the HF model and are saved as extra safetensors.
The backbone may be scratch (tiny/small config) or a pretrained BERT such as MiniLM.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from runtime.errors import ConfigError
from .base import ModalityEncoder
from .text import BERT_PROJECTIONS, bert_config, check_positions, load_bert

FRAME_TYPES = ("audio", "timeseries")


class FramesEncoder(ModalityEncoder):
    architecture = "bert-frames"
    input_names = ("values", "mask")
    projection_paths = BERT_PROJECTIONS

    def __init__(self, backbone: nn.Module, build_config: dict[str, Any], modality_type: str) -> None:
        if modality_type not in FRAME_TYPES:
            raise ConfigError(f"FramesEncoder serves {FRAME_TYPES}, not {modality_type!r}")
        if "n_features" not in build_config:
            raise KeyError(f"a {modality_type} encoder needs 'n_features' in its config, got {sorted(build_config)}")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None
        super().__init__(modality_type, backbone, build_config)
        self.n_features = int(build_config["n_features"])
        std = float(getattr(backbone.config, "initializer_range", 0.02))
        self.frame_proj = nn.Linear(self.n_features, self.hidden_size)
        nn.init.normal_(self.frame_proj.weight, std=std)
        nn.init.zeros_(self.frame_proj.bias)
        self.cls_token = nn.Parameter(torch.randn(1, 1, self.hidden_size) * std)

    @classmethod
    def from_config(cls, config: dict[str, Any], modality_type: str) -> "FramesEncoder":
        from transformers import BertModel

        # +1 position for CLS. vocab_size 1: word embeddings are never used (inputs_embeds).
        hf = bert_config(config, vocab_size=1, max_positions=int(config.get("max_positions", 513)))
        return cls(BertModel(hf, add_pooling_layer=False), config, modality_type)

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "audio") -> "FramesEncoder":
        return cls(load_bert(source, local_files_only), build_config, modality_type)

    def layers(self) -> nn.ModuleList:
        return self.backbone.encoder.layer

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        values, mask = self._require(inputs)
        if values.dim() != 3 or values.shape[-1] != self.n_features:
            raise ValueError(
                f"{self.modality_type} values must be (B, T, {self.n_features}), got {tuple(values.shape)}"
            )
        check_positions(values.shape[1] + 1, self.backbone.config.max_position_embeddings, "values (+CLS)")
        real = mask.to(torch.bool)
        # Zero padded frames so garbage there (even NaN) cannot leak through 0 * NaN in attention.
        values = torch.where(real[..., None], values.to(self.frame_proj.weight.dtype), 0.0)
        frames = self.frame_proj(values)
        cls = self.cls_token.to(frames.dtype).expand(frames.shape[0], -1, -1)
        tokens = self.backbone.embeddings(inputs_embeds=torch.cat([cls, frames], dim=1))
        keep = torch.cat([torch.ones_like(real[:, :1]), real], dim=1)
        return tokens, keep
