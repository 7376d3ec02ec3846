"""ViT image encoder (transformers ViTModel, run layer by layer)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from runtime.errors import ConfigError
from .base import ATTN_IMPLEMENTATION, ModalityEncoder, checkpoint_has_pooler


def vit_config(config: dict[str, Any]) -> Any:
    """A ViTConfig from our small build config (see ``default_encoder_config``)."""
    from transformers import ViTConfig

    size = config["image_size"]
    size = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
    patch = int(config["patch_size"])
    if size[0] % patch or size[1] % patch:
        # ViT's strided conv would silently drop the border pixels.
        raise ConfigError(f"image_size {size} is not divisible by patch_size {patch}")
    hidden = int(config["hidden_size"])
    return ViTConfig(
        image_size=size if size[0] != size[1] else size[0],
        patch_size=patch,
        num_channels=int(config.get("channels", 3)),
        hidden_size=hidden,
        num_hidden_layers=int(config["num_layers"]),
        num_attention_heads=int(config["num_heads"]),
        intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
        hidden_dropout_prob=float(config.get("dropout", 0.0)),
        attention_probs_dropout_prob=float(config.get("attention_dropout", 0.0)),
        attn_implementation=ATTN_IMPLEMENTATION,
    )


class ImageEncoder(ModalityEncoder):
    """pixel_values (B, C, H, W) -> [CLS, patches] tokens; no padding, so keep is all True.

    transformers 5 names: ``ViTModel.layers`` (not ``encoder.layer``) and
    ``attention.{q,k,v,o}_proj`` (not ``attention.attention.query`` / ``output.dense``).
    """

    architecture = "vit"
    model_types: tuple[str, ...] = ("vit",)
    serves = "image"
    input_names = ("pixel_values",)
    projection_paths = {
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "o": "attention.o_proj",
    }

    def __init__(self, backbone: nn.Module, build_config: dict[str, Any], modality_type: str = "image") -> None:
        if modality_type != "image":
            raise ConfigError(f"ImageEncoder serves modality type 'image', not {modality_type!r}")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused, and it would be a dangling trainable head
        super().__init__(modality_type, backbone, build_config)

    @classmethod
    def from_config(cls, config: dict[str, Any], modality_type: str = "image") -> "ImageEncoder":
        from transformers import ViTModel

        return cls(ViTModel(vit_config(config), add_pooling_layer=False), config, modality_type)

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "image") -> "ImageEncoder":
        from transformers import ViTModel

        backbone = ViTModel.from_pretrained(
            source, add_pooling_layer=checkpoint_has_pooler(source), attn_implementation=ATTN_IMPLEMENTATION,
            local_files_only=local_files_only,
        )
        return cls(backbone, build_config, modality_type)

    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    def final_norm(self) -> nn.Module | None:
        return self.backbone.layernorm

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        (pixels,) = self._require(inputs)
        if pixels.dim() != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixels.shape)}")
        weight = self.backbone.embeddings.patch_embeddings.projection.weight
        tokens = self.backbone.embeddings(pixels.to(weight.dtype))  # CLS + patches + positions
        keep = torch.ones_like(tokens[:, :, 0], dtype=torch.bool)
        return tokens, keep
