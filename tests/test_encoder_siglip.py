"""SigLIP text: every position attended (pads included), pooled = head(last position), fixed-length padding
with the checkpoint's own pad id, and a full SigLIP checkpoint serving both towers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encoder_cases import CASES, IMAGE, SIGLIP_LEN, SIGLIP_PAD, TINY, make_inputs, run, save_case
from train.encoders import load_encoder

SIGLIP = next(c for c in CASES if c.adapter == "siglip-text")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {SIGLIP.model_type: save_case(SIGLIP, tmp_path_factory.mktemp("siglip_text"))}


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
