"""DINOv2 image encoder: pre-LN blocks with LayerScale, its own embeddings, ``encoder.layer``.

LayerScale (``layer_scale1/2``) and stochastic depth live inside each ``Dinov2Layer``, which we
call as is, so they behave exactly as in ``Dinov2Model``. The embeddings interpolate the
pretrained position grid (bicubic, in float32) when the image size differs from the one the
checkpoint was trained at, e.g. a 518-px checkpoint fed 224-px crops: the graph then holds that
resize of a constant. Final norm ``layernorm``; there is no pooler (CLS is token 0). LoRA and
BitFit target ``attention.{q,k,v,o}_proj``, as in ViT.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .hf import PretrainedOnly, load_backbone
from .image import ImageEncoder


class Dinov2Encoder(PretrainedOnly, ImageEncoder):
    display_name = "DINOv2"
    architecture = "dinov2"
    model_types = ("dinov2",)

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "image") -> "Dinov2Encoder":
        return cls(load_backbone("Dinov2Model", source, local_files_only), build_config, modality_type)

    def layers(self) -> nn.ModuleList:
        return self.backbone.encoder.layer
