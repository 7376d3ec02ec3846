"""CLIP text tower (CLIPTextModel): causal pre-LN layers, ``final_layer_norm``, EOS pooling.

Mask: input tokens attend causally (token i reads tokens <= i) and never to padding; a
prefix's own queries read every real token (causal rows would let a prefix at the start read
nothing), and input queries see the prefix unless it is read-only.

The token read at index P is CLIP's pooled output: the final-norm output at the last real
token, which the CLIP tokenizer makes the EOS (``<|endoftext|>``; truncation keeps it). That is
where ``CLIPTextModel`` pools whenever EOS is the last real token, i.e. for every input our
text preprocessing makes. Being causal, it reads the whole text and, read-only, no prompt.
Returned: ``[prefix, pooled, tokens]`` (before the text projection, which lives in CLIPModel).

SigLIP's text tower looks alike but is neither causal nor padding-masked, and pools at the last
*padded* position of a fixed-length input: it has its own adapter (``siglip_text``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .clip_vision import CLIP_PROJECTIONS
from .hf import PretrainedOnly, load_backbone
from .text import TextEncoder, check_positions


class ClipTextLayout:
    """Where a CLIP-style text tower keeps its parts (CLIPTextModel and SiglipTextModel alike): token +
    absolute position embeddings, ``encoder.layers``, ``final_layer_norm``. A mixin before TextEncoder."""

    backbone: nn.Module

    def layers(self) -> nn.ModuleList:
        return self.backbone.encoder.layers

    def final_norm(self) -> nn.Module | None:
        return self.backbone.final_layer_norm

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        input_ids, attention_mask = self._require(inputs)  # type: ignore[attr-defined]
        input_ids = input_ids.to(torch.long)
        check_positions(input_ids.shape[1], self.backbone.config.max_position_embeddings, "input_ids")
        return self.backbone.embeddings(input_ids=input_ids), attention_mask.to(torch.bool)


class ClipTextEncoder(ClipTextLayout, PretrainedOnly, TextEncoder):
    display_name = "CLIP text"
    architecture = "clip-text"
    model_types = ("clip_text_model", "clip")
    projection_paths = CLIP_PROJECTIONS

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "text") -> "ClipTextEncoder":
        return cls(load_backbone("CLIPTextModel", source, local_files_only), build_config, modality_type)

    def attention_mask(self, keep: Tensor, num_prefix: int, readonly_prefix: bool, dtype: torch.dtype) -> Tensor:
        pos = torch.arange(keep.shape[1], device=keep.device)
        is_prefix = pos < num_prefix
        visible = pos[None, :] <= pos[:, None]  # (Q, K) causal; a prefix precedes every input token
        if readonly_prefix:
            visible = visible & ~is_prefix[None, :]
        visible = visible | is_prefix[:, None]  # prefix queries read everything
        allowed = keep[:, None, None, :] & visible[None, None, :, :]
        return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)

    def readout(self, hidden: Tensor, keep: Tensor, num_prefix: int) -> Tensor:
        tokens = hidden[:, num_prefix:]
        last = keep[:, num_prefix:].to(torch.long).sum(dim=1).clamp(min=1) - 1  # the EOS position
        pooled = torch.gather(tokens, 1, last[:, None, None].expand(-1, 1, tokens.shape[-1]))
        return torch.cat([hidden[:, :num_prefix], pooled, tokens], dim=1)
