"""DistilBERT text encoder: post-LN blocks like BERT, but its own module names and no token types.

Layer stack ``transformer.layer``; attention ``attention.{q,k,v,out}_lin`` in one module (the
output projection included, as in ViT), so the fusable attention form replaces ``attention``.
No pooler, no final norm (each block ends in ``output_layer_norm``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .hf import PretrainedOnly, load_backbone
from .text import TextEncoder, check_positions


class DistilBertEncoder(PretrainedOnly, TextEncoder):
    display_name = "DistilBERT"
    architecture = "distilbert"
    model_types = ("distilbert",)
    projection_paths = {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
                        "o": "attention.out_lin"}

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "text") -> "DistilBertEncoder":
        return cls(load_backbone("DistilBertModel", source, local_files_only), build_config, modality_type)

    def layers(self) -> nn.ModuleList:
        return self.backbone.transformer.layer

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        input_ids, attention_mask = self._require(inputs)
        input_ids = input_ids.to(torch.long)
        check_positions(input_ids.shape[1], self.backbone.config.max_position_embeddings, "input_ids")
        return self.backbone.embeddings(input_ids), attention_mask.to(torch.bool)
