"""MLA: alternating unimodal adaptation, RLS head-gradient projection, per-sample entropy fusion (Zhang et al., CVPR 2024).

Paper -> code (the paper is stated for any M; av-digits has M = 2):
- Sec. 3.1: encoders h_m (here: the final CLS token of each pretrained encoder) and ONE
  shared linear head g (``self.head``); f_m = g o h_m.
- Eq. 1-2 / Alg. 1 lines 2-4 (``train_step``): within each batch, for each modality m in
  turn (sorted order, round robin), the task loss of g(h_m(x)) over the rows that have m,
  then its own backward and optimiser step. The forward goes through ``ctx.forward(batch,
  modality=m)`` so a data-parallel wrapper all-reduces it; it leaves every other encoder
  unused, which the loop's unused-parameter detection allows.
- Eq. 4-5 / Alg. 1 line 5 (``rls_update``): h_bar = detached mean of h_m over its rows in
  the batch; k = P h_bar; P <- P - k k^T / (alpha + h_bar^T k) (a scalar denominator);
  P_0 = I. Closed form: P_t = (I + alpha^-1 sum h_bar h_bar^T)^-1.
- Eq. 3 / Alg. 1 line 6 (``project_head_grad``): from the second modality step of the run
  on, W.grad <- W.grad P_t before the step (P acts on the head's input dimension; P is
  symmetric). Alg. 1 computes P_t (with the current h_bar) before line 6, so the current
  step's gradient is projected with P_t (``hgm_include_current=False``: with P_{t-1}, the
  reading of the paper's prose "orthogonal to ... the previous modality").
- Eq. 6-8 (``entropy_fuse``): per sample r, e_m = -sum_c p log p (nats) of softmax f_m;
  lambda = softmax over the present modalities of -e_m; fused logits = sum lambda_m f_m.
  A single present modality gives f_A (lambda = 1). Since g is linear and sum lambda = 1,
  the fused logits equal g(sum lambda_m h_m): that sum is the fused embedding.

Choices the paper leaves open (../shared/METHODS.md section 4 flags them):
- The bias of g is never projected (Eq. 3 writes one phi; P is s x s, the input width).
- h_bar is the batch mean (Eq. 4 averages over D_m; the public code uses the batch too).
  Under data parallelism the per-process sums are all-reduced, so every process keeps the
  same P.
- alpha is not given in the paper. ``alpha_schedule="epoch"`` follows the public code,
  alpha = alpha * 0.1^(batch index / batches per epoch), 0.1 -> 0.01 within each epoch;
  ``"constant"`` keeps alpha fixed. P only shrinks, so the head's effective step shrinks
  with it: ``train_step`` logs tr(P) (``trace_P``), which the loop records per epoch.
- Optimiser: SGD, momentum 0.9 (paper, App. A.3); weight decay 1e-4 (public code); lr
  = the loop's lr (the paper's 1e-3 is the CLI default) times ``lr_scale`` = 10, because
  the paper's 100 epochs are 10 here (the warm-up epochs run at the paper's 1e-3). Adam's
  per-coordinate scaling would undo the projection. The loop's schedule (warm-up, then
  polynomial decay) replaces the paper's x0.1 step decay "at regular intervals".
- Encoders: the paper fine-tunes them all (``encoders="full"``); frozen / LoRA / BitFit
  are options (``train.methods.base.adapt_encoders``).
- The loss of ``forward(batch)`` without ``modality`` (not used by ``train_step``; it keeps
  MLA trainable by a generic loop) is the sum of the per-modality losses of Eq. 2.
- Gradient clipping (the loop's) is applied after the projection, to the update actually taken.

Where the public code differs (follow the paper): its projection never runs (the parameter
name test never matches), it divides P by its Frobenius norm, and it computes the fusion
entropy over the batch axis (one lambda per batch). Here the projection runs and the
entropy is per sample, over classes.

BEYOND PAPER: for multi-label data the entropy of a modality is the mean over labels of
the binary entropy of sigmoid(f_m) (the loss is BCE). ``hgm=False`` and ``entropy_fusion=False``
(plain mean of the present modalities' logits) give the ablation rows of Table 3.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from runtime.patterns import Pattern
from train.data.types import Task
from train.engine.batches import Batch
from train.methods.base import (
    DatasetInfo,
    MultimodalModel,
    PatternModule,
    StepContext,
    adapt_encoders,
    present_matrix,
    scatter_rows,
    shared_width,
    task_loss,
)
from train.methods.registry import register


@dataclass
class MLAConfig:
    encoders: str = "full"  # frozen | lora | bitfit | full (the paper fine-tunes)
    lora_rank: int = 1
    lora_alpha: float = 1.0
    lora_dropout: float = 0.1
    hgm: bool = True  # head-gradient modification (Eq. 3-5)
    hgm_include_current: bool = True  # project with P_t (Alg. 1) rather than P_{t-1}
    alpha: float = 0.1  # RLS regulariser of Eq. 5
    alpha_schedule: str = "epoch"  # "epoch": alpha * 0.1^(batch/len(loader)) (public code); "constant"
    entropy_fusion: bool = True  # Eq. 6-8; False: the plain mean of the present modalities' logits
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # SGD peak lr = loop lr * lr_scale: 1e-3 (the CLI default and the paper's lr) x 10. The paper
    # trains 100 epochs at 1e-3; in the 10-epoch budget the 5 warm-up epochs run at 1e-3 and the
    # rest decays from 1e-2 (at 1e-3 peak the head and encoders barely move in 10 epochs).
    lr_scale: float = 10.0


ALPHA_SCHEDULES = ("epoch", "constant")


# ---- the paper's equations as functions -------------------------------------------------
def rls_update(p: Tensor, h_bar: Tensor, alpha: float) -> Tensor:
    """Eq. 5: P - k k^T / (alpha + h_bar^T k) with k = P h_bar (scalar denominator); symmetrised."""
    k = p @ h_bar
    new = p - torch.outer(k, k) / (alpha + h_bar @ k)
    return (new + new.T) / 2  # exact arithmetic keeps P symmetric; floats drift


def project_head_grad(weight: nn.Parameter, p: Tensor) -> None:
    """Eq. 3 for W in R^{C x s}: W.grad <- W.grad P (P acts on the input dimension)."""
    if weight.grad is not None:
        weight.grad.copy_(weight.grad @ p.to(weight.grad.dtype))


def modality_entropy(task: Task, logits: Tensor) -> Tensor:
    """(n,) Eq. 7 in nats: entropy of softmax over classes; multi-label: mean binary entropy (BEYOND PAPER)."""
    if task == "multi-label":
        log_p, log_q = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
        return -(log_p.exp() * log_p + log_q.exp() * log_q).mean(dim=-1)
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def fusion_weights(task: Task, logits: Sequence[Tensor], present: Tensor | None = None,
                   entropy: bool = True) -> Tensor:
    """(n, M) lambda of Eq. 8 per row; ``present`` (n, M) bool restricts the softmax to present modalities.

    ``entropy=False``: uniform weights over the present modalities (the plain mean).
    """
    e = torch.stack([modality_entropy(task, z) for z in logits], dim=1)
    scores = -e if entropy else torch.zeros_like(e)
    if present is not None:
        scores = scores.masked_fill(~present, float("-inf"))
    return torch.softmax(scores, dim=1)


def entropy_fuse(task: Task, logits: Sequence[Tensor], features: Sequence[Tensor], present: Tensor | None = None,
                 entropy: bool = True) -> tuple[Tensor, Tensor]:
    """Eq. 6: (sum_m lambda_m f_m, sum_m lambda_m h_m) per row; absent entries may hold any finite value."""
    lam = fusion_weights(task, logits, present, entropy)
    fused = sum(lam[:, i : i + 1] * z for i, z in enumerate(logits))
    embedding = sum(lam[:, i : i + 1] * h for i, h in enumerate(features))
    return fused, embedding  # type: ignore[return-value]


@register("mla")
class MLA(MultimodalModel):
    config_class = MLAConfig

    def __init__(self, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: MLAConfig) -> None:
        super().__init__(info, encoders, config)
        hidden = shared_width(self.encoders, "MLA's one shared head g reads every modality's features")
        if config.alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(f"unknown alpha_schedule {config.alpha_schedule!r}; choose one of {list(ALPHA_SCHEDULES)}")
        if config.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (Eq. 5's denominator), got {config.alpha}")
        adapt_encoders(self.encoders, config.encoders, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                       lora_dropout=config.lora_dropout)
        self.head = nn.Linear(hidden, self.num_classes)
        # Buffers, so that a resumed run continues the same projection (checkpoints hold buffers).
        self.register_buffer("hgm_p", torch.eye(hidden))
        self.register_buffer("hgm_steps", torch.zeros((), dtype=torch.long))

    # ---- forward ---------------------------------------------------------------------------
    def features(self, modality: str, inputs: dict[str, Tensor]) -> Tensor:
        return self.encoders[modality](inputs)[:, 0]

    def forward(self, batch: Batch, modality: str | None = None) -> dict[str, Tensor]:
        if modality is not None:
            return self._modality_forward(batch, modality)
        device = self.head.weight.device
        present = present_matrix(batch, self.modalities, device)
        feats, logits, losses = [], [], []
        for m in self.modalities:
            mb = batch.modalities.get(m)
            if mb is None:
                feats.append(self.head.weight.new_zeros(batch.size, self.head.in_features))
                logits.append(self.head.weight.new_zeros(batch.size, self.num_classes))
                continue
            h = self.features(m, mb.inputs)
            z = self.head(h)
            if self.training:
                losses.append(task_loss(self.task, z, batch.labels[mb.rows.to(device)]))
            feats.append(scatter_rows(h, mb.rows, batch.size))
            logits.append(scatter_rows(z, mb.rows, batch.size))
        fused, embedding = entropy_fuse(self.task, logits, feats, present, self.config.entropy_fusion)
        out = {"logits": fused, "embedding": embedding}
        if self.training:
            out["loss"] = torch.stack(losses).sum()
        return out

    def _modality_forward(self, batch: Batch, modality: str) -> dict[str, Tensor]:
        """Eq. 2 for one modality: loss over the rows that have it, and its features (for h_bar)."""
        mb = batch.modalities[modality]
        h = self.features(modality, mb.inputs)
        z = self.head(h)
        out = {"logits": z, "features": h}
        out["loss"] = task_loss(self.task, z, batch.labels[mb.rows.to(z.device)])
        return out

    # ---- training ----------------------------------------------------------------------------
    def make_optimizer(self, params: Sequence[nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=cfg.lr * self.config.lr_scale, momentum=self.config.momentum,
                               weight_decay=self.config.weight_decay)

    def alpha_at(self, ctx: StepContext) -> float:
        if self.config.alpha_schedule == "constant":
            return self.config.alpha
        batch_index = ctx.step % max(1, ctx.steps_per_epoch)
        return self.config.alpha * 0.1 ** (batch_index / max(1, ctx.steps_per_epoch))

    def batch_mean(self, h: Tensor) -> Tensor:
        """Eq. 4 over this batch's rows; summed over processes under data parallelism."""
        total = torch.cat([h.detach().sum(dim=0), h.new_full((1,), h.shape[0])]).to(self.hgm_p.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return total[:-1] / total[-1].clamp(min=1)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """Alg. 1 lines 2-6 for every modality present in the batch, in turn."""
        alpha = self.alpha_at(ctx)
        logs: dict[str, float] = {}
        total = 0.0
        for m in self.modalities:
            mb = batch.modalities.get(m)
            if mb is None or len(mb.rows) == 0:
                continue
            out = ctx.forward(batch, modality=m)
            ctx.backward(out["loss"])
            if self.config.hgm:
                with torch.no_grad():
                    previous = self.hgm_p.clone()
                    self.hgm_p.copy_(rls_update(self.hgm_p, self.batch_mean(out["features"]), alpha))
                    if int(self.hgm_steps) > 0 and self.head.weight.requires_grad:
                        project_head_grad(self.head.weight, self.hgm_p if self.config.hgm_include_current else previous)
                    self.hgm_steps += 1
            ctx.clip()
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            loss = float(out["loss"].detach())
            logs[f"{m}_loss"] = loss
            total += loss
        logs["loss"] = total
        logs["trace_P"] = float(torch.trace(self.hgm_p))
        logs["alpha"] = alpha
        return logs

    def pattern_module(self, pattern: Pattern) -> "MLABranch":
        return MLABranch(self, self.check_pattern(pattern))


class MLABranch(PatternModule):
    """Present encoders -> shared head per modality -> per-sample entropy-weighted sum (Eq. 6-8)."""

    def __init__(self, model: MLA, pattern: Pattern) -> None:
        super().__init__(pattern, model.encoders, model.task)
        self.head = model.head
        self.entropy_fusion = bool(model.config.entropy_fusion)

    def fuse(self, inputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        feats = [self.encoders[m](inputs[m])[:, 0] for m in self.modalities]
        logits = [self.head(h) for h in feats]
        if len(feats) == 1:  # lambda = 1
            return logits[0], feats[0]
        return entropy_fuse(self.task, logits, feats, None, self.entropy_fusion)
