"""A tiny 2-modality bundle (image 8x8x1, audio (T, 5)) for runtime tests, built once per process.

Building needs torch (the test process has it); the runtime under test never imports it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.patterns import Pattern

_BUILT: dict[str, Path] = {}


def tiny_bundle(root: Path) -> Path:
    if "b" not in _BUILT:
        import pytest

        pytest.importorskip("torch", reason="building the test bundle needs the training extras")
        from export.build import BuildConfig, build_bundle
        from export_fixtures import tiny

        model, data = tiny("cmpt", 2)
        cfg = BuildConfig(out=root / "tiny2-cmpt-fp32", progress=False, exporter="legacy", placeholders=False,
                          val_samples=8, calib_samples=4)
        _BUILT["b"] = build_bundle(cfg, model=model, dataset=data)
    return _BUILT["b"]


def image(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 1, (8, 8)).astype(np.float32)


def audio(rng: np.random.Generator, frames: int | None = None) -> np.ndarray:
    return rng.normal(0, 1, (frames or int(rng.integers(2, 7)), 5)).astype(np.float32)


def sample(rng: np.random.Generator, pattern: str) -> dict[str, object]:
    """Raw inputs for a pattern key ("audio+image", "audio", "image"); absent modalities are None."""
    present = Pattern.from_key(pattern)
    return {"image": image(rng) if "image" in present else None,
            "audio": audio(rng) if "audio" in present else None}
