"""UME-MMA: uni-modal ensemble with missing-modality adaptation (Li, Du et al.), M >= 2.

Paper -> code (the paper's §3.3, §4.1, Fig. 2, App. B; ../shared/METHODS.md §2):
- Phase 1 (uni-modal models: encoder + own linear head, CE on every sample that has the
  modality) is ``mmedge train unimodal``; phase 2 starts from those encoders and heads
  (``uses_unimodal_heads``, ``load_unimodal_heads``). Built without heads (a saved run being
  rebuilt, the registry tests), ``__init__`` makes fresh heads of the same shape.
- Late fusion: f_m(x) = head_m(CLS of encoder_m(x)); the output is the average of the M
  per-modality logits, z = (1/M) sum_m f_m(x_m), trained with CE on z (``task_loss``: BCE for
  multi-label). The paper says "outputs"; averaging logits is METHODS.md's [R] choice.
- Encoders and heads are fine-tuned in phase 2 (the paper's default); ``freeze_encoders``
  trains the heads only (Table 4's "Freeze Encs", slightly worse there).
- Missing-modality augmentation (§3.3, Table 5): for M = 2, per sample with both modalities,
  drop A with probability p, drop B with p, keep both with 1 - 2p (p = 0.3: 0.3 / 0.3 / 0.4);
  both are never dropped. A dropped modality's encoder is fed the placeholder instead of the
  input: zeros for image / audio / time series, a blank text for text (§4.1). A sample missing a
  modality in the data is treated as augmented (§3.3): it gets the placeholder too.
- Placeholder: ``runtime.modality_spec.placeholder_raw(spec)`` through the runtime's own numpy
  preprocessing (``runtime.preprocess.make_preprocessor``), i.e. exactly the input of the
  bundle's "full graph with placeholders". Normalisation maps it to -mean/std, as it would map a
  real all-zero sensor value. Text: the empty string (the paper writes a single blank space; the
  tokenizer gives [CLS] [SEP] for both).

Choices the paper leaves open (said here, with what we do):
- Phase-2 learning rate: ``phase2_lr_ratio`` x ``--lr``, default 0.1. App. B's phase-2 lr is
  1e-4 in every audio-visual CNN setting; KS/AVE train the audio CNN at 1e-3 in phase 1 (ratio
  0.1), the video CNN at 1e-4 (ratio 1), AV-MNIST both at 1e-2 with SGD (ratio 0.01); the
  pretrained ViT/BERT settings keep the phase-1 lr (ratio 1). Our phase 1 trains scratch encoders
  at 1e-3 (AdamW, the CLI's default --lr), so 0.1 gives the paper's 1e-4. Measured on av-digits
  (seed 0, the CLI's 10 epochs with 5 warm-up epochs at 0.1x): with 0.01 (1e-5) the image-only
  branch was still climbing at the last epoch (mean validation accuracy over the patterns 0.944
  vs 0.977 with 0.1). We keep the loop's AdamW and schedule (the paper: SGD for CNNs, AdamW for ViT).
- A batch's dropped rows of one modality each get their own copy of the placeholder in training
  (each with its own dropout mask, as the paper's per-sample substitution); in eval mode the
  placeholder is encoded once and broadcast (the same value).
- fused_embedding (the paper has none): the mean over the M modalities of the final CLS, a
  placeholder's CLS standing in for an absent modality (aware: the mean over the present ones);
  when the encoders' widths differ, their concatenation in sorted modality order (absent: the
  placeholder's CLS, or zeros when aware).

- Encoder weights that no input reaches (a frame encoder's BERT word embeddings) stay frozen under
  full fine-tuning: they would get no gradient; ``encoder_adaptation`` still reports "full".

Per-pattern branches (beyond the paper's way of running, the same function):
- In eval mode the absent modality's placeholder logits f_B(x~_B) are a constant. The branch of
  pattern S computes z = (1/M) (sum_{m in S} f_m(x_m) + c), with c = sum_{m not in S} f_m(x~_m)
  computed once in ``pattern_module()`` (eval mode, no grad) and held as a buffer: the "only A"
  graph is 1/2 (f_A(x_A) + c_B) and holds nothing of encoder B. The bundle's full graph with
  placeholders is the paper's literal way; ``mmedge bench`` times the two.
- ``aware=true`` (§3.3 Discussion, footnote 1: when the model knows which modality is missing):
  z = mean over m in S of f_m(x_m); for M = 2, "only A" is f_A(x_A) alone. Training is the same
  (the paper's augmentation with placeholders); only the eval forward and the branches change.

BEYOND PAPER (M >= 3; the paper's experiments have M = 2): z averages the M per-modality logits
with placeholders for every absent one (aware: over the present ones); augmentation drops each
present modality independently with p and redraws a sample whose draw would drop all of them
(the paper's "exactly one drop" needs M p <= 1 and never yields the multi-drop patterns).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from runtime.modality_spec import placeholder_raw
from runtime.patterns import Pattern
from runtime.preprocess import make_preprocessor
from train.engine.batches import Batch
from train.methods.base import (
    DatasetInfo,
    MultimodalModel,
    PatternModule,
    adapt_encoders,
    present_matrix,
    scatter_rows,
    task_loss,
)
from train.methods.registry import register


@dataclass
class UMEMMAConfig:
    drop_prob: float = 0.3  # p per modality (Table 5); M = 2: drop A p, drop B p, complete 1 - 2p
    aware: bool = False  # branches average the present modalities only (no placeholder constants)
    freeze_encoders: bool = False  # Table 4 "Freeze Encs": phase 2 trains the heads only
    phase2_lr_ratio: float = 0.1  # phase-2 lr = --lr x this (App. B, audio-visual CNNs: 1e-3 -> 1e-4)


def sample_augmentation(present: Tensor, drop_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, M) bool: the modalities each row keeps; a dropped or absent one gets the placeholder.

    M = 2 (the paper): a row with both modalities keeps only the second with ``drop_prob``, only
    the first with ``drop_prob``, both otherwise; a row with one modality keeps it (never both
    dropped). M >= 3 (BEYOND PAPER): each present modality is dropped independently with
    ``drop_prob``; a row whose draw drops all of its modalities is drawn again.
    """
    rows, num = present.shape
    if num == 2:
        u = torch.rand(rows, generator=generator, device=present.device)
        drop = torch.stack([u < drop_prob, (u >= drop_prob) & (u < 2 * drop_prob)], dim=1)
        full = present.all(dim=1, keepdim=True)
        return present & ~(drop & full)
    keep = torch.zeros_like(present)
    todo = present.any(dim=1)
    while bool(todo.any()):
        draw = present & (torch.rand(present.shape, generator=generator, device=present.device) >= drop_prob)
        keep = torch.where(todo[:, None], draw, keep)
        todo = ~keep.any(dim=1) & present.any(dim=1)
    return keep


class PlaceholderInputs(nn.Module):
    """One modality's preprocessed placeholder (batch of 1), as non-persistent buffers."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.names = list(arrays)
        for name, value in arrays.items():
            self.register_buffer(name, torch.from_numpy(np.array(value, copy=True)), persistent=False)

    def batch(self, rows: int) -> dict[str, Tensor]:
        return {n: getattr(self, n).expand(rows, *getattr(self, n).shape[1:]) for n in self.names}


def fuse_features(features: Sequence[Tensor], concat: bool, count: Tensor | float) -> Tensor:
    """fused_embedding: the mean of per-modality features, or their concatenation (widths differ)."""
    if concat:
        return torch.cat(list(features), dim=-1)
    total = features[0]
    for f in features[1:]:
        total = total + f
    return total / count


@register("ume-mma")
class UMEMMA(MultimodalModel):
    config_class = UMEMMAConfig
    uses_unimodal_heads = True

    def __init__(self, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: UMEMMAConfig) -> None:
        super().__init__(info, encoders, config)
        num = len(self.modalities)
        if not 0.0 <= config.drop_prob < 1.0 or (num == 2 and 2 * config.drop_prob > 1.0):
            raise ValueError(f"drop_prob must be in [0, 1) (and at most 0.5 for two modalities, which are never "
                             f"both dropped); got {config.drop_prob}")
        if config.phase2_lr_ratio <= 0:
            raise ValueError(f"phase2_lr_ratio must be positive; got {config.phase2_lr_ratio}")
        adapt_encoders(self.encoders, "frozen" if config.freeze_encoders else "full")
        self.heads = nn.ModuleDict({m: nn.Linear(int(self.encoders[m].hidden_size), self.num_classes)
                                    for m in self.modalities})
        self.concat_features = len({int(e.hidden_size) for e in self.encoders.values()}) > 1
        # The runtime's preprocessing of the runtime's placeholder: what the placeholder graph is fed.
        self.placeholders = nn.ModuleDict({
            m: PlaceholderInputs(make_preprocessor(info.modalities[m].preprocess)([placeholder_raw(
                info.modalities[m].preprocess)])) for m in self.modalities})

    def load_unimodal_heads(self, heads: Mapping[str, nn.Module]) -> None:
        for m in self.modalities:
            mine, theirs = self.heads[m], heads[m]
            if tuple(theirs.weight.shape) != tuple(mine.weight.shape):
                raise ValueError(f"unimodal head of {m!r} is {tuple(theirs.weight.shape)}, this model needs "
                                 f"{tuple(mine.weight.shape)} (hidden {mine.in_features}, {self.num_classes} classes)")
            mine.load_state_dict(theirs.state_dict())

    def make_optimizer(self, params: Sequence[nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=cfg.lr * self.config.phase2_lr_ratio, weight_decay=cfg.weight_decay,
                                 eps=cfg.eps)

    def unimodal(self, modality: str, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(f_m logits (n, C), final CLS (n, H)) of the uni-modal model of ``modality``."""
        cls = self.encoders[modality](dict(inputs))[:, 0]
        return self.heads[modality](cls), cls

    def placeholder_outputs(self, modality: str, rows: int = 1) -> tuple[Tensor, Tensor]:
        """f_m and CLS of the placeholder: ``rows`` copies in training, one (broadcastable) in eval."""
        copies = rows if self.training else 1
        return self.unimodal(modality, self.placeholders[modality].batch(copies))

    @torch.no_grad()
    def placeholder_constants(self, modality: str) -> tuple[Tensor, Tensor]:
        """The eval-mode (1, C) logits and (1, H) CLS of ``modality``'s placeholder."""
        parts = [self.encoders[modality], self.heads[modality]]
        modes = [p.training for p in parts]
        try:
            for p in parts:
                p.eval()
            logits, cls = self.unimodal(modality, self.placeholders[modality].batch(1))
        finally:
            for p, mode in zip(parts, modes):
                p.train(mode)
        return logits.detach().clone(), cls.detach().clone()

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        device = self.heads[self.modalities[0]].weight.device
        size = batch.size
        in_data = present_matrix(batch, self.modalities, device)
        use = sample_augmentation(in_data, self.config.drop_prob) if self.training else in_data
        placeholders = self.training or not self.config.aware
        logits: Tensor | None = None
        features: list[Tensor] = []
        for i, m in enumerate(self.modalities):
            col = use[:, i]
            f_m = torch.zeros(size, self.num_classes, device=device)
            h_m = torch.zeros(size, int(self.encoders[m].hidden_size), device=device)
            mb = batch.modalities.get(m)
            if mb is not None:
                rows = mb.rows.to(device)
                kept = col[rows].nonzero().squeeze(1)
                if len(kept):
                    inputs = mb.inputs if len(kept) == len(rows) else {
                        k: v.index_select(0, kept.to(v.device)) for k, v in mb.inputs.items()}
                    lg, cls = self.unimodal(m, inputs)
                    f_m, h_m = f_m.index_copy(0, rows[kept], lg), h_m.index_copy(0, rows[kept], cls)
            fill = (~col).nonzero().squeeze(1)
            if placeholders and len(fill):
                lg, cls = self.placeholder_outputs(m, len(fill))
                f_m = f_m.index_copy(0, fill, lg.expand(len(fill), -1))
                h_m = h_m.index_copy(0, fill, cls.expand(len(fill), -1))
            logits = f_m if logits is None else logits + f_m
            features.append(h_m)
        assert logits is not None
        count: Tensor | float = float(len(self.modalities))
        if not placeholders:
            count = use.sum(dim=1, keepdim=True).clamp(min=1).to(logits.dtype)
        logits = logits / count
        out = {"logits": logits, "embedding": fuse_features(features, self.concat_features, count)}
        if self.training:
            out["loss"] = task_loss(self.task, logits, batch.labels)
        return out

    def pattern_module(self, pattern: Pattern) -> "UMEMMABranch":
        return UMEMMABranch(self, self.check_pattern(pattern))


class UMEMMABranch(PatternModule):
    """Present uni-modal models -> average with the absent modalities' placeholder constants.

    The constants are a snapshot of the model when the branch was made (eval mode): make the
    branch again after training further.
    """

    def __init__(self, model: UMEMMA, pattern: Pattern) -> None:
        super().__init__(pattern, model.encoders, model.task)
        self.heads = nn.ModuleDict({m: model.heads[m] for m in self.modalities})
        self.all_modalities = list(model.modalities)
        self.aware = bool(model.config.aware)
        self.concat = model.concat_features
        device = model.heads[model.modalities[0]].weight.device
        absent_logits = torch.zeros(1, model.num_classes, device=device)
        self.absent_features: dict[str, str] = {}  # modality -> buffer name of its constant CLS
        for m in self.all_modalities:
            if m in pattern:
                continue
            logits, cls = model.placeholder_constants(m)
            if self.aware:
                cls = torch.zeros_like(cls)
            else:
                absent_logits = absent_logits + logits
            self.absent_features[m] = f"absent_cls_{m}"
            self.register_buffer(f"absent_cls_{m}", cls)
        self.register_buffer("absent_logits", absent_logits)
        self.count = float(len(self.modalities) if self.aware else len(self.all_modalities))

    def fuse(self, inputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        total: Tensor | None = None
        present: dict[str, Tensor] = {}
        for m in self.modalities:
            cls = self.encoders[m](inputs[m])[:, 0]
            f_m = self.heads[m](cls)
            total = f_m if total is None else total + f_m
            present[m] = cls
        assert total is not None
        if not self.aware and self.absent_features:
            total = total + self.absent_logits
        ref = next(iter(present.values()))
        features = []
        for m in self.all_modalities:
            if m in present:
                features.append(present[m])
            elif self.concat or not self.aware:
                const = getattr(self, self.absent_features[m])
                features.append(const.expand(ref.shape[0], -1) if self.concat else const)
        return total / self.count, fuse_features(features, self.concat, self.count)
