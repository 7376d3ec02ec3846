"""Train one missing-modality method on top of the pretrained unimodal encoders.

Layout of ``runs/<dataset>/<method>/`` (written atomically at the end):

    model.safetensors  every weight, frozen encoders included: the run is self-contained
    config.json        method + options, dataset info (labels, task, modality specs with
                       preprocessing), encoder architectures and HF configs: all that
                       ``load_run`` needs to rebuild the model without the unimodal runs
    metrics.json       per-pattern test metrics, parameter counts, wall times, history
    checkpoints/       the loop's resume point (last/) and best.safetensors
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from runtime.patterns import all_patterns
from train.batches import Collate
from train.checkpoint import atomic_dir
from train.data.types import ModalitySpec, MultimodalDataset, Sample
from train.evaluate import evaluate_all_patterns, evaluate_by_pattern
from train.loop import LoopConfig, train_loop
from train.methods.base import OUTPUT_NAMES, DatasetInfo, MultimodalModel, get_method
from train.seeding import seed_everything

FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.json"


@dataclass
class TrainConfig:
    method: str = "cmpt"
    dataset: str = "av-digits"
    method_config: dict[str, Any] = field(default_factory=dict)  # e.g. {"align_weight": 0.2}
    out: Path | None = None  # default: runs/<dataset>/<method>
    unimodal_dir: Path | None = None  # default: runs/<dataset>/unimodal (one <modality>/encoder each)
    # The paper's Table 5 (image-text): 10 epochs, 5 warm-up epochs at 0.1x lr, lr 1e-3,
    # AdamW(wd 0.02, eps 1e-8). Batch 32 instead of 8: per-step overhead dominates on CPU.
    epochs: int = 10
    warmup_epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.02
    seed: int = 0
    limit: int | None = None  # cap per split, for quick runs
    data_dir: Path | None = None
    runs_dir: Path = Path("runs")
    resume: bool = True
    progress: bool = True
    # Lee et al. protocol: train (and validate) under a missing case, e.g. "missing-image" with
    # eta 0.7 (train.data.masks.missing_case, seeded by ``seed``). None: the data as it is.
    train_missing: str | None = None
    train_eta: float = 0.7


def default_out(cfg: TrainConfig) -> Path:
    name = cfg.method
    if cfg.train_missing is not None:  # beside the normal run, never over it
        name = f"{cfg.method}-train-{cfg.train_missing}-{round(cfg.train_eta * 100)}"
    return cfg.runs_dir / Path(cfg.dataset).name / name


def mask_split(samples: list[Sample], modalities: list[str], case: str, eta: float, seed: int) -> list[Sample]:
    """``samples`` under a missing case; a sample the data already lacks stays as it is."""
    from train.data.masks import apply_patterns, missing_case

    return apply_patterns(samples, missing_case(len(samples), modalities, eta, case, seed), on_empty="keep")


def unimodal_dir(cfg: TrainConfig) -> Path:
    return cfg.unimodal_dir or cfg.runs_dir / Path(cfg.dataset).name / "unimodal"


def load_unimodal(data: MultimodalDataset, directory: Path) -> tuple[dict[str, torch.nn.Module], dict[str, ModalitySpec]]:
    """The pretrained encoder of every modality, and the preprocessing it was trained with."""
    from train.encoders import load_encoder

    encoders, specs = {}, {}
    for m, spec in data.modalities.items():
        enc_dir = directory / m / "encoder"
        if not (enc_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"no pretrained {m!r} encoder at {enc_dir}; run `mmedge train unimodal --dataset {data.name} "
                f"--modality {m}` first (or pass --unimodal-dir)")
        encoders[m] = load_encoder(enc_dir, spec.type)
        meta_path = directory / m / "modality.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("type", spec.type) != spec.type:
                raise ValueError(f"{meta_path} is a {meta['type']!r} modality but {data.name!r} has {m!r} as {spec.type!r}")
            # Normalisation statistics the encoder was trained with (a different --limit refits them).
            spec = ModalitySpec(m, spec.type, dict(meta.get("preprocess", spec.preprocess)))
        specs[m] = spec
    return encoders, specs


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
        raise ValueError(f"unknown encoder architecture {entry['architecture']!r}; known {sorted(ARCHITECTURES)}")
    hf = dict(entry["hf_config"])
    hf_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    backbone = AutoModel.from_config(hf_config, attn_implementation=ATTN_IMPLEMENTATION)
    return ARCHITECTURES[entry["architecture"]](backbone, dict(entry["build_config"]), entry["modality_type"])


def _jsonable(obj: Any) -> Any:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(obj).items()}


def _pattern_counts(samples: list[Sample], modalities: list[str]) -> dict[str, int]:
    counts = {p.key: 0 for p in all_patterns(modalities)}
    for s in samples:
        counts[s.pattern.key] += 1
    return counts


def collate_for(model: MultimodalModel) -> Collate:
    return Collate(model.info.modalities, model.task, model.num_classes)


def train_method(cfg: TrainConfig, dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Train ``cfg.method``, evaluate every pattern on test, save the run; returns metrics.json's content.

    ``dataset`` skips loading (tests, notebooks); otherwise ``cfg.dataset`` is loaded.
    """
    seed_everything(cfg.seed)
    get_method(cfg.method)  # fail on a typo before loading anything
    if dataset is None:
        from train.data.registry import load_dataset

        dataset = load_dataset(cfg.dataset, cfg.data_dir, limit=cfg.limit, seed=cfg.seed)
    out = Path(cfg.out or default_out(cfg))
    src = unimodal_dir(cfg)
    encoders, specs = load_unimodal(dataset, src)
    info = DatasetInfo(dataset.name, dataset.task, list(dataset.labels), specs)
    entries = {m: encoder_entry(e, src / m / "encoder") for m, e in encoders.items()}  # before LoRA
    seed_everything(cfg.seed)
    model = get_method(cfg.method).build(info, encoders, cfg.method_config)
    collate = collate_for(model)
    train, val, test = (dataset.split(s) for s in ("train", "val", "test"))
    if cfg.train_missing is not None:  # test stays as given: the protocols mask it themselves
        names = list(dataset.modalities)
        train = mask_split(train, names, cfg.train_missing, cfg.train_eta, cfg.seed)
        val = mask_split(val, names, cfg.train_missing, cfg.train_eta, cfg.seed + 1)
    loop_cfg = LoopConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          warmup_epochs=cfg.warmup_epochs, seed=cfg.seed, resume=cfg.resume, progress=cfg.progress)
    result = train_loop(model, train, val or train, collate, info.task, loop_cfg, out / "checkpoints")
    started = time.perf_counter()
    by_pattern = evaluate_all_patterns(model, test, collate)
    as_given = evaluate_by_pattern(model, test, collate)
    metrics = {
        "method": cfg.method, "dataset": info.name, "task": info.task,
        "test_by_pattern": by_pattern,  # every pattern P, on the test samples that have P, others withheld
        "test_as_given": as_given,  # test samples grouped by the pattern they actually have
        "parameters": model.parameter_counts(),
        "best_epoch": result.best_epoch, "best_val": result.best_score, "epochs": cfg.epochs,
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_wall_time_s": round(result.wall_time_s, 2),
        "eval_wall_time_s": round(time.perf_counter() - started, 2),
        "num_samples": {"train": len(train), "val": len(val), "test": len(test)},
        "train_missing": cfg.train_missing, "train_eta": cfg.train_eta if cfg.train_missing else None,
        "train_patterns": _pattern_counts(train, model.modalities),
        "history": result.history,
    }
    config = {
        "format_version": FORMAT_VERSION, **model.to_config(), "dataset": info.to_dict(), "encoders": entries,
        "patterns": [p.key for p in all_patterns(model.modalities)], "output_names": list(OUTPUT_NAMES),
        "train": _jsonable(cfg),
    }
    state = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt", "method": cfg.method})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        if (out / "checkpoints").is_dir():  # keep the resume point: re-running only re-evaluates
            os.replace(out / "checkpoints", tmp / "checkpoints")
    return metrics


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train first with `mmedge train run --method M --dataset D`")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')} is not {FORMAT_VERSION}")
    return config


def load_run(run_dir: Path) -> MultimodalModel:
    """Rebuild a trained model (eval mode) from config.json + model.safetensors; no pickle."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    info = DatasetInfo.from_dict(config["dataset"])
    encoders = {m: rebuild_encoder(e) for m, e in config["encoders"].items()}
    model = get_method(config["method"]).build(info, encoders, config["config"])
    model.load_state_dict(load_file(str(run_dir / MODEL_FILE)), strict=True)
    return model.eval()


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())
