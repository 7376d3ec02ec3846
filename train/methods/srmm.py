"""SRMM: one shared branch for every modality, trained with modality switching (Saeed et al.).

Paper -> code (§III-B, §IV-B, §V-C; ../shared/METHODS.md §3):
- inputs: the frozen unimodal encoders' final CLS embeddings e_m (``adapt_encoders(..., "frozen")``;
  the encoders always run in eval mode, so encoder dropout never touches them);
- one network g for every modality, the same weights and no modality token (``SharedBranch``):
  block 1 FC(in->h) -> BatchNorm -> ReLU -> Dropout(0.5); block 2 FC(h->h) -> L2-normalise
  (l_i); block 3 FC(h->C) = W^T l_i, the logits of Eq. 3;
- loss: plain cross-entropy on g's logits (Eq. 3; BCE for multi-label, ``task_loss``), nothing else;
- modality switching S-1 (default): every available (embedding, label) pair of the batch's samples,
  one row per modality per sample, shuffled, so every batch mixes modalities; a sample missing a
  modality contributes what it has. Over one epoch every available (sample, modality) pair is seen
  exactly once. S-2 and S-3 (Table XI ablations) are options, see ``switching``;
- optimiser: Adam, lr 0.01, dropout 0.5 (``make_optimizer``; ``lr``/``weight_decay`` options);
- inference: only A present -> softmax(g(e_A)); several -> the mean of the softmax probabilities
  over the present modalities (the literal reading of "average of the logits obtained from the
  softmax layer"; METHODS.md [R]). The graph's ``logits`` output is log(mean p), computed as
  logsumexp_m(log_softmax z_m) - log k, so that ``probabilities`` (softmax of ``logits``, as for
  every method) equals the mean exactly. Multi-label: mean of the sigmoids, logits = logit(mean p)
  = logsumexp_m(logsigmoid z_m) - logsumexp_m(logsigmoid -z_m). ``fused_embedding`` is the mean of
  the present modalities' l_m.

Choices the paper leaves open (stated here, options where cheap):
- widths: in = the encoders' common width, h = in (the paper's text-visual setting; ``hidden``);
- batch size, epochs, weight decay, schedule are not given: the loop's batch size counts samples
  (a batch of B complete two-modality samples is 2B rows of g), weight decay 0 (Adam's default);
  the loop's schedule (warm-up at 0.1x, then poly decay) and gradient clipping apply to Adam's
  lr 0.01 as to every method; the loop's ``--lr`` is not used (``--set lr=...`` is);
- where METHODS.md's summary says "average the logits", the paper's text ("the logits obtained
  from the softmax layer") is followed: probabilities are averaged. The paper's block layout
  (BN/ReLU/Dropout in block 1 only) is followed, not the SBNet code's;
- modality_norm (default on; off = the paper's literal input): each modality's frozen embedding
  is standardised by its own parameter-free BatchNorm (running mean/var, no affine weights) before
  g. The paper's CLIP image and text embeddings already share one space; our separately pretrained
  encoders do not, and g's one BatchNorm over a mixed S-1 batch then normalises by the spread
  *between* modalities, which drowns a modality whose class signal is small in absolute terms.
  On the tiny test fixture (random frozen encoders, 25 AdamW steps at lr 1e-2) the eval loss fell
  by 6% without it and by 44% with it. On av-digits' trained encoders it changed nothing beyond
  seed noise (3 seeds, test accuracy audio+image / audio / image: 99.50 / 96.41 / 95.17 with it,
  99.50 / 96.78 / 95.66 without). It departs from "fully shared" only by per-modality statistics:
  g's weights stay one set, and no modality has a learned parameter of its own;
- FC1 carries no bias: BatchNorm's shift absorbs it (the same function in train and eval mode),
  and its gradient through BatchNorm is identically zero, so Adam would only move it by noise;
- a training batch of a single row cannot give batch statistics: that row is normalised with the
  running statistics (and does not update them);
- S-2: per batch, with probability 1/2 the S-1 mixed batch, else the batch's rows split into one
  unimodal batch per modality (one optimiser step each, random order); S-3: always split. So every
  strategy still sees each (sample, modality) pair once per epoch; only the batch mix differs.
- embedding cache (``cache_embeddings``): the encoders are frozen and in eval mode, so e_m of a
  sample is a fixed function of its inputs; it is computed once per (sample id, modality) and
  reused in every epoch. Each entry also stores a checksum of the row's inputs (recomputed on a
  mismatch) and the cache empties when any encoder tensor changes (version counter, storage); it is
  a plain attribute, never a buffer, so it is not saved with the run's weights.

BEYOND PAPER: M >= 3 modalities pool all M streams in S-1 and average over the present ones at
test time. Encoders of different widths (the paper's §VI limitation) get a per-modality linear
adapter to the common width (``adapter``: "auto" = only when the widths differ). With adapters the
network is no longer fully shared: every modality has its own first linear map before g.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from runtime.patterns import Pattern
from train.data.types import Task
from train.engine.batches import Batch
from train.methods.base import (
    DatasetInfo,
    MultimodalModel,
    PatternModule,
    StepContext,
    adapt_encoders,
    default_train_step,
    task_loss,
)
from train.methods.registry import register

SWITCHING = ("s1", "s2", "s3")
ADAPTERS = ("auto", "on", "off")


def row_checksums(inputs: Mapping[str, Tensor]) -> Tensor:
    """(n, 2) float64 per-row sum and sum of squares over all inputs (padding zeros do not count)."""
    parts = [v.reshape(v.shape[0], -1).to(torch.float64) for _, v in sorted(inputs.items())]
    flat = torch.cat(parts, dim=1)
    return torch.stack([flat.sum(1), flat.pow(2).sum(1)], dim=1).cpu()


class EmbeddingCache:
    """Frozen eval-mode embeddings by (modality, sample id); a plain object, never saved with weights.

    Valid only while the encoders' tensors are unchanged (``check`` empties it otherwise) and while
    an id names the same inputs (each entry keeps the row's checksum; a mismatch recomputes).
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}
        self._signature: tuple | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def check(self, encoders: Iterable[nn.Module]) -> None:
        tensors = itertools.chain.from_iterable(itertools.chain(e.parameters(), e.buffers()) for e in encoders)
        signature = tuple((t.data_ptr(), t._version, t.dtype, str(t.device)) for t in tensors)
        if signature != self._signature:
            self._store.clear()
            self._signature = signature

    def lookup(self, modality: str, ids: Sequence[str], inputs: Mapping[str, Tensor],
               compute: Callable[[dict[str, Tensor]], Tensor]) -> Tensor:
        """(n, H) embeddings of ``ids``; the rows not cached (or with other inputs) go through ``compute``."""
        sums = row_checksums(inputs)
        missing = []
        for i, sample_id in enumerate(ids):
            entry = self._store.get((modality, sample_id))
            if entry is None or not torch.allclose(entry[1], sums[i], rtol=1e-9, atol=1e-9):
                missing.append(i)
        self.misses += len(missing)
        self.hits += len(ids) - len(missing)
        if missing:
            idx = torch.tensor(missing, dtype=torch.long)
            new = compute({k: v[idx.to(v.device)] for k, v in inputs.items()}).detach()
            for j, i in enumerate(missing):
                self._store[(modality, ids[i])] = (new[j], sums[i])
        return torch.stack([self._store[(modality, sample_id)][0] for sample_id in ids])


@dataclass
class SRMMConfig:
    hidden: int = 0  # h; 0 = the common embedding width (the paper's text-visual in = h)
    width: int = 0  # the common embedding width with adapters; 0 = the widest encoder
    adapter: str = "auto"  # auto (only if widths differ) | on | off (error if widths differ)
    dropout: float = 0.5
    # Per-modality standardisation of the frozen embedding (BatchNorm without affine parameters);
    # False = the paper's literal input. See the module docstring.
    modality_norm: bool = True
    switching: str = "s1"  # s1 (mixed batches) | s2 (half mixed, half unimodal) | s3 (unimodal batches)
    lr: float = 0.01  # Adam (the paper); the loop's --lr is not used by srmm
    weight_decay: float = 0.0
    cache_embeddings: bool = True


def batch_norm(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """``bn(x)``, except that one training row (no batch statistics) uses the running ones, unchanged."""
    if bn.training and x.shape[0] == 1:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return bn(x)


class SharedBranch(nn.Module):
    """g: FC -> BN -> ReLU -> Dropout, FC -> L2-normalise, FC. Returns (logits z, embedding l)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden, bias=False)  # BN's shift absorbs a bias here
        self.bn = nn.BatchNorm1d(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.dropout(F.relu(batch_norm(self.bn, self.fc1(x))))
        emb = F.normalize(self.fc2(h), dim=-1)
        return self.fc3(emb), emb


def log_softmax_or_sigmoid(task: Task, z: Tensor) -> tuple[Tensor, Tensor | None]:
    """log p (and log(1 - p) for multi-label) per row of g's logits."""
    if task == "multi-label":
        return -F.softplus(-z), -F.softplus(z)  # logsigmoid(z), logsigmoid(-z)
    return torch.log_softmax(z, dim=-1), None


def mean_probability_logits(task: Task, zs: Sequence[Tensor]) -> Tensor:
    """Logits whose softmax (sigmoid) is the mean of softmax(z_m) (sigmoid(z_m)) over ``zs``."""
    logs = [log_softmax_or_sigmoid(task, z) for z in zs]
    log_p = torch.logsumexp(torch.stack([p for p, _ in logs]), dim=0)
    if task == "multi-label":  # logit(mean p) = log(mean p) - log(mean (1 - p)); the 1/k cancels
        return log_p - torch.logsumexp(torch.stack([q for _, q in logs]), dim=0)  # type: ignore[misc]
    return log_p - math.log(len(zs))


def masked_mean_probability_logits(task: Task, z: Tensor, present: Tensor) -> Tensor:
    """``mean_probability_logits`` per row over the present modalities; z (M, B, C), present (M, B)."""
    neg = torch.tensor(-math.inf, dtype=z.dtype, device=z.device)
    log_p, log_q = log_softmax_or_sigmoid(task, z)
    keep = present[..., None]
    lse_p = torch.logsumexp(torch.where(keep, log_p, neg), dim=0)
    if task == "multi-label":
        return lse_p - torch.logsumexp(torch.where(keep, log_q, neg), dim=0)  # type: ignore[arg-type]
    return lse_p - present.sum(0).clamp(min=1).to(z.dtype).log()[:, None]


def project(modality: str, emb: Tensor, norms: nn.ModuleDict, adapters: nn.ModuleDict) -> Tensor:
    """The input of g for one modality: (standardise) then (adapt to the common width)."""
    if modality in norms:
        emb = batch_norm(norms[modality], emb)
    return adapters[modality](emb) if modality in adapters else emb


def s1_order(batch: Batch, modalities: Sequence[str], generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Switching S-1 for one batch: every available (sample row, modality) pair, shuffled.

    Returns (perm, row, mod): the pool is the concatenation of ``modalities``' rows in order;
    ``perm`` shuffles it and ``row[k]``/``mod[k]`` name the k-th shuffled pair.
    """
    rows, mods = [], []
    for i, m in enumerate(modalities):
        mb = batch.modalities.get(m)
        if mb is not None and len(mb.rows):
            rows.append(mb.rows.cpu())
            mods.append(torch.full((len(mb.rows),), i, dtype=torch.long))
    if not rows:
        raise ValueError(f"a training batch has none of the modalities {list(modalities)}")
    perm = torch.randperm(sum(len(r) for r in rows), generator=generator)
    return perm, torch.cat(rows)[perm], torch.cat(mods)[perm]


@register("srmm")
class SRMM(MultimodalModel):
    config_class = SRMMConfig

    def __init__(self, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: SRMMConfig) -> None:
        super().__init__(info, encoders, config)
        if config.switching not in SWITCHING:
            raise ValueError(f"srmm switching={config.switching!r}; choose one of {list(SWITCHING)}")
        if config.adapter not in ADAPTERS:
            raise ValueError(f"srmm adapter={config.adapter!r}; choose one of {list(ADAPTERS)}")
        adapt_encoders(self.encoders, "frozen")
        widths = {m: int(e.hidden_size) for m, e in self.encoders.items()}
        if config.adapter == "off" and len(set(widths.values())) != 1:
            raise ValueError(f"srmm with adapter=off needs one embedding width for all modalities; got {widths}. "
                             "Use --set adapter=auto (a linear adapter per modality) or pretrain the encoders "
                             "with one --hidden-size")
        use_adapters = config.adapter == "on" or (config.adapter == "auto" and len(set(widths.values())) != 1)
        self.width = config.width or max(widths.values())
        if not use_adapters and config.width and config.width != self.width:
            raise ValueError(f"srmm width={config.width} needs adapters (--set adapter=on); encoders give {widths}")
        if not use_adapters:
            self.width = next(iter(widths.values()))
        self.adapters = nn.ModuleDict(
            {m: nn.Linear(w, self.width) for m, w in widths.items()} if use_adapters else {})
        self.norms = nn.ModuleDict(
            {m: nn.BatchNorm1d(w, affine=False) for m, w in widths.items()} if config.modality_norm else {})
        self.g = SharedBranch(self.width, config.hidden or self.width, self.num_classes, config.dropout)
        self.cache = EmbeddingCache()
        # When a list, each training forward appends the (sample id, modality) of the rows it feeds g, in order.
        self.switch_log: list[list[tuple[str, str]]] | None = None
        self.encoders.eval()

    def train(self, mode: bool = True) -> "SRMM":
        super().train(mode)
        self.encoders.eval()  # frozen embeddings: never encoder dropout
        return self

    def make_optimizer(self, params: Sequence[nn.Parameter], cfg: object) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    # ---- embeddings ---------------------------------------------------------------
    def project(self, modality: str, emb: Tensor) -> Tensor:
        return project(modality, emb, self.norms, self.adapters)

    def embed(self, modality: str, inputs: dict[str, Tensor]) -> Tensor:
        """Frozen final CLS of one modality's rows (n, H), through the cache in training mode."""
        encoder = self.encoders[modality]
        if encoder.training:  # someone called .train() on the encoder itself
            encoder.eval()
        return encoder(inputs)[:, 0]

    def embeddings(self, batch: Batch, only: str | None = None) -> dict[str, Tensor]:
        """{modality: (n_m, width)} in ``batch.modalities[m].rows`` order: g's inputs (norm, adapter applied)."""
        out = {}
        use_cache = self.training and self.config.cache_embeddings
        if use_cache:
            self.cache.check(self.encoders.values())
        for m in self.modalities:
            mb = batch.modalities.get(m)
            if mb is None or not len(mb.rows) or (only is not None and m != only):
                continue
            ids = [batch.ids[int(r)] for r in mb.rows]
            with torch.no_grad():
                emb = (self.cache.lookup(m, ids, mb.inputs, lambda x, m=m: self.embed(m, x)) if use_cache
                       else self.embed(m, mb.inputs))
            out[m] = self.project(m, emb)
        return out

    # ---- forward ---------------------------------------------------------------------
    def forward(self, batch: Batch, only: str | None = None) -> dict[str, Tensor]:
        """Eval: the per-pattern fusion for every row. Training: S-1 rows through g and their CE.

        ``only`` (training) restricts the rows to one modality: an S-2/S-3 unimodal batch.
        """
        emb = self.embeddings(batch, only if self.training else None)
        if self.training:
            return self._train_forward(batch, emb, only)
        device = next(self.g.parameters()).device
        zs, ls, present = [], [], []
        for m in self.modalities:
            z = torch.zeros(batch.size, self.num_classes, device=device)
            lv = torch.zeros(batch.size, self.g.fc2.out_features, device=device)
            mask = torch.zeros(batch.size, dtype=torch.bool, device=device)
            if m in emb:
                rows = batch.modalities[m].rows.to(device)
                zm, lm = self.g(emb[m])
                z, lv, mask = z.index_copy(0, rows, zm), lv.index_copy(0, rows, lm), mask.index_fill(0, rows, True)
            zs.append(z), ls.append(lv), present.append(mask)
        present_t = torch.stack(present)
        logits = masked_mean_probability_logits(self.task, torch.stack(zs), present_t)
        weights = present_t.to(logits.dtype)[..., None]
        fused = (torch.stack(ls) * weights).sum(0) / weights.sum(0).clamp(min=1)
        return {"logits": logits, "embedding": fused}

    def _train_forward(self, batch: Batch, emb: dict[str, Tensor], only: str | None) -> dict[str, Tensor]:
        mods = [m for m in self.modalities if m in emb and (only is None or m == only)]
        if not mods:
            raise ValueError(f"srmm training batch has none of {only or self.modalities}")
        perm, row, mod = s1_order(batch, mods)
        x = torch.cat([emb[m] for m in mods])[perm.to(emb[mods[0]].device)]
        if self.switch_log is not None:
            self.switch_log.append([(batch.ids[r], mods[j]) for r, j in zip(row.tolist(), mod.tolist())])
        z, lv = self.g(x)
        device = z.device
        row_d = row.to(device)
        labels = batch.labels.to(device)[row_d]
        loss = task_loss(self.task, z, labels)
        # Per-sample outputs of this step (for logging): the same fusion as at test time, over these rows.
        present = torch.zeros(len(mods), batch.size, dtype=torch.bool, device=device)
        present[mod.to(device), row_d] = True
        zfull = z.new_zeros(len(mods), batch.size, z.shape[1]).index_put((mod.to(device), row_d), z)
        # A sample with no row in this step (an S-2/S-3 unimodal batch) gets logits 0.
        logits = torch.where(present.any(0)[:, None], masked_mean_probability_logits(self.task, zfull, present),
                             zfull.new_zeros(()))
        fused = lv.new_zeros(batch.size, lv.shape[1]).index_add(0, row_d, lv)
        fused = fused / present.sum(0).clamp(min=1).to(lv.dtype)[:, None]
        return {"logits": logits, "embedding": fused, "loss": loss}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """S-1 (and S-2's mixed half): one step on the shuffled pool; else one step per modality."""
        unimodal = self.config.switching == "s3" or (
            self.config.switching == "s2" and bool(torch.rand(()) < 0.5))
        if not unimodal:
            return default_train_step(batch, ctx)
        present = [m for m in self.modalities if m in batch.modalities and len(batch.modalities[m].rows)]
        losses = []
        for k in torch.randperm(len(present)).tolist():
            out = ctx.forward(batch, only=present[k])
            ctx.backward(out["loss"])
            ctx.clip()
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            losses.append(float(out["loss"].detach()))
        return {"loss": sum(losses) / len(losses)}

    def pattern_module(self, pattern: Pattern) -> "SRMMBranch":
        return SRMMBranch(self, self.check_pattern(pattern))


class SRMMBranch(PatternModule):
    """Present encoders' CLS -> (adapter) -> the shared g -> mean of probabilities. Eval mode: BN running stats."""

    def __init__(self, model: SRMM, pattern: Pattern) -> None:
        super().__init__(pattern, model.encoders, model.task)
        self.adapters = nn.ModuleDict({m: model.adapters[m] for m in self.modalities if m in model.adapters})
        self.norms = nn.ModuleDict({m: model.norms[m] for m in self.modalities if m in model.norms})
        self.g = model.g

    def fuse(self, inputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        zs, ls = [], []
        for m in self.modalities:
            z, lv = self.g(project(m, self.encoders[m](inputs[m])[:, 0], self.norms, self.adapters))
            zs.append(z)
            ls.append(lv)
        fused = ls[0] if len(ls) == 1 else torch.stack(ls).mean(0)
        return mean_probability_logits(self.task, zs), fused
