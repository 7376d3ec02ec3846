"""Every architecture family: a tiny random HF checkpoint -> adapter -> prefix + read-only mask + LoRA -> ONNX parity.

The cases (one per family) and their checkpoints are in tests/encoder_cases.py; SigLIP text's own
mechanisms (fixed length, attended pads, last-position pooling) are in tests/test_encoder_siglip.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from encoder_cases import (B, CASES, H, IDS, P, SIGLIP_LEN, Case, Prompted, attends_pads,  # noqa: F401 (fixture)
                           checkpoints, export_onnx, is_text, kind, make_inputs, real_rows, run)
from train.encoders import load_encoder
from train.methods.base import adapt_encoders
from train.modules.lora import inject_lora


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
