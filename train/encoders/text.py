"""BERT text encoder (BertModel: MiniLM or a tiny scratch config), run layer by layer."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from runtime.errors import ConfigError
from .base import ATTN_IMPLEMENTATION, ModalityEncoder, checkpoint_has_pooler

# Attribute paths inside a BertLayer (shared with the frames encoder).
BERT_PROJECTIONS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
}


def bert_config(config: dict[str, Any], vocab_size: int, max_positions: int) -> Any:
    """A BertConfig from our small build config."""
    from transformers import BertConfig

    hidden = int(config["hidden_size"])
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=int(config["num_layers"]),
        num_attention_heads=int(config["num_heads"]),
        intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
        max_position_embeddings=max_positions,
        hidden_dropout_prob=float(config.get("dropout", 0.0)),
        attention_probs_dropout_prob=float(config.get("attention_dropout", 0.0)),
        pad_token_id=0,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def load_bert(source: str, local_files_only: bool) -> nn.Module:
    from transformers import BertModel

    return BertModel.from_pretrained(
        source, add_pooling_layer=checkpoint_has_pooler(source), attn_implementation=ATTN_IMPLEMENTATION,
        local_files_only=local_files_only,
    )  # the encoder classes drop the pooler


def check_positions(length: int, max_positions: int, what: str) -> None:
    # torch._check instead of `if`: an error in eager, a shape constraint under torch.export.
    # The legacy tracer hands us shapes as tensors; skip there (ORT then fails on the Add).
    if torch.jit.is_tracing():
        return
    torch._check(
        length <= max_positions,
        lambda: f"{what} has {length} positions but the encoder has {max_positions} position embeddings; "
        "truncate in runtime.preprocess or build the encoder with a larger max_positions",
    )


class TextEncoder(ModalityEncoder):
    """input_ids / attention_mask (B, T) int64 -> BERT tokens; the tokenizer already put [CLS] at 0."""

    architecture = "bert"
    model_types: tuple[str, ...] = ("bert",)
    serves = "text"
    input_names = ("input_ids", "attention_mask")
    projection_paths = BERT_PROJECTIONS

    def __init__(self, backbone: nn.Module, build_config: dict[str, Any], modality_type: str = "text") -> None:
        if modality_type != "text":
            raise ConfigError(f"TextEncoder serves modality type 'text', not {modality_type!r}")
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # we return all tokens; the NSP pooler is unused
        super().__init__(modality_type, backbone, build_config)

    @classmethod
    def from_config(cls, config: dict[str, Any], modality_type: str = "text") -> "TextEncoder":
        from transformers import BertModel

        hf = bert_config(config, int(config.get("vocab_size", 30522)), int(config.get("max_positions", 512)))
        return cls(BertModel(hf, add_pooling_layer=False), config, modality_type)

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "text") -> "TextEncoder":
        return cls(load_bert(source, local_files_only), build_config, modality_type)

    def layers(self) -> nn.ModuleList:
        return self.backbone.encoder.layer

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        input_ids, attention_mask = self._require(inputs)
        input_ids = input_ids.to(torch.long)
        check_positions(input_ids.shape[1], self.backbone.config.max_position_embeddings, "input_ids")
        tokens = self.backbone.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return tokens, attention_mask.to(torch.bool)
