"""The IEMOCAP protocol of MLA's Table 2: every modality of every sample missing independently at eta.

The same eta masks train, val and test (each split with its own seed). A draw that would
leave a sample with nothing is redrawn (the paper does not say; METHODS.md section 4.6
resamples). One run per eta, trained by ``train.recipes.method.train_method`` on the
masked data, scored on the masked test split with ``evaluate_mixed`` (each sample through
the branch of the modalities it kept).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.patterns import Pattern
from train.data.masks import _check, apply_patterns
from train.data.types import MultimodalDataset, Sample
from train.engine.checkpoint import write_json_atomic
from train.engine.evaluate import evaluate_mixed
from train.recipes.method import TrainConfig, collate_for, train_method
from train.runs import load_run, run_dir
from runtime.errors import ConfigError

ETAS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)


def independent_missing(samples: Sequence[Sample], modalities: Sequence[str], eta: float, seed: int) -> list[Pattern]:
    """Per sample, each modality it has is dropped with probability eta, redrawn while none would remain.

    A modality the data already lacks stays missing; eta = 1 would never terminate, so eta < 1.
    """
    names = _check(len(samples), modalities, eta, "eta")
    if eta >= 1.0:
        raise ConfigError(f"eta must be < 1 (every sample keeps at least one modality), got {eta}")
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        have = [m for m in names if s.inputs.get(m) is not None]
        if not have:
            raise ValueError(f"sample {s.id!r} has none of {names}")
        while True:
            keep = [m for m in have if rng.random() >= eta]
            if keep:
                break
        out.append(Pattern(keep))
    return out


def mask_dataset(data: MultimodalDataset, eta: float, seed: int) -> MultimodalDataset:
    """Every split masked at ``eta`` (split k of the sorted names with seed + k)."""
    names = list(data.modalities)
    splits = {name: apply_patterns(samples, independent_missing(samples, names, eta, seed + k))
              for k, (name, samples) in enumerate(sorted(data.splits.items()))}
    return dataclasses.replace(data, splits=splits)


def run_name(method: str, eta: float) -> str:
    return f"{method}-independent-{round(eta * 100)}"


def independent_missing_runs(base: TrainConfig, etas: Sequence[float] = ETAS, mask_seed: int = 0,
                             dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Train ``base.method`` once per eta on independently masked data; masked-test metrics per eta.

    Runs go to <runs>/<dataset>/<method>-independent-<100 eta> (``base.out`` is ignored);
    the summary is written beside them as <method>-independent.json.
    """
    if dataset is None:
        from train.data.registry import load_dataset

        dataset = load_dataset(base.dataset, base.data_dir, limit=base.limit, seed=base.seed)
    results: dict[str, Any] = {"method": base.method, "dataset": dataset.name, "mask_seed": mask_seed, "etas": {}}
    for eta in etas:
        masked = mask_dataset(dataset, eta, mask_seed)
        out = run_dir(base.runs_dir, base.dataset, run_name(base.method, eta))
        metrics = train_method(dataclasses.replace(base, out=out), dataset=masked)
        model = load_run(out)
        test = evaluate_mixed(model, masked.split("test"), collate_for(model))
        results["etas"][str(eta)] = {"test": test, "best_epoch": metrics["best_epoch"],
                                     "train_patterns": metrics["train_patterns"],
                                     "train_wall_time_s": metrics["train_wall_time_s"], "run": str(out)}
    summary = run_dir(base.runs_dir, base.dataset, f"{base.method}-independent.json")
    summary.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(summary), results)
    return results
