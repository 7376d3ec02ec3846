"""The one training loop (HF Accelerate), shared by unimodal pretraining and every method.

A model plugs in by implementing ``forward(batch: Batch) -> dict`` returning
``"logits"`` (B, C) and, in training mode, ``"loss"``. Going through
``forward`` (not custom methods) keeps it working under ``accelerate launch``
where the model is wrapped for data parallelism.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from train.batches import Batch, Collate
from train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from train.data.types import Sample, Task
from train.metrics import headline, task_metrics
from train.schedule import poly_warmup
from train.seeding import epoch_generator, seed_everything

BEST = "best.safetensors"


@dataclass
class LoopConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.02
    eps: float = 1e-8
    warmup_epochs: int = 1
    grad_clip: float | None = 1.0
    seed: int = 0
    resume: bool = True
    progress: bool = True


@dataclass
class LoopResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    wall_time_s: float = 0.0
    resumed_from_epoch: int | None = None


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad} | {
        n: b.detach().clone().contiguous() for n, b in model.named_buffers()
    }


def predict_logits(
    model: torch.nn.Module, samples: Sequence[Sample], collate: Collate, batch_size: int = 128,
    accelerator: Accelerator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and encoded labels for ``samples``, in order, in eval mode."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = to_device(collate(samples[start : start + batch_size]), device)
            logits.append(model(batch)["logits"].float().cpu().numpy())
            labels.append(batch.labels.cpu().numpy())
    model.train(was_training)
    if not logits:
        return np.zeros((0, collate.num_classes), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    for mb in batch.modalities.values():
        mb.rows = mb.rows.to(device)
        mb.inputs = {k: v.to(device) for k, v in mb.inputs.items()}
    batch.labels = batch.labels.to(device)
    return batch


def train_loop(
    model: torch.nn.Module,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    collate: Collate,
    task: Task,
    cfg: LoopConfig,
    ckpt_dir: Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train the parameters with ``requires_grad``; keep the best epoch by validation metric.

    Resumes from ``ckpt_dir/last`` when present (and ``cfg.resume``). On return the
    model holds the best epoch's weights.
    """
    seed_everything(cfg.seed)
    accelerator = Accelerator()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
    steps_per_epoch = math.ceil(len(train_samples) / cfg.batch_size / accelerator.num_processes)
    factor = poly_warmup(cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    result = LoopResult()
    start_epoch = 0
    last, best_path = Path(ckpt_dir) / "last", Path(ckpt_dir) / BEST
    if cfg.resume and has_checkpoint(last):
        state = load_checkpoint(last, model, optimizer)
        start_epoch = state["epoch"] + 1
        result.history, result.best_epoch, result.best_score = state["history"], state["best_epoch"], state["best_score"]
        result.resumed_from_epoch = state["epoch"]
        with warnings.catch_warnings():  # replaying steps before any optimizer.step() is intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state["step"]):  # LambdaLR has no pickle-free state; replay its steps
                scheduler.step()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    metric = headline(task)
    started = time.perf_counter()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(cfg.seed + epoch)  # dropout masks replay identically after a resume
        loader = accelerator.prepare(
            DataLoader(list(train_samples), batch_size=cfg.batch_size, shuffle=True,
                       generator=epoch_generator(cfg.seed, epoch), collate_fn=collate)
        )
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and accelerator.is_local_main_process))
        for batch in bar:
            out = model(to_device(batch, accelerator.device))
            accelerator.backward(out["loss"])
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(out["loss"].detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        val_logits, val_labels = predict_logits(model, val_samples, collate, accelerator=accelerator)
        scores = task_metrics(task, val_logits, val_labels)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                  "lr": scheduler.get_last_lr()[0], **{f"val_{k}": v for k, v in scores.items()}}
        result.history.append(record)
        if scores.get(metric, -math.inf) > result.best_score:
            result.best_score, result.best_epoch = scores[metric], epoch
            if accelerator.is_main_process:
                best_path.parent.mkdir(parents=True, exist_ok=True)
                save_file(_trainable_state(accelerator.unwrap_model(model)), str(best_path))
        if accelerator.is_main_process:
            save_checkpoint(last, accelerator.unwrap_model(model), optimizer, {
                "epoch": epoch, "step": step, "history": result.history,
                "best_epoch": result.best_epoch, "best_score": result.best_score,
            })
        if on_epoch is not None and accelerator.is_local_main_process:
            on_epoch(record)
        accelerator.wait_for_everyone()
    result.wall_time_s = time.perf_counter() - started
    model = accelerator.unwrap_model(model)
    if best_path.is_file():
        model.load_state_dict(load_file(str(best_path)), strict=False)
    return result
