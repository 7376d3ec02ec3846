"""Modality encoders with one interface: embed -> [prefix, CLS, tokens] -> transformer -> all tokens.

See ``base.ModalityEncoder`` for the contract and how attention masks are passed.
"""
from __future__ import annotations

from .base import ATTN_IMPLEMENTATION, EXTRA_WEIGHTS_FILE, META_FILE, ModalityEncoder, attention_bias
from .frames import FramesEncoder
from .image import ImageEncoder
from .loading import (
    MODALITY_TYPES,
    SIZES,
    build_encoder,
    default_encoder_config,
    hf_offline,
    load_encoder,
    minilm_dir,
)
from .model_spec import encoder_spec, spec_from_model
from .text import TextEncoder

__all__ = [
    "ATTN_IMPLEMENTATION",
    "EXTRA_WEIGHTS_FILE",
    "META_FILE",
    "MODALITY_TYPES",
    "SIZES",
    "FramesEncoder",
    "ImageEncoder",
    "ModalityEncoder",
    "TextEncoder",
    "attention_bias",
    "build_encoder",
    "default_encoder_config",
    "encoder_spec",
    "hf_offline",
    "load_encoder",
    "minilm_dir",
    "spec_from_model",
]
