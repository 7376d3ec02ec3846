"""Every architecture family: a tiny random HF checkpoint -> adapter -> prefix + read-only mask + LoRA -> ONNX parity.

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

from train.encoders import load_encoder
from train.methods.base import adapt_encoders
from train.modules.lora import inject_lora

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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for i, case in enumerate(CASES):
        torch.manual_seed(i)
        model = case.make()
        with torch.no_grad():  # LayerNorm/LayerScale/bias inits are constants; make them informative
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name.lower() or "lambda1" in name:
                    p.add_(0.1 * torch.randn_like(p))
        out[case.model_type] = tmp_path_factory.mktemp(case.model_type.replace("-", "_"))
        model.save_pretrained(out[case.model_type])
        if case.files is not None:
            case.files(out[case.model_type])
    return out


def run(enc: nn.Module, inputs: dict, prefix: torch.Tensor | None = None, readonly: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return enc(inputs, prefix=prefix, readonly_prefix=readonly)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_adapter_matches_the_stock_model(case: Case, checkpoints: dict[str, Path]) -> None:
    import transformers

    enc = load_encoder(checkpoints[case.model_type])
    assert enc.architecture == case.adapter and enc.hidden_size == H and enc.num_layers == 2 and not enc.training
    assert getattr(enc.backbone, "pooler", None) is None
    stock = getattr(transformers, type(enc.backbone).__name__).from_pretrained(
        checkpoints[case.model_type], attn_implementation="eager").eval()
    inputs = make_inputs(case)
    with torch.no_grad():
        expected = case.reference(stock, inputs)
    out = run(enc, inputs)
    assert out.shape == expected.shape
    if is_text(case) and not attends_pads(case):  # padded positions are garbage in both; compare real tokens
        real = torch.from_numpy(real_rows(inputs["attention_mask"].numpy(), out.shape[1], 0))
        torch.testing.assert_close(out[real], expected[real], rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_readonly_prompts_leave_cls_bit_identical(case: Case, checkpoints: dict[str, Path]) -> None:
    """Hand-computed property: CLS (index P) sees no read-only prompt, so it equals the prompt-free CLS."""
    enc = load_encoder(checkpoints[case.model_type])
    inputs = make_inputs(case)
    plain = run(enc, inputs)
    prompts = torch.randn(B, P, H) * 3
    ro = run(enc, inputs, prompts, readonly=True)
    assert ro.shape == (B, P + plain.shape[1], H)
    torch.testing.assert_close(ro[:, P], plain[:, 0], rtol=0, atol=1e-6)
    assert (ro[:, :P] - run(enc, inputs, prompts * 2, readonly=True)[:, :P]).abs().max() > 1e-3  # prompts read
    rw = run(enc, inputs, prompts, readonly=False)  # control: a writable prefix does reach CLS
    assert (rw[:, P] - plain[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lora_and_bitfit_targets(case: Case, checkpoints: dict[str, Path]) -> None:
    enc = load_encoder(checkpoints[case.model_type])
    rows = enc.attention_projections()
    assert len(rows) == 2 and all(type(m) is nn.Linear and m.weight.shape[0] == H for r in rows for m in r.values())
    inputs = make_inputs(case)
    base = run(enc, inputs)
    added = inject_lora(enc, rank=2)
    assert len(added) == 8 and all(enc.attention_projections()[i][k] in added for i in range(2) for k in "qkvo")
    torch.testing.assert_close(run(enc, inputs), base, rtol=0, atol=0)  # B = 0: the frozen function
    with torch.no_grad():
        for m in added:
            m.lora_B.normal_()
    assert (run(enc, inputs) - base).abs().max() > 1e-3  # every forward goes through the wrapped modules
    other = load_encoder(checkpoints[case.model_type])
    adapt_encoders({"m": other}, "bitfit")
    trainable = [n for n, p in other.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("bias") for n in trainable)
    assert any(".layers." in n or ".layer." in n for n in trainable)  # inside the layer stack


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_run_rebuild_and_save_round_trip(case: Case, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """What a run records (train.runs.encoder_entry) rebuilds the same module; save_pretrained reloads it."""
    from train.runs import encoder_entry, rebuild_encoder

    enc = load_encoder(checkpoints[case.model_type])
    rebuilt = rebuild_encoder(encoder_entry(enc)).eval()
    assert type(rebuilt) is type(enc)
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    inputs, prompts = make_inputs(case), torch.randn(B, P, H)
    expected = run(enc, inputs, prompts, readonly=True)
    torch.testing.assert_close(run(rebuilt, inputs, prompts, readonly=True), expected, rtol=0, atol=0)
    enc.save_pretrained(tmp_path)
    torch.testing.assert_close(run(load_encoder(tmp_path), inputs, prompts, readonly=True), expected, rtol=0, atol=0)


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


@pytest.mark.parametrize("group", ["text", "image", "audio"])
def test_export_with_lora_and_prompts_matches_onnxruntime(group: str, checkpoints: dict[str, Path],
                                                          tmp_path: Path) -> None:
    from torch.export import Dim

    from export.fusion import export_copy
    from runtime.runners.onnxrt import create_session, session_options

    torch.manual_seed(0)
    cases = [c for c in CASES if kind(c) == group]
    text = group == "text"
    encoders = {}
    for case in cases:
        encoders[case.model_type.replace("-", "_")] = enc = load_encoder(checkpoints[case.model_type])
        for m in inject_lora(enc, rank=1):
            with torch.no_grad():
                m.lora_B.normal_(std=0.5)
    readonly = {k: k != "bert" for k in encoders}  # bert: the writable (CMPT) form; the rest read-only
    model = Prompted(encoders, readonly).eval()
    twin = export_copy(model)
    assert twin.lora_merged == 8 * len(cases) and twin.attention_layers == 2 * len(cases)
    example = make_inputs(cases[0], batch=2, length=6)
    names = list(model.input_names)
    seq = {"text": {1: Dim("seq", min=2, max=16)}, "audio": {1: Dim("samples", min=32, max=4096)}}.get(group, {})
    path = export_onnx(twin.module, example, names, list(encoders), seq, tmp_path / "enc.onnx")
    session = create_session(path, session_options(threads=1))
    every_pad_read = {c.model_type.replace("-", "_") for c in cases if attends_pads(c)}
    for batch, length in [(1, 4), (5, 9)] + ([(2, SIGLIP_LEN)] if text else []):
        inputs = make_inputs(cases[0], batch=batch, length=length, seed=batch)
        with torch.no_grad():
            expected = [e.numpy() for e in model(*(inputs[n] for n in names))]  # unmerged, stock attention
        got = session.run(None, {n: inputs[n].numpy() for n in names})
        for name, g, e in zip(encoders, got, expected):
            assert g.shape == e.shape, name
            if text and name not in every_pad_read:  # padded positions are never read; compare the rest
                real = real_rows(inputs["attention_mask"].numpy(), g.shape[1], P)
                g, e = g[real], e[real]
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-4, err_msg=name)


def test_unsupported_model_type_lists_the_supported_ones(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_embd=H, n_layer=1, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="gpt2.*not supported.*bert.*dinov2.*siglip"):
        load_encoder(tmp_path)


SIGLIP = next(c for c in CASES if c.adapter == "siglip-text")


def test_siglip_text_attends_pads_and_pools_the_last_position(checkpoints: dict[str, Path]) -> None:
    """The pads change SigLIP's pooled output (masking them is another function); ours ignores the mask."""
    from transformers import SiglipTextModel

    path = checkpoints[SIGLIP.model_type]
    enc, stock = load_encoder(path), SiglipTextModel.from_pretrained(path, attn_implementation="eager").eval()
    inputs = make_inputs(SIGLIP)
    ours = run(enc, inputs)
    with torch.no_grad():
        torch.testing.assert_close(ours[:, 0], stock(input_ids=inputs["input_ids"]).pooler_output, rtol=0, atol=1e-5)
        masked = stock(**inputs).pooler_output  # row 0 with its 12 pads masked out
    assert (masked[0] - ours[0, 0]).abs().max() > 1e-3
    torch.testing.assert_close(ours[:, 0], enc.backbone.head(ours[:, -1]), rtol=0, atol=1e-6)  # head(last)
    assert (ours[:, 0] - ours[:, -1]).abs().max() > 1e-3  # the head is applied, not the bare last token
    torch.testing.assert_close(run(enc, {**inputs, "attention_mask": torch.ones_like(inputs["attention_mask"])}),
                               ours, rtol=0, atol=0)


def test_siglip_text_spec_pads_to_the_fixed_length_with_its_pad_id(checkpoints: dict[str, Path]) -> None:
    """By hand: "red one" is red(6) one(7) </s>(1), then 13 pads of </s> (1), not <pad> (0), to 16 ids."""
    from runtime.preprocess import make_preprocessor
    from train.encoders import spec_from_model

    path = checkpoints[SIGLIP.model_type]
    enc = load_encoder(path)
    spec = spec_from_model({"type": "text"}, "text", path, enc, ["red one", "a photo of a cat"])
    assert (spec["pad"], spec["max_length"], spec["pad_id"]) == ("max_length", SIGLIP_LEN, SIGLIP_PAD)
    assert spec["tokenizer_file"] == str((path / "tokenizer.json").resolve())
    batch = make_preprocessor(spec)(["red one", "a photo of a cat"])
    assert batch["input_ids"].tolist() == [[6, 7, 1] + [1] * 13, [3, 4, 5, 3, 8, 1] + [1] * 10]
    assert batch["attention_mask"].tolist() == [[1] * 3 + [0] * 13, [1] * 6 + [0] * 10]
    assert make_preprocessor(spec)(["red one"])["input_ids"].shape == (1, SIGLIP_LEN)  # one text: fixed too
    without = make_preprocessor({k: v for k, v in spec.items() if k != "pad_id"})(["red one"])
    assert without["input_ids"][0, 3:].tolist() == [0] * 13  # the tokenizer's <pad>: not what SigLIP read
    with pytest.raises(ValueError, match="pad_id"):
        make_preprocessor({**spec, "pad_id": 50})


def test_siglip_full_checkpoint_serves_both_towers(tmp_path: Path) -> None:
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    full = SiglipModel(SiglipConfig(text_config={**TINY, "vocab_size": 50, "max_position_embeddings": SIGLIP_LEN},
                                    vision_config={**TINY, **IMAGE})).eval()
    full.save_pretrained(tmp_path)
    text, image = load_encoder(tmp_path, "text"), load_encoder(tmp_path, "image")
    assert (text.architecture, image.architecture) == ("siglip-text", "siglip-vision")
    inputs = make_inputs(SIGLIP)
    with torch.no_grad():
        expected = full.text_model(input_ids=inputs["input_ids"]).pooler_output
    torch.testing.assert_close(run(text, inputs)[:, 0], expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="say which modality"):
        load_encoder(tmp_path)
