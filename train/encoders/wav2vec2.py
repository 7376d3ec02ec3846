"""Wav2Vec2 and HuBERT audio encoders over the raw waveform (Wav2Vec2Model / HubertModel).

Input: the runtime's audio ``values`` (B, N, 1) and ``mask`` (B, N), i.e. an audio spec
``{"input": "features", "n_features": 1}`` whose "frames" are the samples at the checkpoint's
``sampling_rate`` (a user stores each clip as an (N, 1) .npy; the runtime has no raw-waveform
input, and its waveform input computes MFCCs, which these models cannot read). The spec's
fitted mean/std normalise the samples globally, where the HF feature extractor normalises
each clip (``do_normalize``); both give roughly zero-mean, unit-variance input.

embed: conv feature encoder -> feature projection -> padded frames zeroed -> + convolutional
position embedding -> (post-LN variants) encoder ``layer_norm``; frame mask from the conv
output lengths, as ``Wav2Vec2Model`` computes it. Layers ``encoder.layers``, attention
``attention.{q,k,v,out}_proj``; stable-layer-norm variants (large models) apply the encoder
``layer_norm`` after the last layer. SpecAugment masking and LayerDrop are not applied.
Padding samples pass through the conv stack as in HF (checkpoints whose feature encoder uses
group norm, e.g. wav2vec2-base, see the padding in every frame; "layer" ones only at the edge).

No CLS token: the token read at index P is the mean of the real frames' outputs
(``Wav2Vec2ForSequenceClassification``'s pooling), inserted by ``readout``; it never reads a
read-only prefix because no frame can. Returned: ``[prefix, pooled, frames]``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from runtime.errors import ConfigError
from runtime.modality_spec import spec_of
from .base import ModalityEncoder
from .hf import PretrainedOnly, load_backbone


class Wav2Vec2Encoder(PretrainedOnly, ModalityEncoder):
    display_name = "Wav2Vec2/HuBERT"
    architecture = "wav2vec2"
    model_types = ("wav2vec2", "hubert")
    serves = "audio"
    input_names = ("values", "mask")
    projection_paths = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                        "o": "attention.out_proj"}
    hf_classes: ClassVar[dict[str, str]] = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel"}

    def __init__(self, backbone: nn.Module, build_config: dict[str, Any], modality_type: str = "audio") -> None:
        if modality_type != "audio":
            raise ValueError(f"{type(self).__name__} serves modality type 'audio', not {modality_type!r}")
        if getattr(backbone, "masked_spec_embed", None) is not None:
            backbone.masked_spec_embed = None  # SpecAugment's mask vector: never used here
        super().__init__(modality_type, backbone, build_config)
        self.stable_layer_norm = bool(getattr(backbone.config, "do_stable_layer_norm", False))

    @classmethod
    def from_pretrained(cls, source: str, build_config: dict[str, Any], local_files_only: bool,
                        modality_type: str = "audio") -> "Wav2Vec2Encoder":
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(source, local_files_only=local_files_only).model_type
        return cls(load_backbone(cls.hf_classes[model_type], source, local_files_only), build_config, modality_type)

    def layers(self) -> nn.ModuleList:
        return self.backbone.encoder.layers

    def final_norm(self) -> nn.Module | None:
        return self.backbone.encoder.layer_norm if self.stable_layer_norm else None

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        values, mask = self._require(inputs)
        if values.dim() != 3 or values.shape[-1] != 1:
            raise ValueError(f"{self.architecture} reads the raw waveform as values (B, N, 1); got "
                             f"{tuple(values.shape)} (an audio spec with input 'features' and n_features 1)")
        real = mask.to(torch.bool)
        weight = self.backbone.feature_extractor.conv_layers[0].conv.weight
        wave = torch.where(real, values[..., 0].to(weight.dtype), 0.0)
        features = self.backbone.feature_extractor(wave).transpose(1, 2)  # (B, T', C)
        projected = self.backbone.feature_projection(features)
        hidden = projected[0] if isinstance(projected, tuple) else projected
        lengths = self.backbone._get_feat_extract_output_lengths(real.sum(dim=1))
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        hidden = torch.where(keep[..., None], hidden, 0.0)
        encoder = self.backbone.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        return encoder.dropout(hidden), keep

    def readout(self, hidden: Tensor, keep: Tensor, num_prefix: int) -> Tensor:
        frames, real = hidden[:, num_prefix:], keep[:, num_prefix:].to(hidden.dtype)[..., None]
        pooled = (frames * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)
        return torch.cat([hidden[:, :num_prefix], pooled[:, None], frames], dim=1)

    def spec_from_model(self, spec: dict[str, Any], source: Any) -> dict[str, Any]:
        """The raw-sample audio spec this encoder reads; a spec of MFCCs or wider features is refused."""
        audio = spec_of(spec)
        if audio.waveform or audio.feature_width != 1:
            rate = getattr(self.backbone.config, "sampling_rate", 16000)
            raise ConfigError(
                f"{source} ({self.architecture}) reads the raw waveform, but this audio modality's spec is "
                f"{ {k: spec[k] for k in ('input', 'n_features', 'mfcc') if k in spec} }; store each clip as an (N, 1) "
                f".npy of samples at {rate} Hz and declare the modality as "
                '{"type": "audio", "input": "features", "n_features": 1}')
        return dict(spec)
