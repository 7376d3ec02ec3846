"""Wav2Vec2 and HuBERT audio encoders over the raw waveform (Wav2Vec2Model / HubertModel).

Input: the runtime's audio ``values`` (B, N, 1) and ``mask`` (B, N) of the raw-samples spec
``{"type": "audio", "input": "samples", "sample_rate": SR, "normalize": "per-clip" | "none"}``
(runtime.preprocess), which ``spec_from_model`` writes from the checkpoint's
``preprocessor_config.json`` (``sampling_rate``, ``do_normalize``): the HF feature extractor's
per-clip normalisation, so a user's .wav files go in as they are. Runs saved with the older
``{"input": "features", "n_features": 1}`` spec (samples as (N, 1) frames, fitted global mean/std)
feed the same (B, N, 1) values and still load.

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

from .base import ModalityEncoder
from .hf import PretrainedOnly, load_backbone
from .model_spec import samples_spec_from_model


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
                             f"{tuple(values.shape)} (an audio spec with input 'samples')")
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

    def spec_from_model(self, spec: dict[str, Any], source: Any, train_raws: list[Any] | None = None) -> dict[str, Any]:
        """The raw-samples audio spec this encoder reads (train.encoders.model_spec.samples_spec_from_model):
        MFCC specs at the checkpoint's rate and (N, 1) features become it; other rates or wider features are refused."""
        return samples_spec_from_model(spec, source, self.architecture, train_raws or ())
