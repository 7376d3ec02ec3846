"""A tiny 2-modality bundle (image 8x8x1, audio (T, 5)) for runtime tests, built once per process.

Building needs torch (the test process has it); the runtime under test never imports it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.patterns import Pattern

_BUILT: dict[str, Path] = {}


def tiny_bundle(root: Path, precisions: str = "fp32") -> Path:
    """The tiny bundle at ``precisions`` (a comma list), built once per process per precision set.

    Tests must not modify it: copy it (``copy_bundle``) to tamper with it."""
    if precisions not in _BUILT:
        import pytest

        pytest.importorskip("torch", reason="building the test bundle needs the training extras")
        from export.build import BuildConfig, build_bundle
        from export_fixtures import tiny

        model, data = tiny("cmpt", 2)
        # a never-trained tiny model: FP16/INT8 parity is not what these bundles are for
        cfg = BuildConfig(out=root / f"tiny2-cmpt-{precisions.replace(',', '-')}", precisions=precisions,
                          progress=False, exporter="legacy", placeholders=False, val_samples=8, calib_samples=4,
                          allow_degraded=precisions != "fp32")
        _BUILT[precisions] = build_bundle(cfg, model=model, dataset=data)
    return _BUILT[precisions]


ALL_PRECISIONS = "fp32,fp16,int8"


def copy_bundle(src: Path, dst: Path) -> Path:
    """A private copy of a bundle to tamper with (copied, not linked: edits must not reach the original)."""
    import shutil

    shutil.copytree(src, dst)
    return dst


def image(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 1, (8, 8)).astype(np.float32)


def audio(rng: np.random.Generator, frames: int | None = None) -> np.ndarray:
    return rng.normal(0, 1, (frames or int(rng.integers(2, 7)), 5)).astype(np.float32)


def sample(rng: np.random.Generator, pattern: str) -> dict[str, object]:
    """Raw inputs for a pattern key ("audio+image", "audio", "image"); absent modalities are None."""
    present = Pattern.from_key(pattern)
    return {"image": image(rng) if "image" in present else None,
            "audio": audio(rng) if "audio" in present else None}
