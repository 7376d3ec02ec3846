"""The preprocessing a user's pretrained encoder expects, taken from its own files.

A pretrained checkpoint was trained on one input pipeline; feeding it another (MiniLM's
word pieces to a RoBERTa, the data set's fitted pixel statistics to a CLIP) silently
degrades it. So when an encoder comes from ``--encoder MODALITY=SOURCE``, the modality's
runtime.preprocess spec is rewritten from what SOURCE ships:

- image: ``preprocessor_config.json``: the crop size when it centre-crops (else the resize
  size; ``shortest_edge`` becomes a square), ``rescale_factor`` as ``scale``, and
  ``image_mean`` / ``image_std`` as ``mean`` / ``std`` (0 / 1 without ``do_normalize``). The
  runtime resizes the whole frame to that size (no crop, so a non-square frame is stretched).
  Without that file the model's ``image_size`` replaces the size (position embeddings are
  fixed) and the statistics fitted on the training split stay.
- text: ``tokenizer.json`` becomes the tokenizer, and ``max_length`` is refitted with it on
  the training texts, capped at the model's usable positions. A checkpoint without a fast
  tokenizer is refused (save one: ``AutoTokenizer.from_pretrained(ID).save_pretrained(DIR)``).
  An adapter with a ``text_spec(spec, source)`` method then rewrites the result for its family
  (SigLIP: pad to the fixed trained length with its own pad id, see ``siglip_text``).
- audio read as raw samples (Wav2Vec2/HuBERT, ``samples_spec_from_model``): the spec becomes
  ``{"input": "samples", "sample_rate", "normalize"}`` from ``preprocessor_config.json``
  (``sampling_rate``, ``do_normalize``; without the file 16 kHz and per-clip, the feature
  extractor's defaults). A .wav modality (MFCC spec) at that rate, an (N, 1) features spec or a
  samples spec are rewritten; another rate or wider features are refused (nothing is resampled).
  ``max_frames`` (in samples) is refitted on the training clips unless the spec already counts samples.
  Other adapters with a ``spec_from_model(spec, source, train_raws)`` method rewrite their own.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError

PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_SAMPLING_RATE = 16000  # Wav2Vec2FeatureExtractor's default, and every released Wav2Vec2/HuBERT's rate
KEPT_SEQUENCE_KEYS = ("sequence_policy", "pad")
TOKENIZER_FILE = "tokenizer.json"


def model_file(source: str | Path, name: str) -> Path | None:
    """``name`` inside a local checkpoint directory, or from the HF cache/hub for an id; None if absent."""
    path = Path(source)
    if path.is_dir():
        return path / name if (path / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        from .loading import hf_offline

        return Path(hf_hub_download(str(source), name, local_files_only=hf_offline()))
    except Exception:  # noqa: BLE001 - any hub failure means "this file is not available"
        return None


def image_spec_from_model(spec: dict[str, Any], source: str | Path, hf_config: Any) -> dict[str, Any]:
    out = dict(spec)
    channels = int(getattr(hf_config, "num_channels", spec.get("channels", 3)))
    out["channels"] = channels
    path = model_file(source, PREPROCESSOR_FILE)
    if path is None:
        size = getattr(hf_config, "image_size", None)
        if size is not None:
            out["size"] = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
        return out
    pre = json.loads(path.read_text())
    size = pre.get("crop_size") if pre.get("do_center_crop") and pre.get("crop_size") else pre.get("size")
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, dict):
        raise ConfigError(f"{path}: cannot read an image size from {size!r}")
    if "height" in size and "width" in size:
        out["size"] = [int(size["height"]), int(size["width"])]
    elif "shortest_edge" in size:
        out["size"] = [int(size["shortest_edge"])] * 2
    else:
        raise ConfigError(f"{path}: size {size} has neither height/width nor shortest_edge")
    out["scale"] = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if pre.get("do_normalize", True) and "image_mean" in pre and "image_std" in pre:
        mean, std = [float(v) for v in pre["image_mean"]], [float(v) for v in pre["image_std"]]
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"{path}: image_mean/image_std have {len(mean)}/{len(std)} values for {channels} channels")
        out["mean"], out["std"] = mean, std
    else:
        out["mean"], out["std"] = [0.0] * channels, [1.0] * channels
    return out


def text_positions(hf_config: Any) -> int:
    """Usable token positions (RoBERTa-style embeddings reserve pad_token_id + 1 of them)."""
    limit = int(getattr(hf_config, "max_position_embeddings", 512))
    if getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta"):
        limit -= int(hf_config.pad_token_id) + 1
    return limit


def text_spec_from_model(spec: dict[str, Any], source: str | Path, hf_config: Any,
                         texts: Sequence[str]) -> dict[str, Any]:
    from train.data.stats import fit_preprocess

    path = model_file(source, TOKENIZER_FILE)
    if path is None:
        raise FileNotFoundError(
            f"{source} has no {TOKENIZER_FILE}, so its text preprocessing is unknown; save the model's fast "
            f"tokenizer next to it: AutoTokenizer.from_pretrained({str(source)!r}).save_pretrained(DIR)")
    out = {k: v for k, v in spec.items() if k != "max_length"}
    out["tokenizer_file"] = str(path.resolve())
    fitted = fit_preprocess(out, list(texts)) if texts else {**out, "max_length": text_positions(hf_config)}
    fitted["max_length"] = min(int(fitted["max_length"]), text_positions(hf_config))
    return fitted


def spec_from_model(spec: dict[str, Any], modality_type: str, source: str | Path, encoder: Any,
                    train_raws: Sequence[Any] = ()) -> dict[str, Any]:
    """``spec`` rewritten for the encoder loaded from ``source`` (see the module docstring)."""
    hf_config = encoder.backbone.config
    if modality_type == "image":
        return image_spec_from_model(spec, source, hf_config)
    if modality_type == "text":
        out = text_spec_from_model(spec, source, hf_config, [r for r in train_raws if r is not None])
        family = getattr(encoder, "text_spec", None)  # a family's own padding (SigLIP: fixed length, its pad id)
        return family(out, str(source)) if callable(family) else out
    from_model = getattr(encoder, "spec_from_model", None)
    return from_model(spec, source, list(train_raws)) if callable(from_model) else dict(spec)


def samples_spec_from_model(spec: dict[str, Any], source: str | Path, architecture: str,
                            train_raws: Sequence[Any] = ()) -> dict[str, Any]:
    """The raw-samples audio spec of a checkpoint that reads the waveform (see the module docstring)."""
    from runtime.modality_spec import spec_of
    from train.data.stats import fit_preprocess

    path = model_file(source, PREPROCESSOR_FILE)
    pre = json.loads(path.read_text()) if path is not None else {}
    rate = int(pre.get("sampling_rate", DEFAULT_SAMPLING_RATE))
    view = spec_of({**spec, "type": "audio"})
    declare = ('declare the modality as {"type": "audio", "input": "samples"} with .wav files (or 1-D / (N, 1) '
               f'.npy samples) at {rate} Hz')
    if view.input_kind == "features" and view.feature_width not in (None, 1):
        raise ConfigError(f"{source} ({architecture}) reads the raw waveform, but this audio modality holds "
                          f"{view.feature_width} features per frame; {declare}")
    if view.input_kind not in ("features", "waveform", "samples"):
        raise ConfigError(f"{source} ({architecture}): unknown audio input {view.input_kind!r}; {declare}")
    if view.takes_waveform and view.sample_rate not in (None, rate):
        raise ConfigError(f"{source} ({architecture}) reads {rate} Hz audio (its {PREPROCESSOR_FILE} "
                          f"sampling_rate), but this modality's clips are {view.sample_rate} Hz; nothing is "
                          f"resampled: resample the .wav files to {rate} Hz (e.g. sox in.wav -r {rate} out.wav)")
    out: dict[str, Any] = {"type": "audio", "input": "samples", "sample_rate": rate,
                           "normalize": "per-clip" if pre.get("do_normalize", True) else "none",
                           **{k: spec[k] for k in KEPT_SEQUENCE_KEYS if k in spec}}
    if not view.waveform and view.max_length:  # features (N, 1) and samples specs already count samples
        return {**out, "max_frames": view.max_length}
    raws = [r for r in train_raws if r is not None]
    return fit_preprocess(out, raws) if raws else out


def encoder_spec(spec: Any, source: str | Path, encoder: Any, train_raws: Sequence[Any] = ()) -> Any:
    """A ``ModalitySpec`` for ``encoder`` loaded from ``source``; our own saved encoders keep ``spec``.

    A directory written by ``ModalityEncoder.save_pretrained`` (a unimodal run's ``encoder/``) was
    trained on ``spec`` already; only a stock checkpoint brings its own preprocessing.
    """
    from train.data.types import ModalitySpec

    from .base import META_FILE

    if (Path(source) / META_FILE).is_file():
        return spec
    return ModalitySpec(spec.name, spec.type, spec_from_model(dict(spec.preprocess), spec.type, source, encoder,
                                                              train_raws))
