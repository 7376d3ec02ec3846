"""The encoder-family cases the adapter tests share: one tiny random HF checkpoint per supported family.

No download: each case builds a config with ``hidden_size`` 32 and 2 layers, saves it with
``save_pretrained`` and loads it through ``load_encoder`` as a user's directory would be.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

H, P, B = 32, 2, 3
TINY = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
EOS = 49  # the CLIP case's end-of-text id, written after the last real token
SIGLIP_LEN, SIGLIP_PAD = 16, 1  # SigLIP text: its fixed (trained) length; </s>, its pad and end-of-text id
IMAGE = dict(image_size=8, patch_size=2, num_channels=3)


@dataclass
class Case:
    model_type: str
    make: Callable[[], nn.Module]  # the stock HF model, randomly initialised
    adapter: str  # the encoder's ``architecture``
    # stock model + inputs -> what our encoder must return without a prefix
    reference: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    files: Callable[[Path], None] | None = None  # writes what the checkpoint ships besides the model


def _text(cls: str, config: str, **kw: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        return getattr(transformers, cls)(getattr(transformers, config)(vocab_size=50, **kw))
    return make


def _vision(cls: str, config: str, **kw: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        return getattr(transformers, cls)(getattr(transformers, config)(**{**TINY, **IMAGE, **kw}))
    return make


def _audio(cls: str, config: str, **kw: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        return getattr(transformers, cls)(getattr(transformers, config)(
            **TINY, conv_dim=(8, 8), conv_stride=(4, 2), conv_kernel=(8, 4), num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=2, **kw))
    return make


def frames_pooled(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[mean of the real frames, frames]: what the audio adapters return without a prefix."""
    wave, mask = inputs["values"][..., 0], inputs["mask"]
    out = model(input_values=wave, attention_mask=mask).last_hidden_state
    real = model._get_feature_vector_attention_mask(out.shape[1], mask).to(out.dtype)[..., None]
    return torch.cat([((out * real).sum(1) / real.sum(1))[:, None], out], dim=1)


def clip_text_tokens(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1)


def siglip_text_tokens(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """SiglipTextModel as its docstring runs it: fixed-length padded ids, no attention_mask."""
    out = model(input_ids=inputs["input_ids"])
    return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1)


def siglip_tokenizer(directory: Path) -> None:
    """A 50-token WordLevel tokenizer shaped like SigLIP's: "text </s>", <pad> 0 but pad_token </s> (1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["a", "photo", "of", "red", "one", "cat", "dog"]
    vocab = {"<pad>": 0, "</s>": SIGLIP_PAD, "<unk>": 2, **{w: 3 + i for i, w in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), 50)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", SIGLIP_PAD)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": SIGLIP_LEN}))


def last(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).last_hidden_state


def clip_tokens(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    torch.testing.assert_close(model.post_layernorm(out.last_hidden_state)[:, 0], out.pooler_output)
    return model.post_layernorm(out.last_hidden_state)


def siglip_tokens(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1)


CASES = [
    Case("bert", _text("BertModel", "BertConfig", **TINY), "bert", last),
    Case("roberta", _text("RobertaModel", "RobertaConfig", **TINY, pad_token_id=1, max_position_embeddings=40),
         "roberta", last),
    Case("xlm-roberta", _text("XLMRobertaModel", "XLMRobertaConfig", **TINY, pad_token_id=1,
                              max_position_embeddings=40), "roberta", last),
    Case("distilbert", _text("DistilBertModel", "DistilBertConfig", dim=H, n_layers=2, n_heads=2, hidden_dim=64),
         "distilbert", last),
    Case("clip_text_model", _text("CLIPTextModel", "CLIPTextConfig", **TINY, eos_token_id=EOS,
                                  max_position_embeddings=16), "clip-text", clip_text_tokens),
    Case("siglip_text_model", _text("SiglipTextModel", "SiglipTextConfig", **TINY, max_position_embeddings=SIGLIP_LEN),
         "siglip-text", siglip_text_tokens, files=siglip_tokenizer),
    Case("vit", _vision("ViTModel", "ViTConfig"), "vit", last),
    Case("deit", _vision("DeiTModel", "DeiTConfig"), "deit", last),
    # trained at 12 px, fed 8 px: the position grid is interpolated (bicubic) in torch and in the graph
    Case("dinov2", _vision("Dinov2Model", "Dinov2Config", layerscale_value=0.5, image_size=12), "dinov2", last),
    Case("clip_vision_model", _vision("CLIPVisionModel", "CLIPVisionConfig"), "clip-vision", clip_tokens),
    Case("siglip_vision_model", _vision("SiglipVisionModel", "SiglipVisionConfig"), "siglip-vision", siglip_tokens),
    Case("wav2vec2", _audio("Wav2Vec2Model", "Wav2Vec2Config"), "wav2vec2", frames_pooled),  # group norm, post-LN
    Case("hubert", _audio("HubertModel", "HubertConfig", feat_extract_norm="layer", do_stable_layer_norm=True),
         "wav2vec2", frames_pooled),
]
IDS = [c.model_type for c in CASES]


def is_text(case: Case) -> bool:
    return case.adapter in ("bert", "roberta", "distilbert", "clip-text", "siglip-text")


def attends_pads(case: Case) -> bool:
    """SigLIP text reads every position, pads included, so every output position is meaningful."""
    return case.adapter == "siglip-text"


def kind(case: Case) -> str:
    return "text" if is_text(case) else "audio" if case.adapter == "wav2vec2" else "image"


def make_inputs(case: Case, batch: int = B, length: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Text: row 0 ends in 2 padding positions (pad id 1 for RoBERTa, 0 otherwise); SigLIP text is
    SIGLIP_LEN long, row 0 three tokens, </s> and 12 pads (</s>); images: 8x8 RGB;
    audio: 16 * length raw samples, row 0's last 32 are padding (zeros, as the runtime pads)."""
    g = torch.Generator().manual_seed(seed)
    if length is None:
        length = SIGLIP_LEN if case.adapter == "siglip-text" else 7
    if kind(case) == "image":
        return {"pixel_values": torch.randn(batch, 3, 8, 8, generator=g)}
    if kind(case) == "audio":
        values = torch.randn(batch, 16 * length, 1, generator=g)
        mask = torch.ones(batch, 16 * length, dtype=torch.long)
        mask[0, -32:], values[0, -32:] = 0, 0.0
        return {"values": values, "mask": mask}
    pad = 1 if case.adapter == "roberta" else 0
    ids = torch.randint(3, 50, (batch, length), generator=g)
    ids[:, 0] = 2  # the tokenizer's CLS / <s>
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -2:] = 0
    ids[0, -2:] = pad
    if case.adapter == "clip-text":  # the CLIP tokenizer ends every text in EOS
        ids[ids == EOS] = 5
        ids[0, -3], ids[1:, -1] = EOS, EOS
    if case.adapter == "siglip-text":  # "w w w </s>" then pads (</s> too), as the fixed-length tokenizer gives
        mask[0, 4:], ids[0, 3:], ids[1:, -1] = 0, SIGLIP_PAD, SIGLIP_PAD
    return {"input_ids": ids, "attention_mask": mask}


def real_rows(mask: np.ndarray, width: int, prefix: int) -> np.ndarray:
    """Output positions that hold a prompt, a pooled token (when the output has one more) or a real token."""
    extra = width - prefix - mask.shape[1]
    return np.concatenate([np.ones((mask.shape[0], prefix + extra), bool), mask.astype(bool)], axis=1)


def save_case(case: Case, directory: Path) -> Path:
    """Save ``case``'s tiny random model (and its tokenizer files) to ``directory``, seeded by its place in CASES."""
    torch.manual_seed(CASES.index(case))
    model = case.make()
    with torch.no_grad():  # LayerNorm/LayerScale/bias inits are constants; make them informative
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or "lambda1" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    if case.files is not None:
        case.files(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case's checkpoint directory by model_type (import this fixture into a test module to use it)."""
    return {c.model_type: save_case(c, tmp_path_factory.mktemp(c.model_type.replace("-", "_"))) for c in CASES}


def run(enc: nn.Module, inputs: dict, prefix: torch.Tensor | None = None, readonly: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return enc(inputs, prefix=prefix, readonly_prefix=readonly)


class Prompted(nn.Module):
    """Each family's encoder with learned prompts, called positionally (as a pattern branch is).

    One graph per input kind holds every family of that kind, so the test pays the exporter's
    fixed cost twice rather than once per family; each family is still its own output.
    """

    def __init__(self, encoders: dict[str, nn.Module], readonly: dict[str, bool]) -> None:
        super().__init__()
        self.encs, self.readonly = nn.ModuleDict(encoders), readonly
        self.prompts = nn.ParameterDict({k: nn.Parameter(torch.randn(1, P, H)) for k in encoders})
        self.input_names = tuple(next(iter(encoders.values())).input_names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = dict(zip(self.input_names, args))
        return tuple(enc(inputs, prefix=self.prompts[k], readonly_prefix=self.readonly[k])
                     for k, enc in self.encs.items())


def export_onnx(module: nn.Module, example: dict[str, torch.Tensor], names: list[str], outputs: list[str],
                seq: dict[int, Any], path: Path) -> Path:
    """``module(*example[names])`` as a dynamo ONNX graph, batch axis and the ``seq`` axes dynamic."""
    from torch.export import Dim

    dims = {n: {0: Dim("batch", min=1, max=64), **seq} for n in names}
    torch.onnx.export(module, tuple(example[n] for n in names), str(path), dynamo=True, opset_version=18,
                      external_data=False, input_names=names, output_names=outputs,
                      dynamic_shapes={"args": tuple(dims[n] for n in names)})
    return path
