"""CLIP and SigLIP vision towers (CLIPVisionModel / SiglipVisionModel): pre-LN layers, post_layernorm.

Both: layer stack ``encoder.layers``, attention ``self_attn.{q,k,v,out}_proj`` (the output
projection in the same module, so the fusable form replaces ``self_attn``); ``post_layernorm``
is applied to every returned token (CLIP applies it to the pooled CLS only, so CLIP's CLS output
here equals ``CLIPVisionModel``'s ``pooler_output``, before the visual projection).

CLIP: the class embedding is token 0; ``pre_layrnorm`` is part of ``embed``.

SigLIP has no CLS token. The token the methods read at index P (after any prefix) is SigLIP's
own pooled output: its attention-pooling head (``vision_use_head``, the default) over the
patch tokens, or, for a checkpoint without that head, the mean of the patch tokens. It is
computed from the patch tokens only, so with a read-only prefix it still sees no prompt
(the patches cannot see one), and without a prefix it equals ``SiglipVisionModel``'s
``pooler_output``. Returned sequence: ``[prefix, pooled, patches]``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .hf import PretrainedOnly, load_backbone
from .image import ImageEncoder

CLIP_PROJECTIONS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                    "o": "self_attn.out_proj"}


class ClipVisionEncoder(PretrainedOnly, ImageEncoder):
    architecture = "clip-vision"
    model_types = ("clip_vision_model", "clip")
    projection_paths = CLIP_PROJECTIONS
    hf_class = "CLIPVisionModel"

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "image") -> "ClipVisionEncoder":
        return cls(load_backbone(cls.hf_class, source, local_files_only), build_config, modality_type)

    def layers(self) -> nn.ModuleList:
        return self.backbone.encoder.layers

    def final_norm(self) -> nn.Module | None:
        return self.backbone.post_layernorm

    def _pixels(self, inputs: dict[str, Tensor]) -> Tensor:
        (pixels,) = self._require(inputs)
        if pixels.dim() != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixels.shape)}")
        return pixels.to(self.backbone.embeddings.patch_embedding.weight.dtype)

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens = self.backbone.pre_layrnorm(self.backbone.embeddings(self._pixels(inputs)))
        return tokens, torch.ones_like(tokens[:, :, 0], dtype=torch.bool)


class SiglipVisionEncoder(ClipVisionEncoder):
    architecture = "siglip-vision"
    model_types = ("siglip_vision_model", "siglip")
    hf_class = "SiglipVisionModel"

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens = self.backbone.embeddings(self._pixels(inputs))  # patches + positions, no CLS
        return tokens, torch.ones_like(tokens[:, :, 0], dtype=torch.bool)

    def readout(self, hidden: Tensor, keep: Tensor, num_prefix: int) -> Tensor:
        patches = hidden[:, num_prefix:]
        head = getattr(self.backbone, "head", None)
        pooled = head(patches) if head is not None else patches.mean(dim=1)
        return torch.cat([hidden[:, :num_prefix], pooled[:, None], patches], dim=1)
