"""runtime.modality_spec: one answer per question about a preprocessing spec, one class per type."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from runtime.modality_spec import (DEFAULT_MAX_FRAMES, DEFAULT_MAX_TOKENS, OUTPUTS, SPEC_TYPES, FramesSpec,
                                   PreprocessSpec, placeholder_raw, register, spec_of, synthetic_raw,
                                   with_sequence_policy)
from runtime.patterns import feed_modality, feed_name, seq_axis, seq_axis_modality
from runtime.preprocess import PreprocessError, make_preprocessor

ROOT = Path(__file__).resolve().parents[1]
WAVE = {"type": "audio", "input": "waveform", "sample_rate": 8000, "max_frames": 20,
        "mfcc": {"n_mfcc": 13, "n_fft": 256, "hop_length": 128, "n_mels": 26}}


def test_lengths_widths_and_the_one_default_per_kind() -> None:
    ts = spec_of({"type": "timeseries", "n_channels": 3, "max_frames": 100})
    assert (ts.max_length, ts.sequence_length, ts.feature_width, ts.sequence_policy) == (100, 100, 3, "truncate")
    free = spec_of({"type": "timeseries", "n_channels": 3})
    assert free.max_length is None and free.sequence_length == DEFAULT_MAX_FRAMES == 512
    assert ts.warmup_length == 100 and free.warmup_length == 1  # warm-up never exceeds what the graph knows
    audio = spec_of({"type": "audio", "input": "features", "n_features": 13})
    assert audio.feature_width == 13 and audio.sequence_length == DEFAULT_MAX_FRAMES
    wave = spec_of(WAVE)
    assert wave.feature_width == 13 and wave.sequence_length == 20
    assert wave.samples_for(20) == 19 * 128 + 256  # exactly 20 frames of 256 every 128 samples
    text = spec_of({"type": "text", "max_length": 16})
    assert text.sequence_length == 16 and spec_of({"type": "text"}).sequence_length == DEFAULT_MAX_TOKENS
    image = spec_of({"type": "image", "size": [4, 6], "channels": 3})
    assert image.sequence_length is None and image.feature_width is None and image.size == (4, 6)


def test_feed_and_axis_names_are_made_in_one_place() -> None:
    assert feed_name("accel", "values") == "accel.values" and feed_modality("accel.values") == "accel"
    assert seq_axis("accel") == "accel_seq" and seq_axis_modality("accel_seq") == "accel"
    assert seq_axis_modality("batch") is None and seq_axis_modality("_seq") is None
    ts = spec_of({"type": "timeseries", "n_channels": 3})
    assert ts.feed_names("gyro") == ["gyro.values", "gyro.mask"]
    assert spec_of({"type": "text", "max_length": 4}).feed_names("q") == ["q.input_ids", "q.attention_mask"]


def test_placeholder_and_synthetic_inputs_go_through_the_preprocessor() -> None:
    ts = {"type": "timeseries", "n_channels": 3, "max_frames": 7}
    assert placeholder_raw(ts).shape == (7, 3) and not placeholder_raw(ts).any()
    assert make_preprocessor(ts)([synthetic_raw(ts)])["values"].shape == (1, 7, 3)
    assert make_preprocessor(WAVE)([synthetic_raw(WAVE)])["values"].shape == (1, 20, 13)
    assert placeholder_raw(WAVE).shape == (8000,)  # one second of silence
    img = {"type": "image", "size": [5, 4], "channels": 1}
    assert synthetic_raw(img).shape == (5, 4, 1) and synthetic_raw(img).dtype == np.uint8
    np.testing.assert_array_equal(synthetic_raw(img, seed=3), synthetic_raw(img, seed=3))


def test_check_raw_names_what_is_wrong() -> None:
    ts = spec_of({"type": "timeseries", "n_channels": 3})
    assert ts.check_raw(np.zeros((4, 3))).shape == (4, 3)
    with pytest.raises(PreprocessError, match="2 features per frame; expected 3") as err:
        ts.check_raw(np.zeros((4, 2)), what="accel")
    assert err.value.reason == "channels"
    with pytest.raises(PreprocessError) as err:
        spec_of(WAVE).check_raw(np.zeros(10, dtype=np.int16))
    assert err.value.reason == "dtype" and "32768" in str(err.value)
    with pytest.raises(PreprocessError, match="5 channels"):
        spec_of({"type": "image", "size": [2, 2], "channels": 1}).check_raw(np.zeros((2, 2, 5)))
    assert "resized to 2x3" in spec_of({"type": "image", "size": [2, 3], "channels": 1}).expected_raw()
    with pytest.raises(PreprocessError, match="unknown preprocess type 'lidar'"):
        spec_of({"type": "lidar"})


def test_sequence_policy_is_recorded_and_refused_where_it_does_not_apply() -> None:
    ts = {"type": "timeseries", "n_channels": 3, "max_frames": 8}
    assert with_sequence_policy(ts, None)["sequence_policy"] == "truncate"  # written out explicitly
    assert with_sequence_policy(ts, "window")["sequence_policy"] == "window"
    text = {"type": "text", "max_length": 8}
    assert "sequence_policy" not in with_sequence_policy(text, None)
    with pytest.raises(PreprocessError, match="text modalities take sequence_policy"):
        with_sequence_policy(text, "window")
    with pytest.raises(PreprocessError, match="must be one of"):
        spec_of({**ts, "sequence_policy": "drop"}).sequence_policy
    with pytest.raises(PreprocessError, match="sequence_policy must be one of"):
        make_preprocessor({**ts, "sequence_policy": "drop"})


def test_a_new_modality_type_is_one_preprocessor_plus_one_spec_class() -> None:
    class DepthPreprocessor:
        input_names = ("depth",)

        def __init__(self, spec: dict) -> None:
            self.spec = spec

        def __call__(self, raws: list) -> dict[str, np.ndarray]:
            return {"depth": np.stack([np.asarray(r, np.float32) / self.spec["max_depth"] for r in raws])[:, None]}

    class DepthSpec(FramesSpec):
        type = "depth-test"
        outputs = (("depth", "float32"),)
        sequence = False

        def preprocessor(self, base_dir: Path | None = None) -> DepthPreprocessor:
            return DepthPreprocessor(dict(self.spec))

    register(DepthSpec)
    try:
        pre = make_preprocessor({"type": "depth-test", "max_depth": 4.0})
        out = pre([np.full((2, 2), 2.0)])["depth"]
        assert out.shape == (1, 1, 2, 2) and float(out[0, 0, 0, 0]) == 0.5
        assert OUTPUTS["depth-test"] == (("depth", "float32"),)
    finally:
        SPEC_TYPES.pop("depth-test"), OUTPUTS.pop("depth-test")
    assert all(issubclass(c, PreprocessSpec) for c in SPEC_TYPES.values())
    assert sorted(SPEC_TYPES) == ["audio", "image", "text", "timeseries"]


SPEC_READ = re.compile(r'get\("(max_frames|max_length|max_tokens|n_channels|n_features|mfcc|input|sample_rate)"')
SPEC_ALLOWED = {"runtime/modality_spec.py", "runtime/spec_base.py", "runtime/frames_spec.py",
                "runtime/preprocess_sequence.py", "runtime/preprocess_text.py", "runtime/preprocess_image.py",
                "runtime/preprocess_base.py", "runtime/preprocess.py"}


def test_sequence_lengths_and_widths_are_read_only_by_the_spec_module_and_the_preprocessors() -> None:
    """train/data writes specs (fit_preprocess, the user format); everyone else asks runtime.modality_spec."""
    offenders = []
    for folder in ("runtime", "export", "calibration", "train/encoders", "train/methods", "train/engine"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in SPEC_ALLOWED:
                offenders += [f"{rel}: {m.group(0)}" for m in SPEC_READ.finditer(path.read_text())]
    assert offenders == []


def test_feed_names_and_seq_axes_are_spelled_only_in_patterns() -> None:
    # field paths in manifest_schema ("{where}.{key}") are not feed names
    made = re.compile(r'f"\{(?!where)\w+\}\.\{\w+\}"|f"\{\w+\}_seq"|split\("\.", 1\)\[0\]')
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}"
                 for folder in ("runtime", "export", "train/methods") for p in sorted((ROOT / folder).rglob("*.py"))
                 if p.name != "patterns.py" for m in made.finditer(p.read_text())]
    assert offenders == []
