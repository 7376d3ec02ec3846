"""Kim & Kim (ECCV 2024): read-only prompts predict a missing modality's CLS (VICReg), BitFit encoders.

Paper (M = 2) -> code:
- §4.1 BitFit: ``adapt_encoders(encoders, "bitfit")``; only the encoders' bias terms train (LayerNorm
  biases included), plus the prompts, predictors and classifiers below.
- §4.2 read-only prompts phi_m: K learnable tokens per ordered pair (``num_prompts``, default 6, the
  paper's MM-IMDb value). The paper appends them after the input tokens, [C_m, E_m, phi_m]; our encoder
  puts a prefix *before* CLS, ``[phi_m, C_m, E_m]``. With ``readonly_prefix=True`` (RPO's mask [23], as
  METHODS.md recommends: no query, prompt or original, ever sees a prompt key, in every layer; prompt
  queries read CLS and inputs; padding keys are masked) and no position embedding on the prompts,
  self-attention is permutation-equivariant, so this is the same function as the paper's appended
  prompts. Consequences (tested): CLS and input outputs are bit-identical for any prompt values, and a
  prompt's output does not depend on the other prompts.
- §3.1 classifier cls_m: one ``nn.Linear(d, classes)`` per modality on the final CLS C~_m [R];
  late fusion = sum of the per-modality logits [R], identical in training and at test time. The
  classifiers start from phase 1's unimodal heads (our encoders are pretrained on the task; the
  paper's DeiT/SimCSE encoders are not, so it trains fresh ones): open choice, flagged.
- Supp. A predictor pred_{m->m'}: Linear(d,d) -> LN -> ReLU -> Linear(d,d) -> LN -> ReLU -> Linear(d,d)
  (activation [R] ReLU) on the mean of m's K final prompt outputs [R], predicting C~_{m'}.
- L_cls = L_{m1}(D^{m1}) + L_{m2}(D^{m2}) + L_c(D^c): one CE per row on the sum of the logits of the
  modalities that row has (only-m rows: cls_m alone; complete rows: the fused logits), averaged over
  the batch (open choice: the minibatch estimate of the three terms as sums over their data, not
  three separately averaged subsets).
- L_aux [R]: CE(cls_{m'}(C^_{m'}), y) per direction, on rows with both modalities.
- L_prd, Eq. 1: lambda * s(C~, C^) + mu * [v(C~) + v(C^)] + nu * [c(C~) + c(C^)], lambda = mu = 50,
  nu = 1 (Supp. A), per direction on rows with both modalities. s = ``F.mse_loss`` (mean over rows
  and dimensions, as the official VICReg code); v(Z) = mean_j relu(1 - sqrt(Var(Z_j) + 1e-4)) with the
  unbiased variance; c(Z) = sum_{i != j} Cov(Z)_ij^2 / d. Eq. 1 *sums* the two v terms; we follow
  it, not the VICReg code's halving (METHODS.md notes both). **No stop-gradient** on C~
  (Table 3); ``detach_target`` exists only for that ablation. A direction with fewer than 2 rows
  having both modalities skips L_prd (variance/covariance need 2 rows).
- L = alpha * (L_cls + L_aux) + L_prd; alpha is not in the paper: option ``alpha``, default 50 from
  an av-digits validation sweep over {1, 10, 50} (seed 0; mean validation accuracy over the three
  patterns 0.9765 / 0.9752 / 0.9777: within 2 of 807 samples, so a weak preference).
- Optimiser (Supp. A): AdamW with weight decay 5e-2 (``weight_decay``, applied to every trainable
  tensor; the paper does not say which are excluded) and ``lr_factor``: linear warm-up from 0 over
  the warm-up steps, then linear decay to 0 [R]. ``train.engine.loop`` does not ask a model for its
  schedule yet: it applies poly(0.9) after warm-up epochs at 0.1x to every method, so runs use that
  until the loop calls ``lr_factor``. The loop's LR is the paper's "base LR" knob; the paper's 1e-2
  is for 768-wide encoders.
- Prompt init [R, RPO]: the encoder's learned CLS embedding (before position embeddings) plus
  0.1 x unit-norm noise per prompt; encoders without a CLS parameter (BERT text: CLS is a word id)
  get N(0, 0.02) prompts. Prompts never carry position embeddings.

Branches (inference, §4.2): all present: sum_m cls_m(C~_m), encoders run without prompts (they
cannot change C~). Only A present: cls_A(C~_A) + cls_B(pred_{A->B}(mean phi~_A)), one pass of
encoder A with its prompts; nothing of encoder B. ``fused_embedding`` is the sum of the per-modality
(true or predicted) CLS features, the vector whose per-modality classifiers sum to the logits.

BEYOND PAPER (M >= 3): K prompts and one predictor per ordered pair (s, t); all (M - 1) K prompts of
source s go through one encoder pass in training (read-only, so CLS is unaffected, and prompts never
read each other, so a branch feeds each present source only the prompt blocks of the absent targets
and gets the same outputs as training). For a pattern S, each absent t gets
C^_t = mean over present s of pred_{s->t}; L_aux and L_prd run over every ordered pair on the rows
that have both, summed and divided by M - 1 (M = 2: the paper's sum over the two directions);
L_cls is the CE of the sum of the present modalities' logits on every row.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from runtime.patterns import Pattern
from train.engine.batches import Batch
from train.methods.base import (
    DatasetInfo,
    MultimodalModel,
    PatternModule,
    adapt_encoders,
    present_matrix,
    scatter_rows,
    shared_width,
    task_loss,
)
from train.methods.registry import register


@dataclass
class PromptVICRegConfig:
    num_prompts: int = 6  # K per ordered pair (Supp. A: 6 for MM-IMDb)
    alpha: float = 50.0  # L = alpha * (L_cls + L_aux) + L_prd; av-digits validation sweep {1, 10, 50}
    invariance_weight: float = 50.0  # lambda
    variance_weight: float = 50.0  # mu
    covariance_weight: float = 1.0  # nu
    weight_decay: float = 5e-2  # AdamW (Supp. A); replaces the loop's weight decay
    prompt_noise: float = 0.1  # norm of the noise added to the CLS embedding at init (RPO)
    detach_target: bool = False  # stop-gradient on C~ (Table 3 ablation only; the paper does not)


# ---- VICReg (Eq. 1) -------------------------------------------------------------------
def variance_term(z: Tensor, eps: float = 1e-4) -> Tensor:
    """v(Z) = mean_j relu(1 - sqrt(Var(Z_:,j) + eps)), unbiased variance over rows."""
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: Tensor) -> Tensor:
    """c(Z) = sum_{i != j} Cov(Z)_ij^2 / d with Cov(Z) = (Z - mean)^T (Z - mean) / (n - 1)."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


def vicreg_terms(target: Tensor, pred: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(invariance, variance, covariance) of Eq. 1, before the weights; needs >= 2 rows."""
    if target.shape[0] < 2:
        raise ValueError(f"VICReg needs at least 2 rows for variance/covariance, got {target.shape[0]}")
    inv = F.mse_loss(pred, target)
    var = variance_term(target) + variance_term(pred)
    cov = covariance_term(target) + covariance_term(pred)
    return inv, var, cov


# ---- the schedule hook --------------------------------------------------------------------
def linear_warmup_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LambdaLR factor: 0 -> 1 linearly over ``warmup_steps``, then linearly to 0 at ``total_steps``."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


# ---- modules ---------------------------------------------------------------------------------
def make_predictor(width: int) -> nn.Sequential:
    """Supp. A: two FC layers with LayerNorm and activation, then a third linear layer."""
    return nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(),
                         nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width))


def cls_embedding(encoder: nn.Module) -> Tensor | None:
    """The encoder's learned CLS token before position embeddings, (H,), if it has one."""
    for owner in (encoder, getattr(getattr(encoder, "backbone", None), "embeddings", None)):
        token = getattr(owner, "cls_token", None)
        if isinstance(token, Tensor):
            return token.detach().reshape(-1)
    return None


def init_prompts(encoder: nn.Module, count: int, width: int, noise: float) -> Tensor:
    base = cls_embedding(encoder)
    if base is None or base.numel() != width:
        return torch.randn(count, width) * 0.02
    direction = torch.randn(count, width)
    return base[None, :] + noise * direction / direction.norm(dim=1, keepdim=True)


def encode_with_prompts(encoder: nn.Module, inputs: dict[str, Tensor], prompts: Sequence[Tensor], k: int
                        ) -> tuple[Tensor, list[Tensor]]:
    """(final CLS (n, H), per prompt block the mean of its K final outputs) in one encoder pass."""
    if not prompts:
        return encoder(inputs)[:, 0], []
    hidden = encoder(inputs, prefix=torch.cat(list(prompts), dim=0), readonly_prefix=True)
    pooled = [hidden[:, j * k : (j + 1) * k].mean(dim=1) for j in range(len(prompts))]
    return hidden[:, k * len(prompts)], pooled


@register("prompt-vicreg")
class PromptVICReg(MultimodalModel):
    config_class = PromptVICRegConfig
    uses_unimodal_heads = True

    def __init__(self, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: PromptVICRegConfig) -> None:
        super().__init__(info, encoders, config)
        if len(self.modalities) < 2:
            raise ValueError(f"prompt-vicreg predicts one modality from another; {info.name!r} has {self.modalities}")
        if config.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {config.num_prompts}")
        hidden = shared_width(self.encoders, "a predictor of one modality outputs another modality's CLS")
        adapt_encoders(self.encoders, "bitfit")
        self.targets: dict[str, list[str]] = {s: [t for t in self.modalities if t != s] for s in self.modalities}
        k = config.num_prompts
        self.prompts = nn.ModuleDict({
            s: nn.ParameterDict({t: nn.Parameter(init_prompts(self.encoders[s], k, hidden, config.prompt_noise))
                                 for t in self.targets[s]})
            for s in self.modalities
        })
        self.predictors = nn.ModuleDict({
            s: nn.ModuleDict({t: make_predictor(hidden) for t in self.targets[s]}) for s in self.modalities
        })
        self.classifiers = nn.ModuleDict({m: nn.Linear(hidden, self.num_classes) for m in self.modalities})

    def load_unimodal_heads(self, heads: Mapping[str, nn.Module]) -> None:
        with torch.no_grad():
            for m in self.modalities:
                self.classifiers[m].load_state_dict(heads[m].state_dict())

    def make_optimizer(self, params: Sequence[nn.Parameter], cfg: object) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=self.config.weight_decay, eps=cfg.eps)  # type: ignore[attr-defined]

    @classmethod
    def lr_factor(cls, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
        """The paper's schedule (Supp. A), for a loop that asks the model for one."""
        return linear_warmup_decay(total_steps, warmup_steps)

    def encode(self, m: str, inputs: dict[str, Tensor], targets: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """(C~_m, {t: C^_t predicted from m}) for the given targets, one pass of encoder m."""
        cls, pooled = encode_with_prompts(self.encoders[m], inputs, [self.prompts[m][t] for t in targets],
                                          self.config.num_prompts)
        return cls, {t: self.predictors[m][t](p) for t, p in zip(targets, pooled)}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        device = self.classifiers[self.modalities[0]].weight.device
        present = present_matrix(batch, self.modalities, device)
        cls: dict[str, Tensor] = {}
        pred: dict[tuple[str, str], Tensor] = {}
        for m in self.modalities:
            mb = batch.modalities.get(m)
            if mb is None:
                continue
            c, p = self.encode(m, mb.inputs, self.targets[m])
            cls[m] = scatter_rows(c, mb.rows, batch.size)
            for t, v in p.items():
                pred[(m, t)] = scatter_rows(v, mb.rows, batch.size)
        ref = next(iter(cls.values()))
        zero = torch.zeros_like(ref)
        count = present.sum(dim=1, keepdim=True).clamp(min=1).to(ref.dtype)
        logits: Tensor | None = None
        own: Tensor | None = None  # present modalities' logits only (L_cls)
        embedding: Tensor | None = None
        for i, t in enumerate(self.modalities):
            approx = zero
            for j, s in enumerate(self.modalities):
                if (s, t) in pred:
                    approx = approx + torch.where(present[:, j : j + 1], pred[(s, t)], zero)
            feature = torch.where(present[:, i : i + 1], cls.get(t, zero), approx / count)
            term = self.classifiers[t](feature)
            mine = torch.where(present[:, i : i + 1], term, torch.zeros_like(term))
            logits = term if logits is None else logits + term
            own = mine if own is None else own + mine
            embedding = feature if embedding is None else embedding + feature
        assert logits is not None and own is not None and embedding is not None
        out = {"logits": logits, "embedding": embedding}
        if self.training:
            out.update(self.losses(cls, pred, present, own, batch.labels))
        return out

    def losses(self, cls: Mapping[str, Tensor], pred: Mapping[tuple[str, str], Tensor], present: Tensor,
               own_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        l_cls = task_loss(self.task, own_logits, labels)
        l_aux = own_logits.new_zeros(())
        l_prd = own_logits.new_zeros(())
        inv = var = cov = own_logits.new_zeros(())
        for i, t in enumerate(self.modalities):
            for j, s in enumerate(self.modalities):
                if (s, t) not in pred or t not in cls:
                    continue
                rows = torch.nonzero(present[:, i] & present[:, j]).flatten()
                if len(rows) == 0:
                    continue
                guess = pred[(s, t)].index_select(0, rows)
                l_aux = l_aux + task_loss(self.task, self.classifiers[t](guess), labels.index_select(0, rows))
                if len(rows) < 2:
                    continue
                target = cls[t].index_select(0, rows)
                terms = vicreg_terms(target.detach() if cfg.detach_target else target, guess)
                inv, var, cov = inv + terms[0], var + terms[1], cov + terms[2]
        pairs = len(self.modalities) - 1
        l_aux, inv, var, cov = l_aux / pairs, inv / pairs, var / pairs, cov / pairs
        l_prd = cfg.invariance_weight * inv + cfg.variance_weight * var + cfg.covariance_weight * cov
        loss = cfg.alpha * (l_cls + l_aux) + l_prd
        return {"loss": loss, "cls_loss": l_cls.detach(), "aux_loss": l_aux.detach(), "prd_loss": l_prd.detach(),
                "invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}

    def pattern_module(self, pattern: Pattern) -> "PromptVICRegBranch":
        return PromptVICRegBranch(self, self.check_pattern(pattern))


class PromptVICRegBranch(PatternModule):
    """Present encoders (with prompts when a target is absent) -> classifiers -> sum of logits."""

    def __init__(self, model: PromptVICReg, pattern: Pattern) -> None:
        super().__init__(pattern, model.encoders, model.task)
        self.all_modalities = list(model.modalities)
        self.absent = [t for t in model.modalities if t not in pattern]
        self.k = model.config.num_prompts
        # A source runs with the prompts of the absent targets only: under the read-only mask prompts
        # never read each other, so a subset gives the same outputs as training's full set.
        self.prompt_targets = {s: [t for t in model.targets[s] if t in self.absent] for s in self.modalities}
        self.prompts = nn.ModuleDict({s: nn.ParameterDict({t: model.prompts[s][t] for t in self.prompt_targets[s]})
                                      for s in self.modalities})
        self.predictors = nn.ModuleDict({s: nn.ModuleDict({t: model.predictors[s][t] for t in self.absent})
                                         for s in self.modalities})
        self.classifiers = model.classifiers  # absent t's classifier reads the predicted C^_t

    def fuse(self, inputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        cls: dict[str, Tensor] = {}
        pred: dict[str, list[Tensor]] = {t: [] for t in self.absent}
        for s in self.modalities:
            targets = self.prompt_targets[s]
            c, pooled = encode_with_prompts(self.encoders[s], inputs[s], [self.prompts[s][t] for t in targets], self.k)
            cls[s] = c
            for t, p in zip(targets, pooled):
                if t in pred:
                    pred[t].append(self.predictors[s][t](p))
        logits: Tensor | None = None
        embedding: Tensor | None = None
        for t in self.all_modalities:
            feature = cls[t] if t in cls else torch.stack(pred[t]).sum(dim=0) / len(pred[t])
            term = self.classifiers[t](feature)
            logits = term if logits is None else logits + term
            embedding = feature if embedding is None else embedding + feature
        assert logits is not None and embedding is not None
        return logits, embedding
