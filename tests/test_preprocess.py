"""runtime.preprocess: numerics against hand computations, tokenizer parity, typed errors."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from runtime.preprocess import OUTPUTS, PreprocessError, make_preprocessor, referenced_files
from train.data.cache import default_tokenizer_file

TOK = default_tokenizer_file()


def image_spec(**kw: object) -> dict:
    return {"type": "image", "size": [4, 4], "channels": 1, "scale": 1.0, **kw}


# --------------------------------------------------------------------------- image
def test_bilinear_upscale_matches_hand_computation() -> None:
    raw = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    out = make_preprocessor(image_spec(scale=0.5, mean=[10.0], std=[2.0]))([raw])["pixel_values"]
    assert out.shape == (1, 1, 4, 4) and out.dtype == np.float32
    # half-pixel centres: output i samples input (i + 0.5) / 2 - 0.5, clamped -> 0, .25, .75, 1
    w = [(1.0, 0.0), (0.75, 0.25), (0.25, 0.75), (0.0, 1.0)]
    x = raw.astype(float)
    expect = np.array([[sum(w[i][a] * w[j][b] * x[a, b] for a in (0, 1) for b in (0, 1)) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(out[0, 0], (expect * 0.5 - 10.0) / 2.0, rtol=1e-6, atol=1e-5)


def test_area_downscale_is_span_average() -> None:
    raw = np.arange(9, dtype=np.float32).reshape(3, 3)
    out = make_preprocessor(image_spec(size=[2, 2], interpolation="area"))([raw])["pixel_values"][0, 0]
    # output pixel 0 covers input [0, 1.5): weights 1 and 0.5
    row = lambda a, b, c: [(a + 0.5 * b) / 1.5, (0.5 * b + c) / 1.5]  # noqa: E731
    rows = [row(*raw[r]) for r in range(3)]
    expect = [[(rows[0][j] + 0.5 * rows[1][j]) / 1.5 for j in range(2)], [(0.5 * rows[1][j] + rows[2][j]) / 1.5 for j in range(2)]]
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_same_size_is_identity_and_layout_is_chw() -> None:
    raw = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = make_preprocessor({"type": "image", "size": [5, 7], "channels": 3})([raw, raw])["pixel_values"]
    assert out.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(out[1], raw.transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_channel_conversion() -> None:
    grey = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    rgb = make_preprocessor(image_spec(size=[2, 2], channels=3))([grey])["pixel_values"][0]
    assert rgb.shape == (3, 2, 2) and all(np.array_equal(rgb[c], grey) for c in range(3))
    colour = np.zeros((2, 2, 4), dtype=np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2], colour[..., 3] = 100, 50, 200, 7  # alpha must be ignored
    luma = make_preprocessor(image_spec(size=[2, 2]))([colour])["pixel_values"][0, 0]
    np.testing.assert_allclose(luma, 0.299 * 100 + 0.587 * 50 + 0.114 * 200, rtol=1e-6)


@pytest.mark.parametrize(("raw", "reason"), [
    (np.zeros((2, 2, 2), np.uint8), "channels"),
    (np.zeros((2, 2, 3, 1), np.uint8), "rank"),
    (np.zeros(4, np.uint8), "rank"),
    (np.array([[np.nan, 0.0]]), "non_finite"),
    (np.full((2, 2), np.inf), "non_finite"),
    (np.zeros((0, 3), np.uint8), "empty"),
    (np.array([["a"]]), "dtype"),
    (np.ones((2, 2), bool), "dtype"),
    ("image.png", "type"),
    (None, "missing"),
])
def test_bad_images_raise(raw: object, reason: str) -> None:
    pre = make_preprocessor(image_spec())
    with pytest.raises(PreprocessError) as err:
        pre([np.zeros((4, 4), np.uint8), raw])
    assert err.value.reason == reason and err.value.index == 1 and "input #1" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("spec", [
    {"type": "video"}, {"type": "image", "channels": 1}, {"type": "image", "size": [4], "channels": 1},
    image_spec(channels=2), image_spec(mean=[0.0, 0.0]), image_spec(std=[0.0]), image_spec(interpolation="cubic"),
    image_spec(mean=["a"]), image_spec(scale="1/255"),
    {"type": "text", "tokenizer_file": "/nonexistent/tokenizer.json", "max_length": 8},
    {"type": "audio", "input": "waveform", "sample_rate": 16000, "mfcc": {"n_fft": 64, "hop_length": 32, "n_mels": 10, "n_mfcc": 20}},
    {"type": "timeseries", "n_channels": 2, "pad": "max_frames"},
])
def test_bad_specs_raise(spec: dict) -> None:
    with pytest.raises(PreprocessError) as err:
        make_preprocessor(spec)
    assert err.value.reason == "spec"


# --------------------------------------------------------------------------- text
def test_text_matches_tokenizers_and_masks_padding() -> None:
    texts = ["what is the blue shape?", "", "does the image contain a very very very long rambling sentence here?"]
    pre = make_preprocessor({"type": "text", "tokenizer_file": str(TOK), "max_length": 12})
    assert pre.input_names == tuple(n for n, _ in OUTPUTS["text"])
    out = pre(texts)
    ref = Tokenizer.from_file(str(TOK))
    ref.no_padding()
    ref.enable_truncation(12)
    expect = [e.ids for e in ref.encode_batch(texts)]
    assert out["input_ids"].dtype == np.int64 and out["attention_mask"].dtype == np.int64
    assert out["input_ids"].shape == (3, 12)  # the long one is truncated to 12, others padded
    for row, ids, mask in zip(expect, out["input_ids"], out["attention_mask"]):
        assert list(ids[: len(row)]) == row and mask.sum() == len(row)
        assert list(mask) == [1] * len(row) + [0] * (12 - len(row)) and set(ids[len(row):]) <= {0}
    assert expect[2][-1] == 102 and expect[1] == [101, 102]  # truncation keeps [SEP]; "" is [CLS][SEP]


def test_text_pads_to_longest_or_fixed_and_resolves_base_dir(tmp_path: Path) -> None:
    (tmp_path / "tok.json").write_bytes(TOK.read_bytes())
    pre = make_preprocessor({"type": "text", "tokenizer_file": "tok.json", "max_length": 32}, base_dir=tmp_path)
    assert pre(["hi", "red"])["input_ids"].shape == (2, 3)
    fixed = make_preprocessor({"type": "text", "tokenizer_file": "tok.json", "max_length": 32, "pad": "max_length"}, base_dir=tmp_path)
    assert fixed(["hi"])["input_ids"].shape == (1, 32)
    assert referenced_files(fixed.spec) == ["tok.json"]
    with pytest.raises(PreprocessError) as err:
        pre(["ok", 3])
    assert err.value.reason == "type" and err.value.index == 1


def test_concurrent_calls_agree_with_serial() -> None:
    pre = make_preprocessor({"type": "text", "tokenizer_file": str(TOK), "max_length": 16})
    other = make_preprocessor({"type": "text", "tokenizer_file": str(TOK), "max_length": 4})  # shares the file
    img = make_preprocessor(image_spec(size=[3, 5], channels=3))
    rng = np.random.default_rng(1)
    jobs = [([f"question number {i} " * (i % 5 + 1)], rng.integers(0, 256, (8, 6), dtype=np.uint8)) for i in range(40)]
    serial = [(pre(t)["input_ids"], img([x])["pixel_values"]) for t, x in jobs]
    with ThreadPoolExecutor(4) as pool:
        par = list(pool.map(lambda j: (pre(j[0])["input_ids"], other(j[0]), img([j[1]])["pixel_values"]), jobs))
    for (a, b), (c, _, d) in zip(serial, par):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    assert pre(["a b c d e f"])["input_ids"].shape[1] > 4  # the max_length 4 instance did not leak


def test_preprocessors_pickle_for_dataloader_workers() -> None:
    import pickle

    text = make_preprocessor({"type": "text", "tokenizer_file": str(TOK), "max_length": 5})
    wav = make_preprocessor(wave_spec())
    clip = np.sin(np.arange(2000) / 7.0).astype(np.float32)
    for pre, raws in ((text, ["a b c d e f g"]), (wav, [clip]), (make_preprocessor(image_spec()), [np.eye(3)])):
        again = pickle.loads(pickle.dumps(pre))
        assert all(np.array_equal(a, b) for a, b in zip(pre(raws).values(), again(raws).values()))


# --------------------------------------------------------------------------- audio / timeseries
MFCC = {"n_mfcc": 13, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40}


def wave_spec(**kw: object) -> dict:
    return {"type": "audio", "input": "waveform", "sample_rate": 16000, "mfcc": dict(MFCC), **kw}


def test_mfcc_shape_and_pure_tone_stability() -> None:
    t = np.arange(16000) / 16000.0
    tone = (0.5 * np.sin(2 * np.pi * 500.0 * t)).astype(np.float32)  # 5 whole cycles per 160-sample hop
    pre = make_preprocessor(wave_spec())
    out = pre([tone, tone[:300]])
    n_frames = 1 + (16000 - 400) // 160
    assert out["values"].shape == (2, n_frames, 13) and out["values"].dtype == np.float32
    assert out["mask"][0].sum() == n_frames and out["mask"][1].sum() == 1  # short clip: one zero-padded frame
    v = out["values"][0]
    assert np.all(np.isfinite(v))
    assert np.abs(v - v[0]).max() < 1e-3  # every frame sees the same signal, so the same coefficients
    np.testing.assert_array_equal(pre([tone])["values"][0], v)
    # with n_mfcc == n_mels the ortho DCT inverts exactly: the loudest mel band must hold 500 Hz
    full = make_preprocessor(wave_spec(mfcc={**MFCC, "n_mfcc": 40}))([tone])["values"][0, 0]
    from scipy.fft import idct
    band = int(np.argmax(idct(full.astype(float), type=2, norm="ortho")))
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = [700 * (10 ** (m / 2595) - 1) for m in np.linspace(0, mel(8000.0), 42)]
    assert edges[band] < 500 < edges[band + 2]


def test_mfcc_one_frame_against_direct_computation() -> None:
    from scipy.fft import dct

    rng = np.random.default_rng(3)
    wav = rng.standard_normal(400).astype(np.float32) * 0.1
    got = make_preprocessor(wave_spec())([wav])["values"][0, 0]
    n = np.arange(400)
    frame = wav.astype(float) * (0.5 - 0.5 * np.cos(2 * np.pi * n / 400))
    k = np.arange(257)[:, None]
    power = np.abs((frame[None, :] * np.exp(-2j * np.pi * k * n[None, :] / 512)).sum(axis=1)) ** 2  # direct DFT
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = [700 * (10 ** (m / 2595) - 1) for m in np.linspace(0, mel(8000.0), 42)]
    freqs = np.arange(257) * 16000 / 512
    energies = []
    for b in range(40):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        tri = [max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid))) for f in freqs]
        energies.append(np.dot(tri, power))
    expect = dct(np.log(np.maximum(energies, 1e-10)), type=2, norm="ortho")[:13]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-3)


def test_sequences_pad_truncate_and_normalise() -> None:
    spec = {"type": "timeseries", "n_channels": 2, "max_frames": 3, "mean": [1.0, -1.0], "std": [2.0, 4.0]}
    a = np.array([[1.0, -1.0], [3.0, 3.0], [5.0, 7.0], [9.0, 9.0]], dtype=np.float32)
    b = np.array([[3.0, 3.0]])
    out = make_preprocessor(spec)([a, b])
    assert out["values"].shape == (2, 3, 2) and out["mask"].dtype == np.int64
    np.testing.assert_allclose(out["values"][0], [[0, 0], [1, 1], [2, 2]])
    np.testing.assert_allclose(out["values"][1], [[1, 1], [0, 0], [0, 0]])
    assert out["mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert make_preprocessor({**spec, "max_frames": 9, "pad": "max_frames"})([b])["values"].shape == (1, 9, 2)
    feats = make_preprocessor({"type": "audio", "input": "features", "n_features": 2})([b.astype(np.int16)])
    assert feats["values"].dtype == np.float32 and feats["values"].shape == (1, 1, 2)


@pytest.mark.parametrize(("spec", "raw", "reason"), [
    ({"type": "timeseries", "n_channels": 3}, np.zeros((5, 2)), "channels"),
    ({"type": "timeseries", "n_channels": 3}, np.zeros(5), "rank"),
    ({"type": "timeseries", "n_channels": 3}, np.zeros((0, 3)), "empty"),
    ({"type": "timeseries", "n_channels": 1}, np.array([[0.0], [np.nan]]), "non_finite"),
    ({"type": "audio", "input": "features", "n_features": 13}, np.zeros((4, 12)), "channels"),
    (wave_spec(), np.zeros(0, np.float32), "empty"),
    (wave_spec(), np.zeros((100, 2), np.float32), "rank"),
    (wave_spec(), np.zeros(1000, np.int16), "dtype"),
    (wave_spec(), np.full(1000, np.inf, np.float32), "non_finite"),
    (wave_spec(), [0.1, [0.2, 0.3]], "type"),
])
def test_bad_sequences_raise(spec: dict, raw: object, reason: str) -> None:
    with pytest.raises(PreprocessError) as err:
        make_preprocessor(spec)([raw])
    assert err.value.reason == reason, str(err.value)


def test_empty_batch_raises() -> None:
    with pytest.raises(PreprocessError, match="empty batch"):
        make_preprocessor({"type": "timeseries", "n_channels": 1})([])


# --------------------------------------------------------------------------- fitting (train.data.stats)
def test_fit_preprocess_statistics_and_lengths() -> None:
    from train.data.stats import FULL_LENGTH_UP_TO, STD_FLOOR, fit_preprocess

    rng = np.random.default_rng(0)
    clips = [np.column_stack([rng.normal(3.0, 2.0, n), np.full(n, 5.0)]) for n in rng.integers(5, 40, 200)]
    spec = {"type": "timeseries", "n_channels": 2, "mean": [9.0, 9.0]}
    fitted = fit_preprocess(spec, [*clips, None])
    assert spec == {"type": "timeseries", "n_channels": 2, "mean": [9.0, 9.0]}  # the input is not modified
    frames = np.concatenate(clips)
    np.testing.assert_allclose(fitted["mean"], frames.mean(axis=0), rtol=1e-9)
    assert fitted["std"][0] == pytest.approx(frames[:, 0].std()) and fitted["std"][1] == STD_FLOOR  # constant channel
    assert fitted["max_frames"] == max(len(c) for c in clips)
    long = [np.zeros((n, 1)) for n in range(1, FULL_LENGTH_UP_TO + 101)]
    assert fit_preprocess({"type": "timeseries", "n_channels": 1}, long)["max_frames"] == int(np.ceil(np.percentile(range(1, 357), 95)))
    assert fit_preprocess({"type": "timeseries", "n_channels": 1, "max_frames": 7}, long)["max_frames"] == 7
    out = make_preprocessor(fitted)(clips[:3])["values"]
    assert abs(out[0, : len(clips[0]), 1]).max() == 0.0  # normalised constant channel is 0, not inf
    text = fit_preprocess({"type": "text", "tokenizer_file": str(TOK)}, ["red", "is the circle blue?"])
    assert text["max_length"] == 7 and "mean" not in text
    wav = fit_preprocess(wave_spec(), [np.sin(np.arange(4000) / 3.0).astype(np.float32)])
    assert len(wav["mean"]) == 13 and wav["max_frames"] == 1 + (4000 - 400) // 160
    with pytest.raises(ValueError, match="zero samples"):
        fit_preprocess(spec, [None])


def test_runtime_preprocess_does_not_import_torch() -> None:
    code = "import sys, runtime.preprocess; assert not {'torch', 'transformers', 'train'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
