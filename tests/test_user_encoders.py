"""`--encoder MODALITY=DIR`: a user's HF checkpoints train a method directly, with the preprocessing they ship."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_multimodal import NUM_CLASSES, WORDS, specs
from train.data.types import MultimodalDataset, Sample
from train.runs import load_run

H = 32
TINY = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def tiny_tokenizer(path: Path) -> None:
    """A RoBERTa-style WordLevel tokenizer: <s> text </s>, pad id 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: 4 + i for i, w in enumerate(["the", "one", *WORDS])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import CLIPVisionConfig, CLIPVisionModel, RobertaConfig, RobertaModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**TINY, image_size=8, patch_size=4, num_channels=3)).save_pretrained(root / "clip")
    (root / "clip" / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": 12}, "do_center_crop": True, "crop_size": {"height": 8, "width": 8},
        "do_rescale": True, "rescale_factor": 0.5, "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "image_processor_type": "CLIPImageProcessor"}))
    RobertaModel(RobertaConfig(vocab_size=20, pad_token_id=1, max_position_embeddings=12, **TINY)).save_pretrained(
        root / "roberta")
    tiny_tokenizer(root / "roberta" / "tokenizer.json")
    return {"image": root / "clip", "text": root / "roberta"}


def image_text_dataset() -> MultimodalDataset:
    rng = np.random.default_rng(0)
    mods = {k: v for k, v in specs(3).items() if k != "audio"}

    def sample(i: int) -> Sample:
        label = i % NUM_CLASSES
        img = rng.normal(0, 0.3, (8, 8)).astype(np.float32)
        img[:, 2 * label: 2 * label + 2] += 1.0
        return Sample(f"s{i}", {"image": img, "text": f"the {WORDS[label]} one" if i % 2 else WORDS[label]}, label)

    splits = {"train": [sample(i) for i in range(18)], "val": [sample(i) for i in range(100, 106)],
              "test": [sample(i) for i in range(200, 206)]}
    return MultimodalDataset(name="tiny-it", task="single-label", labels=[f"c{k}" for k in range(NUM_CLASSES)],
                             modalities=mods, splits=splits)


def test_train_run_with_user_encoders_only(tmp_path: Path, checkpoints: dict[str, Path],
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train.data.registry as registry
    from train.cli import main
    from train.engine.batches import Collate

    data = image_text_dataset()
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: data)
    code = main(["run", "--method", "cmpt", "--dataset", "tiny-it", "--epochs", "1", "--warmup-epochs", "0",
                 "--batch-size", "6", "--min-steps", "0", "--out", str(tmp_path / "run"),
                 "--unimodal-dir", str(tmp_path / "none"),  # never read: both modalities come from --encoder
                 "--encoder", f"image={checkpoints['image']}", "--encoder", f"text={checkpoints['text']}"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {m: e["architecture"] for m, e in config["encoders"].items()} == {"image": "clip-vision", "text": "roberta"}
    image = config["dataset"]["modalities"]["image"]["preprocess"]
    # from preprocessor_config.json: the centre crop's size, its rescale factor and statistics; RGB for the model
    assert (image["size"], image["scale"], image["channels"]) == ([8, 8], 0.5, 3)
    assert image["mean"] == CLIP_MEAN and image["std"] == CLIP_STD
    text = config["dataset"]["modalities"]["text"]["preprocess"]
    assert Path(text["tokenizer_file"]) == (checkpoints["text"] / "tokenizer.json").resolve()
    assert text["max_length"] == 5  # "<s> the red one </s>", refitted with the model's own tokenizer

    model = load_run(tmp_path / "run")  # rebuilt from config.json alone, as export does
    info = model.info
    batch = Collate(info.modalities, info.task, info.num_classes)(data.split("test"))
    assert batch.modalities["text"].inputs["input_ids"][0, 0] == 0  # <s> from the model's tokenizer
    with torch.no_grad():
        logits = model(batch)["logits"]
    assert logits.shape == (6, NUM_CLASSES) and torch.isfinite(logits).all()

    # The run exports to a bundle like any other (fp32 + CPU INT8, fused), and the torch-free runtime,
    # with the checkpoints' own preprocessing copied into the bundle, gives the run's probabilities.
    from export.build import BuildConfig, build_bundle
    from runtime import Runtime

    bundle = build_bundle(BuildConfig(method="cmpt", precisions=("fp32", "int8"), out=tmp_path / "bundle",
                                      progress=False, exporter="legacy", placeholders=False, val_samples=6,
                                      calib_samples=6, allow_degraded=True),  # 1 epoch: near-tied logits
                          model=model, dataset=data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    fused = {(g["pattern"], g["precision"]): g["fused_ops"] for g in manifest["graphs"]}
    assert fused[("image+text", "fp32")].get("Attention") == 4  # 2 CLIP + 2 RoBERTa layers
    assert fused[("image+text", "int8")].get("QAttention", 0) + fused[("image+text", "int8")].get("Attention", 0) == 4
    assert (bundle / "preprocess" / "text" / "tokenizer.json").is_file()
    expect = torch.softmax(logits, dim=-1).numpy()
    from runtime.confidence import InsufficientCalibrationWarning

    with pytest.warns(InsufficientCalibrationWarning), Runtime.load(bundle) as rt:  # 6 val rows < 9 for alpha 0.1
        got = np.stack([p.probabilities for p in rt.predict_batch([s.inputs for s in data.split("test")])])
    np.testing.assert_allclose(got, expect, atol=1e-4)


def test_encoder_flag_errors(tmp_path: Path, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture) -> None:
    import train.data.registry as registry
    from train.cli import main
    from train.cli.encoder_flag import parse_encoder_flags, unimodal_encoder

    assert parse_encoder_flags(["image=a/b", "text=hub/id=x"]) == {"image": "a/b", "text": "hub/id=x"}
    with pytest.raises(ValueError, match="MODALITY=DIR_OR_HUB_ID"):
        parse_encoder_flags(["./dir"])
    assert unimodal_encoder("image=./d", "image") == "./d" and unimodal_encoder("./a=b", "image") == "./a=b"
    with pytest.raises(ValueError, match="--modality is 'text'"):
        unimodal_encoder("image=./d", "text")
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: image_text_dataset())
    args = ["run", "--method", "cmpt", "--dataset", "tiny-it", "--out", str(tmp_path / "r"), "--epochs", "1"]
    assert main([*args, "--encoder", f"audio={checkpoints['image']}"]) != 0
    assert "does not have" in capsys.readouterr().err
    assert main([*args, "--encoder", f"image={checkpoints['image']}"]) != 0  # text has no encoder at all
    assert "--encoder text=DIR_OR_HUB_ID" in capsys.readouterr().err
    assert main([*args, "--encoder", f"image={checkpoints['image']}", "--encoder", f"text={checkpoints['image']}"]) != 0
    assert "not a 'text' encoder" in capsys.readouterr().err


def test_unimodal_with_a_user_encoder_writes_its_preprocessing(tmp_path: Path, checkpoints: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import train.recipes.unimodal as unimodal

    monkeypatch.setattr(unimodal, "load_dataset", lambda *a, **k: image_text_dataset())
    cfg = unimodal.UnimodalConfig(dataset="tiny-it", modality="image", out=tmp_path / "u", encoder=str(checkpoints["image"]),
                                  epochs=1, batch_size=6, progress=False)
    unimodal.pretrain_unimodal(cfg)
    spec = json.loads((tmp_path / "u" / "modality.json").read_text())["preprocess"]
    assert spec["mean"] == CLIP_MEAN and spec["size"] == [8, 8] and spec["channels"] == 3


def test_image_spec_variants_and_waveform_refusal(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from train.encoders.model_spec import image_spec_from_model, spec_from_model

    fitted = {"type": "image", "size": [30, 40], "channels": 1, "mean": [0.3], "std": [0.2]}
    hf = SimpleNamespace(num_channels=3, image_size=16)
    # no preprocessor_config.json: the model's size (fixed position grid), the fitted statistics
    assert image_spec_from_model(fitted, tmp_path, hf) == {**fitted, "size": [16, 16], "channels": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 24}, "do_center_crop": False, "do_normalize": False, "do_rescale": False}))
    spec = image_spec_from_model(fitted, tmp_path, hf)
    assert (spec["size"], spec["scale"], spec["mean"], spec["std"]) == ([24, 24], 1.0, [0.0] * 3, [1.0] * 3)

    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from train.encoders.wav2vec2 import Wav2Vec2Encoder

    enc = Wav2Vec2Encoder(Wav2Vec2Model(Wav2Vec2Config(**TINY, conv_dim=(8,), conv_stride=(4,), conv_kernel=(8,),
                                                       num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)),
                          {})
    samples = {"type": "audio", "input": "samples", "sample_rate": 16000, "normalize": "per-clip"}
    tmp_path = tmp_path / "audio"  # no preprocessor_config.json (the image one above says do_normalize False)
    tmp_path.mkdir()
    # no preprocessor_config.json sampling_rate: 16 kHz; a .wav (MFCC) modality at that rate becomes raw samples
    mfcc = {"type": "audio", "input": "waveform", "sample_rate": 16000, "mfcc": {"n_mfcc": 13}, "max_frames": 98}
    assert spec_from_model(mfcc, "audio", tmp_path, enc) == samples  # MFCC frames are no sample count
    with pytest.raises(ValueError, match="reads 16000 Hz audio.*clips are 8000 Hz"):
        spec_from_model({**mfcc, "sample_rate": 8000}, "audio", tmp_path, enc)
    with pytest.raises(ValueError, match="13 features per frame"):
        spec_from_model({"type": "audio", "input": "features", "n_features": 13}, "audio", tmp_path, enc)
    raw = {"type": "audio", "input": "features", "n_features": 1, "max_frames": 16000}
    assert spec_from_model(raw, "audio", tmp_path, enc) == {**samples, "max_frames": 16000}
