"""Unimodal pretraining: one encoder + a linear head on the samples that have that modality.

The saved encoders are the "pretrained unimodal encoders" that the methods
later freeze. Layout of ``out``:

    encoder/          HF format (save_pretrained, safetensors) + mmedge_encoder.json
    head.safetensors  the linear head (useful for unimodal baselines)
    label_head.safetensors  with a coarse --pretrain-task: a linear probe on the downstream labels over
                      the frozen encoder (train/recipes/label_probe.py), for the methods that use the heads
    modality.json     name, type and the fitted preprocessing spec
    metrics.json      val/test metrics, history, wall time, parameter counts
    checkpoints/      last/ (resume point) and best.safetensors
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from train.engine.distributed import process_state
from safetensors.torch import save_file
from torch import nn

from train.engine.batches import Batch, Collate
from train.engine.checkpoint import atomic_dir, write_json_atomic
from train.data.pretrain_tasks import relabel_for_pretraining
from train.data.registry import load_dataset
from train.data.types import MultimodalDataset, Task
from train.encoders import ModalityEncoder, build_encoder, default_encoder_config, encoder_spec, load_encoder, minilm_dir
from train.engine.loop import LoopConfig, predict_logits, train_loop
from train.engine.metrics import task_metrics
from train.engine.seeding import seed_everything
from train.engine.budget import plan_budget
from train.engine.validation import ensure_validation_split
from train.runs import run_dir
from runtime.errors import ConfigError

# Scratch encoders learn fast at the paper's lr; a pretrained transformer needs a gentler one.
SCRATCH_LR, PRETRAINED_LR = 1e-3, 5e-5
# easy-vqa's 64x64 images at patch 16 give 17 tokens instead of 65 at patch 8: a 384-wide ViT
# then costs about as much as MiniLM per sample, which keeps 2-core CPU runs in minutes.
DATASET_PATCH = {"easy-vqa": 16}


@dataclass
class UnimodalConfig:
    dataset: str = "av-digits"
    modality: str = "image"
    out: Path | None = None  # default: runs/<dataset>/unimodal/<modality>
    encoder: str | None = None  # HF hub id or local dir; default: MiniLM for text, a scratch encoder otherwise
    size: str = "small"  # scratch encoder size: tiny | small
    hidden_size: int | None = None  # scratch encoders default to the text encoder's width when the dataset has text
    patch_size: int | None = None  # image encoders: default per dataset (DATASET_PATCH), else derived from the size
    epochs: int = 20
    batch_size: int = 64
    lr: float | None = None
    seed: int = 0
    limit: int | None = None  # cap per split, for quick runs
    data_dir: Path | None = None
    runs_dir: Path = Path("runs")
    resume: bool = True
    progress: bool = True
    val_fraction: float = 0.1  # carved out of train, stratified and seeded, when the data has no val split
    min_steps: int = 0  # lengthen a run that would make fewer optimiser steps (train.engine.budget); CLI: 300
    # What the head learns: the downstream labels, or a coarser task (train.data.pretrain_tasks) that
    # leaves the multimodal methods something to learn.
    pretrain_task: str = "labels"


def unimodal_folder(pretrain_task: str = "labels") -> str:
    """runs/<dataset>/<this>: ``unimodal`` for same-label pretraining, ``unimodal-<task>`` otherwise."""
    return "unimodal" if pretrain_task == "labels" else f"unimodal-{pretrain_task}"


def unimodal_run_dir(cfg: UnimodalConfig) -> Path:
    return run_dir(cfg.runs_dir, cfg.dataset, unimodal_folder(cfg.pretrain_task)) / cfg.modality


class UnimodalClassifier(nn.Module):
    def __init__(self, encoder: ModalityEncoder, modality: str, num_classes: int, task: Task) -> None:
        super().__init__()
        self.encoder, self.modality, self.task = encoder, modality, task
        self.head = nn.Linear(encoder.hidden_size, num_classes)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        mb = batch.modalities[self.modality]
        cls = self.encoder(mb.inputs)[:, 0]
        logits = self.head(cls)
        labels = batch.labels[mb.rows]
        if self.task == "multi-label":
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = nn.functional.cross_entropy(logits, labels)
        return {"logits": logits, "loss": loss}


def _make_encoder(cfg: UnimodalConfig, data: MultimodalDataset) -> tuple[ModalityEncoder, bool]:
    """(encoder, is_pretrained)."""
    spec = data.modalities[cfg.modality]
    if cfg.encoder is not None:
        return load_encoder(cfg.encoder, spec.type), True
    if spec.type == "text":
        return load_encoder(minilm_dir(), "text"), True
    hidden = cfg.hidden_size
    if hidden is None and any(m.type == "text" for m in data.modalities.values()):
        # Match the pretrained text encoder so cross-modal tokens (CMPT proxies) share one width.
        hidden = load_encoder(minilm_dir(), "text").hidden_size
    patch = cfg.patch_size or (DATASET_PATCH.get(data.name) if spec.type == "image" else None)
    config = default_encoder_config(spec.type, spec.preprocess, cfg.size, hidden, patch_size=patch)
    return build_encoder(spec.type, config), False


def pretrain_unimodal(cfg: UnimodalConfig) -> dict[str, Any]:
    """Train, evaluate on test, save the encoder; returns the metrics written to metrics.json."""
    seed_everything(cfg.seed)
    base = load_dataset(cfg.dataset, cfg.data_dir, limit=cfg.limit, seed=cfg.seed)
    data = relabel_for_pretraining(base, cfg.pretrain_task)
    if cfg.modality not in data.modalities:
        raise ConfigError(f"dataset {data.name!r} has no modality {cfg.modality!r}; it has {data.modality_names}")
    out = cfg.out or unimodal_run_dir(cfg)
    has = {s: [x for x in data.split(s) if x.inputs.get(cfg.modality) is not None] for s in ("train", "val", "test")}
    if not has["train"]:
        raise ConfigError(f"no training sample of {data.name!r} has modality {cfg.modality!r}")
    spec = data.modalities[cfg.modality]
    encoder, pretrained = _make_encoder(cfg, data)
    if cfg.encoder is not None:  # the preprocessing the user's checkpoint was trained with
        spec = encoder_spec(spec, cfg.encoder, encoder, [x.inputs.get(cfg.modality) for x in has["train"]])
    model = UnimodalClassifier(encoder, cfg.modality, data.num_classes, data.task)
    collate = Collate({cfg.modality: spec}, data.task, data.num_classes)
    has["train"], has["val"], carved = ensure_validation_split(has["train"], has["val"], cfg.val_fraction, cfg.seed)
    # One warm-up epoch at 0.1x lr (the loop's default), kept as a share of the run if it is lengthened.
    budget = plan_budget(len(has["train"]), cfg.batch_size, process_state().num_processes, cfg.epochs,
                         1 if cfg.epochs > 1 else 0, cfg.min_steps)
    if budget.note and process_state().is_main_process:
        print(budget.note, flush=True)
    loop_cfg = LoopConfig(epochs=budget.epochs, warmup_epochs=budget.warmup_epochs, batch_size=budget.batch_size,
                          seed=cfg.seed, resume=cfg.resume, progress=cfg.progress,
                          lr=cfg.lr or (PRETRAINED_LR if pretrained else SCRATCH_LR))
    result = train_loop(model, has["train"], has["val"], collate, data.task, loop_cfg, out / "checkpoints")
    test_logits, test_labels = predict_logits(model, has["test"], collate)
    started = time.perf_counter()
    metrics = {
        "dataset": data.name, "modality": cfg.modality, "modality_type": spec.type, "task": data.task,
        "pretrain_task": cfg.pretrain_task, "labels": list(data.labels),
        "pretrained_from": cfg.encoder or (str(minilm_dir()) if spec.type == "text" else None),
        "num_samples": {k: len(v) for k, v in has.items()}, "val_carved_from_train": carved,
        "test": task_metrics(data.task, test_logits, test_labels),
        "best_epoch": result.best_epoch, "best_val": result.best_score,
        "epochs": budget.epochs, "budget_note": budget.note, "train_wall_time_s": round(result.wall_time_s, 2),
        "resumed_from_epoch": result.resumed_from_epoch,
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "history": result.history,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
    }
    state = process_state()
    if state.is_main_process and cfg.pretrain_task != "labels":
        # The downstream labels' linear probe for the methods that start from the unimodal heads, on the
        # same samples (ids) the encoder was trained and validated on; the encoder stays frozen.
        from train.recipes.label_probe import fit_label_probe

        by_id = {x.id: x for split in base.splits.values() for x in split}
        metrics["label_probe"] = fit_label_probe(encoder, spec, {k: [by_id[x.id] for x in v] for k, v in has.items()},
                                                 base.task, base.num_classes, out, seed=cfg.seed)
    if state.is_main_process:  # one writer under several processes
        with atomic_dir(out / "encoder") as tmp:
            encoder.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(out / "head.safetensors"))
        write_json_atomic(out / "modality.json", {"name": spec.name, "type": spec.type, "preprocess": spec.preprocess,
                                                  "labels": data.labels, "task": data.task,
                                                  "pretrain_task": cfg.pretrain_task})
        metrics["save_time_s"] = round(time.perf_counter() - started, 2)
        write_json_atomic(out / "metrics.json", metrics)
    state.wait_for_everyone()
    return metrics


