"""A linear probe on the downstream labels over a frozen encoder pretrained on a coarser task.

The comparison's coarse-label regime keeps the downstream labels away from the unimodal encoders;
the methods that start from the unimodal heads (``uses_unimodal_heads``: prompt-vicreg's classifier,
UME-MMA's unimodal predictions) still need a head that predicts those labels. The probe is that
head: one linear layer trained on the frozen encoder's CLS features. The encoder is never updated,
so it still never learns the labels. The probe's test metric is the regime's unimodal ceiling in the
comparison's report (what a linear read-out of one modality reaches).

Two fits on the CLS features of the pretraining run's own train / val / test samples (the same ids,
so the probe's validation samples are the encoder's), cached once; each is full-batch AdamW (lr 1e-2,
weight decay 1e-4) for ``steps`` steps from a seeded init, the validation metric computed every
``every`` steps and the best step's weights kept (the latest of equal scores):

- **the ceiling** (reported as ``test``): on features **whitened** with the train split's mean and
  covariance. An encoder pretrained on a coarse task spends its feature variance on that task: on
  av-digits' parity-pretrained audio encoder the train covariance's eigenvalues span 1.5e-6 to 62
  and the digit lives in the small directions, so descent on the raw features crawls (500 steps:
  75.8% test; 40,000 steps: 92.2% and still rising), while the whitened fit reaches ~93% within
  a few hundred steps. A probe that has not converged understates the ceiling.
- **the head the methods start from** (``label_head.safetensors``, metrics under ``head``): the
  same fit on the raw features. The whitened solution, folded back into one Linear over the raw
  CLS, has weights scaled up along the near-empty directions (by up to 1/sqrt(1.5e-6) there); a
  method that moves the features it reads (prompt-vicreg's prompts) then meets logits hundreds of
  times too large: measured on av-digits coarse-parity, seed 0, prompt-vicreg fell to 10% / 16%
  on audio / image from that head (cross-entropy ~180 at the first epoch), against 78% / 61% from
  the raw-feature head.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from train.data.types import ModalitySpec, Sample
from train.engine.batches import Collate
from train.engine.metrics import headline, task_metrics

PROBE_FILE = "label_head.safetensors"  # beside head.safetensors (the coarse task's head)
STEPS, EVERY, LR, WEIGHT_DECAY = 500, 25, 1e-2, 1e-4
EIG_FLOOR = 1e-6  # eigenvalues below this share of the largest are raised to it (a direction with no variance)


def whitening(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, W) with ``(x - mean) @ W`` of identity covariance over the rows of ``x`` (PCA whitening)."""
    mean = x.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((x - mean).T.double()))
    evals = evals.clamp_min(EIG_FLOOR * float(evals.max().clamp_min(1e-12)))
    return mean, (evecs / evals.sqrt()).float()


@torch.no_grad()
def cls_features(encoder: nn.Module, spec: ModalitySpec, samples: Sequence[Sample], task: str, num_classes: int,
                 batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS features (N, H), encoded labels) of ``samples`` through the frozen ``encoder``, in order."""
    collate = Collate({spec.name: spec}, task, num_classes)
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for start in range(0, len(samples), batch_size):
        batch = collate(samples[start:start + batch_size])
        mb = batch.modalities[spec.name]
        feats.append(encoder(mb.inputs)[:, 0].float())
        labels.append(batch.labels[mb.rows])
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def _fit(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, task: str, num_classes: int,
         seed: int, steps: int, every: int) -> tuple[nn.Linear, int, float]:
    """(best head, its step, its validation metric) of the full-batch AdamW fit described above."""
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.functional.binary_cross_entropy_with_logits if task == "multi-label" else nn.functional.cross_entropy
    metric = headline(task)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-np.inf, 0, {})
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss_fn(head(x), y).backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                score = task_metrics(task, head(xv).numpy(), yv.numpy())[metric]
            if score >= best[0]:  # ties: the later (further converged) step
                best = (score, step, {k: v.detach().clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    return head, best[1], float(best[0])


def fit_label_probe(encoder: nn.Module, spec: ModalitySpec, splits: Mapping[str, Sequence[Sample]], task: str,
                    num_classes: int, out: Path, seed: int = 0, steps: int = STEPS, every: int = EVERY
                    ) -> dict[str, Any]:
    """Fit the ceiling probe (whitened) and the methods' head (raw) on ``splits["train"]``, each keeping its best
    step on ``splits["val"]``; write the head to ``out / PROBE_FILE``. Returns the metrics recorded under
    ``label_probe`` in the unimodal metrics.json: the ceiling's at the top level, the head's under ``head``."""
    raw = {k: cls_features(encoder, spec, v, task, num_classes) for k, v in splits.items() if v}
    mean, w = whitening(raw["train"][0])
    white = {k: ((f - mean) @ w, labels) for k, (f, labels) in raw.items()}
    metric = headline(task)

    def fit(data: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[nn.Linear, dict[str, Any]]:
        xv, yv = data.get("val", data["train"])
        head, step, val = _fit(*data["train"], xv, yv, task, num_classes, seed, steps, every)
        rec: dict[str, Any] = {"best_step": step, "steps": steps, "val": {metric: val}}
        if "test" in data:
            with torch.no_grad():
                rec["test"] = task_metrics(task, head(data["test"][0]).numpy(), data["test"][1].numpy())
        return head, rec

    _, ceiling = fit(white)
    head, head_rec = fit(raw)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / PROBE_FILE))
    return {"kind": "linear probe on the frozen encoder, trained on the downstream labels",
            "features": "whitened (train mean and covariance)", **ceiling,
            "num_samples": {k: int(len(v[1])) for k, v in raw.items()},
            "head": {"features": "raw CLS (saved as " + PROBE_FILE + ", what the methods start from)", **head_rec}}
