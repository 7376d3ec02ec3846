"""The one training loop (HF Accelerate), shared by unimodal pretraining and every method.

A model plugs in by implementing ``forward(batch: Batch) -> dict`` returning
``"logits"`` (B, C) and, in training mode, ``"loss"``. It may also implement
``train_step(batch, ctx)`` and ``make_optimizer(params, cfg)`` (see
``train.methods.base.StepContext``); the loop calls them on the unwrapped model and
hands it the wrapped model's forward, so data parallelism keeps working.

Several processes (``accelerate launch`` / ``torchrun``): each process sees
1/num_processes of every epoch's batches. **One schedule step is one batch of one
process**, so the schedule's length is ``epochs * len(prepared loader)`` and the
scheduler is stepped by the loop, once per batch, never through ``accelerator.prepare``
(whose wrapper would advance it num_processes times per call). Validation runs the
whole validation set on every process, so every rank picks the same epoch without a
gather; checkpoints and the best weights are written by the main process only.
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
from accelerate import Accelerator, DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from train.engine.batches import Batch, Collate
from train.engine.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from train.data.types import Sample, Task
from train.engine.metrics import headline, task_metrics
from train.engine.schedule import poly_warmup
from train.engine.seeding import epoch_generator, seed_everything

BEST = "best.safetensors"
CHECKPOINT_EVERY_S = 30.0


@dataclass
class LoopConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.02
    eps: float = 1e-8
    warmup_epochs: float = 1
    grad_clip: float | None = 1.0
    seed: int = 0
    resume: bool = True
    progress: bool = True
    # "best": keep the epoch with the best validation score (``validate``'s headline);
    # "last": keep the last epoch.
    keep: str = "best"


@dataclass
class LoopResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    wall_time_s: float = 0.0
    resumed_from_epoch: int | None = None
    steps_per_epoch: int = 0
    total_steps: int = 0
    num_processes: int = 1


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


Validate = Callable[[torch.nn.Module], dict[str, float]]


def train_loop(
    model: torch.nn.Module,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    collate: Collate,
    task: Task,
    cfg: LoopConfig,
    ckpt_dir: Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    validate: Validate | None = None,
) -> LoopResult:
    """Train the parameters with ``requires_grad``; keep the best (or last) epoch.

    ``validate(model)`` scores the model in eval mode (default: ``forward`` on
    ``val_samples`` as given); its ``headline(task)`` entry picks the kept epoch.
    Resumes from ``ckpt_dir/last`` when present (and ``cfg.resume``), also on a different
    number of processes. On return the model holds the kept epoch's weights.
    """
    if cfg.keep not in ("best", "last"):
        raise ValueError(f"LoopConfig.keep must be 'best' or 'last', got {cfg.keep!r}")
    if not train_samples:
        raise ValueError("no training samples")
    seed_everything(cfg.seed)
    # Unused-parameter detection on: the encoders we wrap carry tables some modalities never use
    # (BERT's word embeddings under projected audio frames), and methods may run one modality per
    # forward; without it data-parallel training stops at the second step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(kwargs_handlers=[ddp])
    params = [p for p in model.parameters() if p.requires_grad]
    make_optimizer = getattr(model, "make_optimizer", None)
    optimizer = (make_optimizer(params, cfg) if make_optimizer is not None
                 else torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps))
    if validate is None:
        def validate(m: torch.nn.Module) -> dict[str, float]:
            logits, labels = predict_logits(m, val_samples, collate, accelerator=accelerator)
            return task_metrics(task, logits, labels)
    result = LoopResult(num_processes=accelerator.num_processes)
    start_epoch = 0
    last, best_path = Path(ckpt_dir) / "last", Path(ckpt_dir) / BEST
    state: dict[str, Any] | None = None
    if cfg.resume and has_checkpoint(last):
        state = load_checkpoint(last, model, optimizer)
        start_epoch = state["epoch"] + 1
        result.history, result.best_epoch, result.best_score = state["history"], state["best_epoch"], state["best_score"]
        result.resumed_from_epoch = state["epoch"]
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    train_step = getattr(unwrapped, "train_step", None)
    metric = headline(task)

    def loader_for(epoch: int) -> Any:
        return accelerator.prepare(
            DataLoader(list(train_samples), batch_size=cfg.batch_size, shuffle=True,
                       generator=epoch_generator(cfg.seed, epoch), collate_fn=collate))

    steps_per_epoch = len(loader_for(0))  # per process, after sharding
    result.steps_per_epoch, result.total_steps = steps_per_epoch, cfg.epochs * steps_per_epoch
    schedule = getattr(unwrapped, "lr_factor", None) or poly_warmup  # a method may bring its paper's schedule
    factor = schedule(result.total_steps, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    step = start_epoch * steps_per_epoch
    if step:
        with warnings.catch_warnings():  # replaying steps before any optimizer.step() is intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):  # LambdaLR has no pickle-free state; replay its steps
                scheduler.step()

    def clip() -> None:
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)

    def default_step(batch: Batch, ctx: Any) -> dict[str, float]:
        out = model(batch)
        accelerator.backward(out["loss"])
        clip()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": float(out["loss"].detach())}

    started = last_saved = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(cfg.seed + epoch)  # dropout masks replay identically after a resume
        loader = loader_for(epoch)
        model.train()
        losses: list[float] = []
        extras: dict[str, list[float]] = {}  # a train_step's other scalar logs, averaged per epoch
        lr_first = scheduler.get_last_lr()[0]
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and accelerator.is_local_main_process))
        for batch in bar:
            batch = to_device(batch, accelerator.device)
            if train_step is not None:
                from train.methods.base import StepContext

                ctx = StepContext(forward=model, optimizer=optimizer, backward=accelerator.backward, clip=clip,
                                  step=step, epoch=epoch, steps_per_epoch=steps_per_epoch)
                logs = train_step(batch, ctx)
            else:
                logs = default_step(batch, None)
            scheduler.step()
            step += 1
            losses.append(float(logs["loss"]))
            for key, value in logs.items():
                if key != "loss":
                    extras.setdefault(key, []).append(float(value))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        scores = validate(model)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                  "lr_first": lr_first, "lr": scheduler.get_last_lr()[0], "steps": step,
                  "batches": len(losses), **{f"train_{k}": float(np.mean(v)) for k, v in extras.items()},
                  **{f"val_{k}": v for k, v in scores.items()}}
        result.history.append(record)
        better = scores.get(metric, -math.inf) > result.best_score
        if cfg.keep == "last" or better:
            result.best_score, result.best_epoch = scores.get(metric, -math.inf), epoch
            if accelerator.is_main_process:
                best_path.parent.mkdir(parents=True, exist_ok=True)
                save_file(_trainable_state(unwrapped), str(best_path))
        # The resume point costs a full write of weights and optimiser state: at most every
        # CHECKPOINT_EVERY_S seconds, and always after the last epoch (many short epochs on small data).
        due = time.perf_counter() - last_saved >= CHECKPOINT_EVERY_S or epoch == cfg.epochs - 1
        if accelerator.is_main_process and due:
            last_saved = time.perf_counter()
            save_checkpoint(last, unwrapped, optimizer, {
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
