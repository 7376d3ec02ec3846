"""A tiny, learnable in-memory multimodal dataset and tiny encoders for method tests.

Classes are written into every modality (an image stripe, a shifted audio mean, a
word), so a few steps of training visibly lower the loss.
"""
from __future__ import annotations

import numpy as np
import torch

from train.data.types import ModalitySpec, MultimodalDataset, Sample
from train.encoders import build_encoder, default_encoder_config, minilm_dir
from train.methods.base import DatasetInfo

NUM_CLASSES = 3
WORDS = ["red", "green", "blue"]


def specs(num_modalities: int) -> dict[str, ModalitySpec]:
    out = {
        "image": ModalitySpec("image", "image", {"type": "image", "size": [8, 8], "channels": 1, "scale": 1.0}),
        "audio": ModalitySpec("audio", "audio", {"type": "audio", "input": "features", "n_features": 5,
                                                 "max_frames": 6}),
    }
    if num_modalities == 3:
        out["text"] = ModalitySpec("text", "text", {"type": "text", "max_length": 8,
                                                    "tokenizer_file": str(minilm_dir() / "tokenizer.json")})
    return out


def make_sample(i: int, label: int, modalities: list[str], rng: np.random.Generator) -> Sample:
    inputs: dict[str, object] = {}
    if "image" in modalities:
        img = rng.normal(0, 0.3, (8, 8)).astype(np.float32)
        img[:, 2 * label : 2 * label + 2] += 1.0
        inputs["image"] = img
    if "audio" in modalities:
        frames = int(rng.integers(3, 7))
        aud = rng.normal(0, 0.3, (frames, 5)).astype(np.float32)
        aud[:, label] += 1.0
        inputs["audio"] = aud
    if "text" in modalities:
        inputs["text"] = f"the {WORDS[label]} one" if i % 2 else WORDS[label]
    return Sample(f"s{i}", inputs, label)


def make_samples(modalities: list[str], n: int, seed: int = 0, start: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [make_sample(start + i, i % NUM_CLASSES, modalities, rng) for i in range(n)]


def make_dataset(num_modalities: int = 2, n_train: int = 24, n_test: int = 12) -> MultimodalDataset:
    mods = specs(num_modalities)
    names = sorted(mods)
    return MultimodalDataset(
        name=f"tiny{num_modalities}", task="single-label", labels=[f"c{k}" for k in range(NUM_CLASSES)],
        modalities=mods,
        splits={"train": make_samples(names, n_train, 0), "val": make_samples(names, n_test, 1, 1000),
                "test": make_samples(names, n_test, 2, 2000)},
    )


def make_encoders(info: DatasetInfo, seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    encoders = {}
    for m, spec in sorted(info.modalities.items()):
        cfg = default_encoder_config(spec.type, spec.preprocess, "tiny")
        encoders[m] = build_encoder(spec.type, cfg)
    return encoders
