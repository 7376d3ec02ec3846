"""SigLIP text tower (SiglipTextModel): pre-LN layers, ``final_layer_norm``, pooling at the last position.

What SigLIP's text tower is: it was trained on text padded to one fixed length (the checkpoint's
positions, 64 for the public ones) with NO attention mask, every pad attended like a word, and
it pools ``head(final_layer_norm(h)[:, -1])``: the last *padded* position, whatever the text's
length. ``SiglipTextModel`` does the same when fed as its docstring says
(``padding="max_length"``, no ``attention_mask``).

What this adapter reproduces, and how:
- Preprocessing: ``text_spec`` rewrites the text spec to pad to that fixed length
  (``"pad": "max_length"``, ``max_length`` = the tokenizer's ``model_max_length`` when it is at
  most the model's positions, else the positions) with SigLIP's own pad id (the tokenizer's
  ``pad_token``, ``</s>`` for the public checkpoints, from ``tokenizer_config.json``; else the
  model config's ``pad_token_id``). The runtime's default pad id (a ``<pad>`` token) would be
  a different token than the one SigLIP was trained on, hence the explicit ``pad_id``.
- Attention: every input position is attended, pads included; the padding mask is ignored on
  purpose, since masking the pads would compute a function SigLIP was never trained as (and
  move the pooled position's input). Prompts: a read-only prefix is hidden from every query
  (input queries never see it); prefix queries read every input token. A writable prefix is
  seen by everyone.
- The token at index P is the pooled output, after ``head`` (as ``SiglipVisionEncoder``
  inserts its pooling head's output): the last input position reads the whole text and,
  read-only, no prompt, so it then equals ``SiglipTextModel``'s ``pooler_output``.
  Returned: ``[prefix, pooled, tokens]``.

Where it differs: nothing in the maths for a fixed-length input. An input of another length
is accepted (the export keeps the text axis dynamic) and pools at its own last position, as
``SiglipTextModel`` would; only the fixed-length spec gives the trained function. A trainable
``head`` is part of the encoder (it produces the pooled token), so BitFit trains its bias.
SigLIP's tokenizer in transformers is SentencePiece-only: the checkpoint needs a
``tokenizer.json`` (a fast conversion) beside it, as every text family does.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from runtime.errors import ConfigError

from .clip_text import ClipTextLayout
from .clip_vision import CLIP_PROJECTIONS
from .hf import PretrainedOnly, load_backbone
from .text import TextEncoder

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def token_id(tokenizer_file: str, token: Any) -> int | None:
    """The id of ``token`` (a str or an AddedToken dict with "content") in a tokenizer.json."""
    from tokenizers import Tokenizer

    content = token.get("content") if isinstance(token, dict) else token
    return Tokenizer.from_file(tokenizer_file).token_to_id(content) if isinstance(content, str) else None


class SiglipTextEncoder(ClipTextLayout, PretrainedOnly, TextEncoder):
    display_name = "SigLIP text"
    architecture = "siglip-text"
    model_types = ("siglip_text_model", "siglip")
    projection_paths = CLIP_PROJECTIONS
    hf_class = "SiglipTextModel"  # AutoModel maps no SiglipTextConfig; train.runs rebuilds through this

    def __init__(self, backbone: nn.Module, build_config: dict[str, Any], modality_type: str = "text") -> None:
        width = int(backbone.head.out_features)
        if width != int(backbone.config.hidden_size):
            raise ConfigError(f"SigLIP text projection_size {width} != hidden_size {backbone.config.hidden_size}: "
                              "its pooled token could not sit in the token sequence; use a checkpoint whose head "
                              "keeps the width")
        super().__init__(backbone, build_config, modality_type)

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "text") -> "SiglipTextEncoder":
        return cls(load_backbone(cls.hf_class, source, local_files_only), build_config, modality_type)

    def attention_mask(self, keep: Tensor, num_prefix: int, readonly_prefix: bool, dtype: torch.dtype) -> Tensor:
        # Every position is a key, pads included (see the module docstring); only prompts are masked.
        return super().attention_mask(torch.ones_like(keep), num_prefix, readonly_prefix, dtype)

    def readout(self, hidden: Tensor, keep: Tensor, num_prefix: int) -> Tensor:
        tokens = hidden[:, num_prefix:]
        pooled = self.backbone.head(tokens[:, -1])
        return torch.cat([hidden[:, :num_prefix], pooled[:, None], tokens], dim=1)

    # ---- preprocessing --------------------------------------------------------
    def text_spec(self, spec: dict[str, Any], source: str) -> dict[str, Any]:
        """``spec`` (tokenizer already the model's) padded to SigLIP's fixed length with its pad id."""
        from .model_spec import model_file

        config = self.backbone.config
        positions = int(config.max_position_embeddings)
        tok_config: dict[str, Any] = {}
        path = model_file(source, TOKENIZER_CONFIG_FILE)
        if path is not None:
            tok_config = json.loads(path.read_text())
        length = tok_config.get("model_max_length")
        length = int(length) if isinstance(length, int) and 1 <= length <= positions else positions
        pad_id = None
        if tok_config.get("pad_token") is not None:
            pad_id = token_id(spec["tokenizer_file"], tok_config["pad_token"])
            if pad_id is None:
                raise ConfigError(f"{path}: pad_token {tok_config['pad_token']!r} is not in {spec['tokenizer_file']}; "
                                  "save the tokenizer.json and tokenizer_config.json of the same tokenizer")
        if pad_id is None:
            pad_id = getattr(config, "pad_token_id", None)
        if pad_id is None:
            raise ConfigError(f"{source}: no pad token in {TOKENIZER_CONFIG_FILE} and no pad_token_id in the config; "
                              "SigLIP text must be padded with the token it was trained on (</s> for Google's "
                              "checkpoints): set pad_token in tokenizer_config.json")
        return {**spec, "max_length": length, "pad": "max_length", "pad_id": int(pad_id)}
