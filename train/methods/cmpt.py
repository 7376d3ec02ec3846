"""CMPT: cross-modal proxy tokens (Reza et al., 2025), generalised to M >= 2 modalities.

Paper (M = 2), sections 3.2-3.5 and Table 5:
- frozen pretrained encoders; rank-1 LoRA (alpha 1, dropout 0.1) on q, k, v, out of
  every attention block;
- one learnable proxy token per modality, placed before CLS (Eq. 2); plain attention
  (CLS and inputs may attend to it, it attends to everything);
- L_align (Eq. 4): MSE(final proxy of m1, final CLS of m2) + the reverse, averaged over
  samples that have both modalities in the data; no stop-gradient in the paper;
- Eq. 5 gating: a missing modality's CLS is replaced by the present modality's proxy,
  then additive fusion and one linear head; L = L_task + 0.2 L_align (Eq. 7);
- random modality dropout on complete samples: keep both or drop one.

Beyond the paper: modality s carries one proxy per target t != s (M - 1 tokens before
CLS, targets in sorted order). A missing t is approximated by the mean of the proxies
s->t over the present s. Alignment runs over every ordered pair (s, t) on samples with
both, and is divided by M - 1 so that M = 2 is exactly Eq. 4.

Placeholders: the paper feeds a placeholder (zeros / empty text) for a modality missing
in the data, but Eq. 5 discards both its CLS and its proxy and Eq. 4 skips the sample, so
the placeholder never reaches the loss or the prediction. Skipping the missing encoder is
therefore the same function, minus wasted compute; that is what we do.

Diagnostic (not in the paper): ``proxy_r2``, logged per epoch as ``train_proxy_r2``, is how
much of the target CLS's variance its proxy explains, 1 - sum ||p - c||^2 / sum ||c - mean c||^2
over the batch's rows that have both modalities (mean over ordered pairs, then over the
epoch's batches). 1 is a perfect stand-in; 0 is no better than the batch-mean CLS; negative
is worse than that.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from runtime.patterns import Pattern
from train.engine.batches import Batch
from train.methods.base import (
    DatasetInfo,
    MultimodalModel,
    PatternModule,
    freeze_and_adapt,
    present_matrix,
    sample_modality_dropout,
    scatter_rows,
    shared_width,
    task_loss,
)
from train.methods.registry import register


@dataclass
class CMPTConfig:
    lora_rank: int = 1
    lora_alpha: float = 1.0
    lora_dropout: float = 0.1
    align_weight: float = 0.2  # lambda in Eq. 7
    modality_dropout: bool = True
    detach_align_target: bool = False  # the paper backpropagates into both sides of the MSE
    proxy_init_std: float = 0.02


def cmpt_fuse(cls: Mapping[str, Tensor], proxies: Mapping[tuple[str, str], Tensor], modalities: Sequence[str]) -> Tensor:
    """Eq. 5 for one pattern: the present modalities are the keys of ``cls``.

    ``proxies[(s, t)]`` is source s's final proxy token for target t. Each modality
    contributes its CLS if present, else the mean of the present sources' proxies for
    it; the contributions are summed (additive fusion).
    """
    present = [m for m in modalities if m in cls]
    if not present:
        raise ValueError("cmpt_fuse needs at least one present modality")
    fused: Tensor | None = None
    for t in modalities:
        if t in cls:
            term = cls[t]
        else:
            term = proxies[(present[0], t)]
            for s in present[1:]:
                term = term + proxies[(s, t)]
            if len(present) > 1:
                term = term / len(present)
        fused = term if fused is None else fused + term
    assert fused is not None
    return fused


def cmpt_fuse_masked(cls: Mapping[str, Tensor], proxies: Mapping[tuple[str, str], Tensor], present: Tensor,
                     modalities: Sequence[str]) -> Tensor:
    """Eq. 5 for a batch of mixed patterns; ``present`` (B, M) bool in ``modalities`` order.

    ``cls``/``proxies`` hold (B, H) tensors (any value where absent, zeros by convention);
    a modality absent from the whole batch may be left out of the dicts.
    """
    ref = next(iter(cls.values()))
    count = present.sum(dim=1, keepdim=True).clamp(min=1).to(ref.dtype)
    zero = torch.zeros_like(ref)
    fused: Tensor | None = None
    for i, t in enumerate(modalities):
        approx: Tensor | None = None
        for j, s in enumerate(modalities):
            if s == t or (s, t) not in proxies:
                continue
            part = torch.where(present[:, j : j + 1], proxies[(s, t)], zero)
            approx = part if approx is None else approx + part
        approx = zero if approx is None else approx / count
        term = torch.where(present[:, i : i + 1], cls.get(t, zero), approx)
        fused = term if fused is None else fused + term
    assert fused is not None
    return fused


def alignment_loss(cls: Mapping[str, Tensor], proxies: Mapping[tuple[str, str], Tensor], present: Tensor,
                   modalities: Sequence[str], detach_target: bool = False) -> Tensor:
    """Eq. 4 over ordered pairs: mean over rows having s and t of MSE(proxy s->t, CLS t), / (M - 1)."""
    ref = next(iter(cls.values()))
    total = ref.new_zeros(())
    for i, t in enumerate(modalities):
        for j, s in enumerate(modalities):
            if s == t or (s, t) not in proxies or t not in cls:
                continue
            both = (present[:, i] & present[:, j]).to(ref.dtype)
            target = cls[t].detach() if detach_target else cls[t]
            mse = (proxies[(s, t)] - target).pow(2).mean(dim=-1)  # nn.MSELoss per sample
            total = total + (mse * both).sum() / both.sum().clamp(min=1)
    return total / max(1, len(modalities) - 1)


@torch.no_grad()
def proxy_r2(cls: Mapping[str, Tensor], proxies: Mapping[tuple[str, str], Tensor], present: Tensor,
             modalities: Sequence[str]) -> Tensor | None:
    """R^2 of each proxy s->t against CLS t over rows having both, averaged over the pairs with >= 2 rows.

    None when no pair has two such rows (the batch is then left out of the epoch's mean).
    """
    values = []
    for i, t in enumerate(modalities):
        for j, s in enumerate(modalities):
            if s == t or (s, t) not in proxies or t not in cls:
                continue
            both = present[:, i] & present[:, j]
            if int(both.sum()) < 2:
                continue
            c, p = cls[t][both].float(), proxies[(s, t)][both].float()
            sst = (c - c.mean(dim=0)).pow(2).sum()
            values.append(1 - (p - c).pow(2).sum() / sst.clamp(min=1e-12))
    return torch.stack(values).mean() if values else None


@register("cmpt")
class CMPT(MultimodalModel):
    config_class = CMPTConfig

    def __init__(self, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: CMPTConfig) -> None:
        super().__init__(info, encoders, config)
        hidden = shared_width(self.encoders, "CMPT proxies of one modality stand in for another modality's CLS")
        if len(self.modalities) < 2:
            raise ValueError(f"CMPT needs at least two modalities; {info.name!r} has {self.modalities}")
        freeze_and_adapt(self.encoders, config.lora_rank, config.lora_alpha, config.lora_dropout)
        # targets[s]: the modalities whose CLS the proxy rows of s approximate, in row order.
        self.targets: dict[str, list[str]] = {s: [t for t in self.modalities if t != s] for s in self.modalities}
        self.proxies = nn.ParameterDict({
            s: nn.Parameter(torch.randn(len(self.targets[s]), hidden) * config.proxy_init_std) for s in self.modalities
        })
        self.head = nn.Linear(hidden, self.num_classes)

    def encode(self, modality: str, inputs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """(final CLS (n, H), {target: final proxy (n, H)}) for one modality's rows."""
        hidden = self.encoders[modality](inputs, prefix=self.proxies[modality])
        num_prefix = len(self.targets[modality])
        return hidden[:, num_prefix], {t: hidden[:, j] for j, t in enumerate(self.targets[modality])}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        device = self.head.weight.device
        in_data = present_matrix(batch, self.modalities, device)
        cls: dict[str, Tensor] = {}
        proxies: dict[tuple[str, str], Tensor] = {}
        for m in self.modalities:
            mb = batch.modalities.get(m)
            if mb is None:
                continue
            c, p = self.encode(m, mb.inputs)
            cls[m] = scatter_rows(c, mb.rows, batch.size)
            for t, v in p.items():
                proxies[(m, t)] = scatter_rows(v, mb.rows, batch.size)
        use = in_data
        if self.training and self.config.modality_dropout:
            use = sample_modality_dropout(in_data)
        fused = cmpt_fuse_masked(cls, proxies, use, self.modalities)
        logits = self.head(fused)
        out = {"logits": logits, "embedding": fused}
        if self.training:
            # Alignment follows availability in the data (Eq. 4's D_c), not the dropout draw.
            align = alignment_loss(cls, proxies, in_data, self.modalities, self.config.detach_align_target)
            task = task_loss(self.task, logits, batch.labels)
            out.update(loss=task + self.config.align_weight * align, task_loss=task.detach(), align_loss=align.detach())
            r2 = proxy_r2(cls, proxies, in_data, self.modalities)
            if r2 is not None:
                out["proxy_r2"] = r2
        return out

    def pattern_module(self, pattern: Pattern) -> "CMPTBranch":
        return CMPTBranch(self, self.check_pattern(pattern))


class CMPTBranch(PatternModule):
    """Present encoders (with their own proxies) -> Eq. 5 -> head. Nothing of absent modalities."""

    def __init__(self, model: CMPT, pattern: Pattern) -> None:
        super().__init__(pattern, model.encoders, model.task)
        self.all_modalities = list(model.modalities)
        self.targets = {m: list(model.targets[m]) for m in self.modalities}
        self.proxies = nn.ParameterDict({m: model.proxies[m] for m in self.modalities})
        self.head = model.head

    def fuse(self, inputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        cls: dict[str, Tensor] = {}
        proxies: dict[tuple[str, str], Tensor] = {}
        for m in self.modalities:
            hidden = self.encoders[m](inputs[m], prefix=self.proxies[m])
            cls[m] = hidden[:, len(self.targets[m])]
            for j, t in enumerate(self.targets[m]):
                proxies[(m, t)] = hidden[:, j]
        fused = cmpt_fuse(cls, proxies, self.all_modalities)
        return self.head(fused), fused
