"""Building, configuring and loading encoders; the packaged MiniLM."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.modality_spec import DEFAULT_MAX_FRAMES, DEFAULT_MAX_TOKENS, spec_of  # noqa: F401 - re-exported
from train.data.cache import minilm_dir  # the one place that knows where MiniLM lives

from .base import FORMAT_VERSION, META_FILE, ModalityEncoder
from .families import ADAPTERS, adapter_for
from .frames import FRAME_TYPES, FramesEncoder
from .image import ImageEncoder
from .text import TextEncoder

MODALITY_TYPES = ("image", "text", "audio", "timeseries")
ARCHITECTURES: dict[str, type[ModalityEncoder]] = {
    **{a.architecture: a for a in ADAPTERS},
    FramesEncoder.architecture: FramesEncoder,
}
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    # small: what av-digits needs on 2 CPU cores; base: for larger inputs when time allows.
    "small": {"hidden_size": 64, "num_layers": 4, "num_heads": 4, "intermediate_size": 128},
    "base": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 256},
}
DEFAULT_VOCAB_SIZE = 30522  # the BERT-uncased vocabulary MiniLM's tokenizer.json uses
# A spec without max_length / max_frames (fit_preprocess normally fills them) gets DEFAULT_MAX_TOKENS /
# DEFAULT_MAX_FRAMES positions: runtime.modality_spec's defaults, the same the runtime and the export use.


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE is truthy: then every from_pretrained gets local_files_only=True."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _encoder_class(modality_type: str) -> type[ModalityEncoder]:
    if modality_type == "image":
        return ImageEncoder
    if modality_type == "text":
        return TextEncoder
    if modality_type in FRAME_TYPES:
        return FramesEncoder
    raise ConfigError(f"unknown modality type {modality_type!r}; choose one of {MODALITY_TYPES}")


def _patch_size(side: int) -> int:
    """Patch so the grid is side/2 per side for tiny images and 8 per side from 16 px up.

    8x8 -> patch 2 (4x4 grid), 64x64 -> patch 8 (8x8 grid), 224 -> 28. Few tokens on
    purpose: edge latency grows with the square of the token count. Falls back to the
    largest divisor at or below the target so no border pixels are dropped.
    """
    grid = max(1, min(side // 2, 8))
    target = max(1, side // grid)
    return next(p for p in range(target, 0, -1) if side % p == 0)


def default_encoder_config(
    modality_type: str,
    preprocess_spec: dict[str, Any],
    size: str = "small",
    hidden_size: int | None = None,
    patch_size: int | None = None,
) -> dict[str, Any]:
    """A scratch build config derived from a modality's runtime.preprocess spec.

    ``patch_size`` overrides the derived image patch (it must divide the image size).
    """
    _encoder_class(modality_type)  # validates the type
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    # Hidden dropout as in BERT; attention dropout off (ViT's default). Both inert in eval/export.
    config: dict[str, Any] = {**SIZES[size], "dropout": 0.1, "attention_dropout": 0.0}
    if hidden_size is not None:
        # Keep the size's FFN ratio; use the most heads (<= the size's) that divide hidden_size.
        ratio = config["intermediate_size"] // config["hidden_size"]
        heads = next(h for h in range(config["num_heads"], 0, -1) if hidden_size % h == 0)
        config.update(hidden_size=int(hidden_size), num_heads=heads, intermediate_size=ratio * int(hidden_size))
    spec = preprocess_spec
    if modality_type == "image":
        if "size" not in spec:
            raise KeyError(f"image preprocess spec needs 'size': [H, W]; got keys {sorted(spec)}")
        height, width = (int(s) for s in spec["size"])
        config.update(image_size=[height, width], channels=int(spec.get("channels", 3)),
                      patch_size=min(_patch_size(height), _patch_size(width)))
        if height % config["patch_size"] or width % config["patch_size"]:
            config["patch_size"] = next(p for p in range(config["patch_size"], 0, -1)
                                        if height % p == 0 and width % p == 0)
        if patch_size is not None:
            if height % patch_size or width % patch_size:
                raise ConfigError(f"patch_size {patch_size} does not divide the image size {height}x{width}")
            config["patch_size"] = int(patch_size)
    elif modality_type == "text":
        config.update(vocab_size=_vocab_size(spec), max_positions=spec_of({**spec, "type": "text"}).sequence_length)
    else:
        view = spec_of({**spec, "type": modality_type})
        n_features = view.feature_width
        if n_features is None:
            raise KeyError(f"{modality_type} preprocess spec needs 'n_features', 'n_channels' or 'mfcc.n_mfcc'; "
                           f"got keys {sorted(spec)}")
        config.update(n_features=int(n_features), max_positions=view.sequence_length + 1)  # +1: CLS
    return config


def _vocab_size(spec: dict[str, Any]) -> int:
    """vocab_size from the spec, else from its tokenizer_file when that path exists, else BERT-uncased's."""
    if "vocab_size" in spec:
        return int(spec["vocab_size"])
    path = spec.get("tokenizer_file")
    if path and Path(path).is_file():
        from tokenizers import Tokenizer

        return int(Tokenizer.from_file(str(path)).get_vocab_size())
    return DEFAULT_VOCAB_SIZE


def build_encoder(modality_type: str, config: dict[str, Any]) -> ModalityEncoder:
    """A fresh encoder (train mode) from a build config.

    With ``config["pretrained"]`` (a directory or hub id of a stock BertModel/ViTModel)
    the backbone is loaded from it; frames encoders then still need ``n_features`` and
    get a fresh projection + CLS on top of the pretrained BERT.
    """
    cls = _encoder_class(modality_type)
    source = config.get("pretrained")
    if source is not None:
        encoder = cls.from_pretrained(str(source), dict(config), local_files_only=hf_offline(),
                                      modality_type=modality_type)
    else:
        encoder = cls.from_config(dict(config), modality_type=modality_type)
    return encoder.train()


def load_encoder(source: str | Path, modality_type: str | None = None) -> ModalityEncoder:
    """An encoder in eval mode (like HF from_pretrained) from a save_pretrained directory,
    or from a stock HF checkpoint (directory or hub id) of a supported family (``families``)."""
    path = Path(source)
    meta_path = path / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{meta_path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
        if modality_type is not None and modality_type != meta["modality_type"]:
            raise ConfigError(f"{path} holds a {meta['modality_type']!r} encoder, not {modality_type!r}")
        cls = ARCHITECTURES.get(meta["architecture"])
        if cls is None:
            raise ConfigError(f"{meta_path}: unknown architecture {meta['architecture']!r}; known {sorted(ARCHITECTURES)}")
        encoder = cls.from_pretrained(str(path), meta["config"], local_files_only=True,
                                      modality_type=meta["modality_type"])
        encoder.load_extra_weights(path)
        return encoder.eval()

    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(str(source), local_files_only=hf_offline())
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load encoder {str(source)!r}: not a directory written by save_pretrained (no {META_FILE}) "
            f"and not a reachable HF model ({err}). Offline (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}) "
            "only local directories work; the packaged text default is train.encoders.minilm_dir()"
        ) from err
    if modality_type in FRAME_TYPES and hf_config.model_type == "bert":
        raise ConfigError(
            f"a stock BERT has no frame projection; use build_encoder({modality_type!r}, "
            f"{{'pretrained': {str(source)!r}, 'n_features': F}})"
        )
    adapter = adapter_for(hf_config.model_type, modality_type, str(source))
    build_config = {"pretrained": str(source)}
    encoder = adapter.from_pretrained(str(source), build_config, local_files_only=hf_offline(),
                                      modality_type=adapter.serves)
    return encoder.eval()
