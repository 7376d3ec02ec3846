"""The run-directory format: one module that writes, reads and rebuilds a trained run.

Layout of ``runs/<dataset>/<method>/`` (written atomically, by the main process only):

    model.safetensors  every weight, frozen encoders included: the run is self-contained
    config.json        method + options, dataset info (labels, task, modality specs with
                       preprocessing), encoder architectures and HF configs: all that
                       ``load_run`` needs to rebuild the model without the unimodal runs
    metrics.json       per-pattern test metrics, parameter counts, wall times, history
    checkpoints/       the loop's resume point (last/) and best.safetensors

``export`` imports this module and the dataset registry, nothing else from ``train``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from runtime.atomic import atomic_dir
from runtime.errors import ConfigError, NotFound

FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.json"


def dataset_key(dataset: str | Path) -> str:
    """The folder name runs of ``dataset`` live under: a registry name as is, a directory by its name.

    Every command (train, eval, export, bench) turns a ``--dataset`` value into a run path
    through this, so ``--dataset ./my/data`` always means ``runs/data/...``.
    """
    return Path(str(dataset).rstrip("/")).name or str(dataset)


def run_dir(runs_dir: str | Path, dataset: str | Path, name: str) -> Path:
    """``<runs_dir>/<dataset key>/<name>``: where a method's (or the unimodal) run lives."""
    return Path(runs_dir) / dataset_key(dataset) / name


def encoder_entry(encoder: Any, source: Path | None = None) -> dict[str, Any]:
    return {"modality_type": encoder.modality_type, "architecture": encoder.architecture,
            "build_config": encoder.build_config, "hf_config": encoder.backbone.config.to_dict(),
            "source": None if source is None else str(source)}


def rebuild_encoder(entry: dict[str, Any]) -> torch.nn.Module:
    """An encoder of the recorded architecture, randomly initialised: load the run's weights next."""
    from transformers import AutoConfig, AutoModel

    from train.encoders import ATTN_IMPLEMENTATION
    from train.encoders.loading import ARCHITECTURES

    if entry["architecture"] not in ARCHITECTURES:
        raise ConfigError(f"unknown encoder architecture {entry['architecture']!r}; known {sorted(ARCHITECTURES)}")
    hf = dict(entry["hf_config"])
    hf_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    adapter = ARCHITECTURES[entry["architecture"]]
    hf_class = getattr(adapter, "hf_class", None)  # a tower AutoModel does not map (SigLIP text)
    if hf_class is not None:
        import transformers

        backbone = getattr(transformers, hf_class)._from_config(hf_config, attn_implementation=ATTN_IMPLEMENTATION)
    else:
        backbone = AutoModel.from_config(hf_config, attn_implementation=ATTN_IMPLEMENTATION)
    return adapter(backbone, dict(entry["build_config"]), entry["modality_type"])


def save_run(out: Path, state: dict[str, torch.Tensor], config: dict[str, Any], metrics: dict[str, Any],
             method: str) -> None:
    """Write a run atomically; an existing ``checkpoints/`` resume point is carried over."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt", "method": method})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        if (out / "checkpoints").is_dir():  # keep the resume point: re-running only re-evaluates
            os.replace(out / "checkpoints", tmp / "checkpoints")


def has_run(run_dir: Path) -> bool:
    return (Path(run_dir) / CONFIG_FILE).is_file() and (Path(run_dir) / METRICS_FILE).is_file()


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise NotFound(f"{path} not found; train first with `mmedge train run --method M --dataset D`")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version {config.get('format_version')} is not {FORMAT_VERSION}")
    return config


def load_run(run_dir: Path) -> Any:
    """Rebuild a trained model (eval mode) from config.json + model.safetensors; no pickle."""
    from train.methods.base import DatasetInfo
    from train.methods.registry import get_method

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    info = DatasetInfo.from_dict(config["dataset"])
    encoders = {m: rebuild_encoder(e) for m, e in config["encoders"].items()}
    model = get_method(config["method"]).build(info, encoders, config["config"])
    model.load_state_dict(load_file(str(run_dir / MODEL_FILE)), strict=True)
    return model.eval()


def read_metrics(directory: Path) -> dict[str, Any]:
    """``metrics.json`` of a method run or a unimodal run."""
    path = Path(directory) / METRICS_FILE
    if not path.is_file():
        raise NotFound(f"{path} not found; train first")
    return json.loads(path.read_text())


def branch_batches(model: Any, module: Any, samples: list[Any], batch_size: int
                   ) -> list[tuple[tuple[torch.Tensor, ...], np.ndarray]]:
    """(positional inputs of ``module``, encoded labels) per batch of ``samples``.

    Every sample must have exactly ``module.pattern``'s modalities. This is the run's own
    preprocessing and collation, which export needs to feed the traced branch.
    """
    from train.engine.batches import Collate
    from train.methods.base import pattern_inputs

    collate = Collate(model.info.modalities, model.task, model.num_classes)
    out = []
    for i in range(0, len(samples), batch_size):
        batch = collate(samples[i:i + batch_size])
        out.append((pattern_inputs(batch, module), batch.labels.numpy()))
    return out
