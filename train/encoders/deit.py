"""DeiT image encoder: ViT's layers and module names, plus a distillation token after CLS.

Sequence ``[CLS, DIST, patches]``: CLS stays at index 0 (what the methods read); the
distillation token is one more input token. Final norm ``layernorm``; the pooler is dropped.
"""
from __future__ import annotations

from typing import Any

from .hf import PretrainedOnly, load_backbone
from .image import ImageEncoder


class DeitEncoder(PretrainedOnly, ImageEncoder):
    display_name = "DeiT"
    architecture = "deit"
    model_types = ("deit",)

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "image") -> "DeitEncoder":
        return cls(load_backbone("DeiTModel", source, local_files_only, pooler=True), build_config, modality_type)
