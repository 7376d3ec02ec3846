"""Raw-samples audio input (Wav2Vec2/HuBERT): preprocessing by hand, against HF's feature extractor, the
typed refusals, the user format's .wav files, and a tiny random Wav2Vec2 exported and fed a .wav."""
from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest

from runtime.modality_spec import placeholder_raw, spec_of, synthetic_raw
from runtime.preprocess import REASONS, PreprocessError, SequenceTooLongError, make_preprocessor
from runtime.preprocess_sequence import SampleRateError

SR = 8000
SPEC = {"type": "audio", "input": "samples", "sample_rate": SR}


def write_wav(path: Path, samples: np.ndarray, rate: int = SR, channels: int = 1) -> Path:
    """16-bit PCM through the stdlib; ``samples`` in [-1, 1), interleaved when ``channels`` > 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.asarray(samples) * 32768).clip(-32768, 32767).astype("<i2").tobytes())
    return path


# --------------------------------------------------------------------------- preprocessing by hand
def test_per_clip_normalisation_by_hand() -> None:
    pre = make_preprocessor(dict(SPEC))
    one = pre([np.array([1, 2, 3, 4, 5], np.float32)])
    x = np.arange(1, 6, dtype=np.float64)
    assert one["values"].shape == (1, 5, 1) and one["values"].dtype == np.float32
    np.testing.assert_allclose(one["values"][0, :, 0], (x - 3) / math.sqrt(2 + 1e-7), rtol=0, atol=1e-7)
    assert one["mask"].tolist() == [[1] * 5]
    # lengths 3 and 5: [1, 2, 3] has mean 2 and population variance 2/3; padding is 0 with mask 0
    batch = pre([np.array([1, 2, 3], np.float32), np.array([1, 2, 3, 4, 5], np.float32)])
    short = (np.array([1.0, 2, 3]) - 2) / math.sqrt(2 / 3 + 1e-7)
    np.testing.assert_allclose(batch["values"][0, :, 0], [*short, 0, 0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(batch["values"][1, :, 0], (x - 3) / math.sqrt(2 + 1e-7), rtol=0, atol=1e-7)
    assert batch["mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    raw = make_preprocessor({**SPEC, "normalize": "none"})([np.array([[0.5], [-0.25]], np.float32)])  # (N, 1)
    assert raw["values"][0, :, 0].tolist() == [0.5, -0.25]


@pytest.mark.parametrize("policy,kept", [("truncate", [0, 1, 2, 3, 4]), ("window", [3, 4, 5, 6, 7])])
def test_max_frames_counts_samples_and_normalises_the_kept_ones(policy: str, kept: list[int]) -> None:
    clip = np.arange(8, dtype=np.float32)
    pre = make_preprocessor({**SPEC, "max_frames": 5, "sequence_policy": policy, "normalize": "none"})
    assert pre([clip])["values"][0, :, 0].tolist() == kept and pre.cuts == 1
    normed = make_preprocessor({**SPEC, "max_frames": 5, "sequence_policy": policy})([clip])["values"][0, :, 0]
    k = np.array(kept, np.float64)  # HF normalises after truncation: statistics of the kept samples
    np.testing.assert_allclose(normed, (k - k.mean()) / np.sqrt(k.var() + 1e-7), rtol=0, atol=1e-6)
    with pytest.raises(SequenceTooLongError) as err:
        make_preprocessor({**SPEC, "max_frames": 5, "sequence_policy": "error"})([clip])
    assert (err.value.length, err.value.maximum, err.value.reason) == (8, 5, "length")


def test_matches_hf_wav2vec2_feature_extractor() -> None:
    from transformers import Wav2Vec2FeatureExtractor

    rng = np.random.default_rng(3)
    clips = [(0.3 * rng.standard_normal(n) + 0.05).astype(np.float32) for n in (700, 1000)]
    hf = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=True)
    want = hf(clips, sampling_rate=SR, padding=True, return_tensors="np")
    got = make_preprocessor(dict(SPEC))(clips)
    np.testing.assert_allclose(got["values"][..., 0], want["input_values"], rtol=0, atol=1e-6)
    assert got["mask"].tolist() == want["attention_mask"].tolist()
    single = hf(clips[0], sampling_rate=SR, return_tensors="np")["input_values"]
    np.testing.assert_allclose(make_preprocessor(dict(SPEC))([clips[0]])["values"][..., 0], single, rtol=0, atol=1e-6)


def test_spec_answers_placeholder_and_fitting() -> None:
    from train.data.stats import fit_preprocess

    view = spec_of({**SPEC, "max_frames": 3000})
    assert (view.feature_width, view.sequence_length, view.fits_stats, view.samples) == (1, 3000, False, True)
    assert spec_of(SPEC).sequence_length == SR  # no max_frames: one second
    assert placeholder_raw(SPEC).shape == (SR,) and not placeholder_raw(SPEC).any()  # one second of silence
    assert placeholder_raw({**SPEC, "max_frames": 100, "sequence_policy": "error"}).shape == (100,)  # never cut
    silence = make_preprocessor(dict(SPEC))([placeholder_raw(SPEC)])
    assert silence["values"].shape == (1, SR, 1) and not silence["values"].any()  # (0 - 0) / sqrt(0 + eps)
    assert synthetic_raw({**SPEC, "max_frames": 300}).shape == (300,)
    fitted = fit_preprocess(dict(SPEC), [np.zeros(n, np.float32) + 0.1 for n in (100, 200, 150)])
    assert fitted == {**SPEC, "max_frames": 200}  # the length only: no mean/std for per-clip samples
    assert "samples" in view.describe() and "per-clip" in view.describe()


@pytest.mark.parametrize("spec,match", [({**SPEC, "normalize": "global"}, "normalize"),
                                        ({**SPEC, "mean": [0.0], "std": [1.0]}, "no mean/std"),
                                        ({"type": "audio", "input": "samples"}, "sample_rate")])
def test_bad_samples_specs(spec: dict, match: str) -> None:
    with pytest.raises(PreprocessError, match=match) as err:
        make_preprocessor(spec)
    assert err.value.reason == "spec"


# --------------------------------------------------------------------------- typed refusals
def test_stereo_and_int_arrays_are_refused() -> None:
    pre = make_preprocessor(dict(SPEC))
    for raw, reason in ((np.zeros((100, 2), np.float32), "channels"), (np.zeros((2, 100), np.float32), "channels"),
                        (np.zeros((4, 5, 1), np.float32), "rank"), (np.zeros(100, np.int16), "dtype")):
        with pytest.raises(PreprocessError) as err:
            pre([raw])
        assert err.value.reason == reason, raw.shape
        with pytest.raises(PreprocessError):
            spec_of(SPEC).check_raw(raw)


def test_wav_at_another_rate_and_stereo_wav(tmp_path: Path) -> None:
    from runtime.runtime_cli import read_raw

    clip = np.linspace(-0.5, 0.5, 400)
    good = write_wav(tmp_path / "good.wav", clip)
    np.testing.assert_allclose(spec_of(SPEC).read_file(good), clip, rtol=0, atol=1 / 32768)
    np.testing.assert_array_equal(read_raw(str(good), "audio", SPEC), spec_of(SPEC).read_file(good))
    other = write_wav(tmp_path / "other.wav", clip, rate=16000)
    for read in (lambda: spec_of(SPEC).read_file(other), lambda: read_raw(str(other), "audio", SPEC)):
        with pytest.raises(SampleRateError, match="16000 Hz.*8000 Hz.*resample") as err:
            read()
        assert (err.value.rate, err.value.expected, err.value.reason) == (16000, SR, "sample_rate")
    assert "sample_rate" in REASONS
    stereo = write_wav(tmp_path / "stereo.wav", np.repeat(clip, 2), channels=2)
    with pytest.raises(PreprocessError, match="2 channels") as err:
        spec_of(SPEC).read_file(stereo)
    assert err.value.reason == "channels"
    with pytest.raises(PreprocessError, match="save them as .npy"):  # a features spec cannot take a .wav
        spec_of({"type": "audio", "input": "features", "n_features": 1}).read_file(good)


# --------------------------------------------------------------------------- user format
def write_dataset(root: Path, lengths: list[int], declared: dict, rate: int = SR, npy_first: bool = False) -> Path:
    """A two-class user-format set of .wav clips (sample i: ``lengths[i]`` samples), explicit splits."""
    rng = np.random.default_rng(0)
    lines = []
    for i, n in enumerate(lengths):
        clip = 0.2 * rng.standard_normal(n).clip(-4, 4)
        if npy_first and i == 0:
            rel = "clips/s0.npy"
            (root / "clips").mkdir(parents=True, exist_ok=True)
            np.save(root / rel, clip.astype(np.float32)[:, None])  # samples as an (N, 1) column
        else:
            rel = f"clips/s{i}.wav"
            write_wav(root / rel, clip, rate if i == len(lengths) - 1 else SR)
        split = ("train", "train", "train", "train", "val", "test")[i % 6]
        lines.append(json.dumps({"id": f"s{i}", "label": "ab"[i % 2], "split": split, "mic": rel}))
    (root / "dataset.json").write_text(json.dumps({"task": "single-label", "modalities": {"mic": declared}}))
    (root / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_user_format_reads_wav_and_npy_as_samples(tmp_path: Path) -> None:
    from train.data import user_format

    lengths = [300, 500, 400, 350, 420, 380]
    data = user_format.load_user_dataset(write_dataset(tmp_path / "d", lengths, {"type": "audio", "input": "samples"},
                                                       npy_first=True))
    spec = data.modalities["mic"].preprocess
    # train clips 300, 500, 400, 350 samples: longer than 256, so max_frames is their 95th percentile (linear):
    # 400 + 0.85 * (500 - 400) = 485
    assert spec == {"type": "audio", "input": "samples", "sample_rate": SR, "max_frames": 485}
    train = data.splits["train"]
    assert [s.inputs["mic"].shape for s in train] == [(300, 1), (500,), (400,), (350,)]  # (N, 1) .npy, 1-D .wav
    assert make_preprocessor(spec)([s.inputs["mic"] for s in train])["values"].shape == (4, 485, 1)


def test_user_format_refuses_a_wav_at_another_rate(tmp_path: Path) -> None:
    from train.data import user_format
    from train.data.errors import DataFormatError

    root = write_dataset(tmp_path / "d", [300, 500, 400, 350, 420, 380], {"type": "audio", "input": "samples"},
                         rate=16000)
    with pytest.raises(DataFormatError, match="16000 Hz but the modality uses 8000 Hz"):
        user_format.load_user_dataset(root)
    assert len(user_format.load_user_dataset(root, strict=False).skipped) == 1


# --------------------------------------------------------------------------- end to end: .wav -> graph
def test_wav_folder_to_exported_wav2vec2_matches_torch(tmp_path: Path) -> None:
    """A .wav user set (default MFCC spec) + a Wav2Vec2 checkpoint at 8 kHz -> the samples spec; the exported
    audio graph fed the runtime's preprocessing of the .wav files equals the torch encoder on the same samples."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor

    from export.fusion import export_copy
    from runtime.runners.onnxrt import create_session, session_options
    from encoder_cases import H, P, Prompted, _audio, export_onnx
    from train.data import user_format
    from train.encoders import load_encoder
    from train.encoders.model_spec import encoder_spec

    torch.manual_seed(0)
    ckpt = tmp_path / "w2v"
    _audio("Wav2Vec2Model", "Wav2Vec2Config")().save_pretrained(ckpt)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True).save_pretrained(ckpt)
    root = write_dataset(tmp_path / "d", [300, 700, 400, 350, 420, 380], {"type": "audio"})
    data = user_format.load_user_dataset(root)
    assert data.modalities["mic"].preprocess["input"] == "waveform"  # .wav without a declared input: MFCCs
    enc = load_encoder(ckpt)
    train = [s.inputs["mic"] for s in data.splits["train"]]
    spec = encoder_spec(data.modalities["mic"], ckpt, enc, train).preprocess
    # fitted on the train clips (300, 700, 400, 350 samples), not MFCC frames: 400 + 0.85 * 300 = 655
    assert spec == {"type": "audio", "input": "samples", "sample_rate": SR, "normalize": "per-clip", "max_frames": 655}

    model = Prompted({"w": enc}, {"w": True}).eval()
    twin = export_copy(model)
    example = {"values": torch.randn(2, 96, 1), "mask": torch.ones(2, 96, dtype=torch.long)}
    from torch.export import Dim

    path = export_onnx(twin.module, example, ["values", "mask"], ["w"], {1: Dim("samples", min=32, max=4096)},
                       tmp_path / "audio.onnx")
    session = create_session(path, session_options(threads=1))
    wavs = [root / "clips/s4.wav", root / "clips/s1.wav"]  # 420 samples (padded) and 700 (truncated to 655)
    raws = [spec_of(spec).read_file(w) for w in wavs]
    feeds = make_preprocessor(spec)(raws)
    assert feeds["mask"].sum(1).tolist() == [420, 655]
    hf = Wav2Vec2FeatureExtractor.from_pretrained(ckpt)(raws, sampling_rate=SR, padding=True, truncation=True,
                                                         max_length=655, return_tensors="np")
    np.testing.assert_allclose(feeds["values"][..., 0], hf["input_values"], rtol=0, atol=1e-6)
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        (want,) = model(torch.from_numpy(feeds["values"]), torch.from_numpy(feeds["mask"]))
    assert got.shape == tuple(want.shape) and got.shape[0] == 2 and got.shape[2] == H
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)
    assert np.abs(got[0, P] - got[1, P]).max() > 1e-3  # the pooled tokens of two clips differ
