"""RoBERTa and XLM-RoBERTa text encoders: BERT's layer stack and module names, other embeddings.

Differences from BERT that matter here: position ids start after ``pad_token_id`` (the
embeddings derive them from ``input_ids``, so padding never shifts a real token's position),
hence ``max_position_embeddings - pad_token_id - 1`` usable positions; one token type.
The tokenizer (``<s> ... </s>``) already puts ``<s>``, the CLS-equivalent, at index 0.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .hf import PretrainedOnly, load_backbone
from .text import TextEncoder, check_positions


class RobertaEncoder(PretrainedOnly, TextEncoder):
    display_name = "RoBERTa"
    architecture = "roberta"
    model_types: ClassVar[tuple[str, ...]] = ("roberta", "xlm-roberta")
    hf_classes: ClassVar[dict[str, str]] = {"roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "text") -> "RobertaEncoder":
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(source, local_files_only=local_files_only).model_type
        backbone = load_backbone(cls.hf_classes.get(model_type, "RobertaModel"), source, local_files_only, pooler=True)
        return cls(backbone, build_config, modality_type)

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        input_ids, attention_mask = self._require(inputs)
        input_ids = input_ids.to(torch.long)
        config = self.backbone.config
        check_positions(input_ids.shape[1], config.max_position_embeddings - int(config.pad_token_id) - 1, "input_ids")
        tokens = self.backbone.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return tokens, attention_mask.to(torch.bool)
