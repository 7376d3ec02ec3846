"""A linear probe on the downstream labels over a frozen encoder pretrained on a coarser task.

The comparison's coarse-label regime keeps the downstream labels away from the unimodal encoders;
the methods that start from the unimodal heads (``uses_unimodal_heads``: prompt-vicreg's classifier,
UME-MMA's unimodal predictions) still need a head that predicts those labels. The probe is that
head: one linear layer trained on the frozen encoder's CLS features. The encoder is never updated,
so it still never learns the labels. The probe's test metric is the regime's unimodal ceiling in the
comparison's report (what a linear read-out of one modality reaches).

Fit: the CLS features of the pretraining run's own train / val / test samples (the same ids, so the
probe's validation samples are the encoder's), cached once and **whitened** with the train split's
mean and covariance; full-batch AdamW (lr 1e-2, weight decay 1e-4) for ``steps`` steps from a seeded
init; every ``every`` steps the validation metric is computed and the best step's weights are kept
(the latest of equal scores). The whitening is then folded into the linear layer, so the saved head
is an ordinary ``Linear`` over the raw CLS (what the methods load).

Why whiten: an encoder pretrained on a coarse task spends its feature variance on that task. On
av-digits' parity-pretrained audio encoder the train covariance's eigenvalues span 1.5e-6 to 62,
and the digit lives in the small directions, so gradient descent on raw features crawls: 500 AdamW
steps reached 75.8% test, 40,000 steps 92.2% and still rising; on whitened features the same fit
reaches 92.9% (best validation step 200 of 500). A probe that has not converged understates the
unimodal ceiling the report compares against.
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


def fold_whitening(head: nn.Linear, mean: torch.Tensor, w: torch.Tensor) -> nn.Linear:
    """The Linear over raw features equal to ``head`` applied to ``(x - mean) @ w``."""
    folded = nn.Linear(w.shape[0], head.out_features)
    with torch.no_grad():
        folded.weight.copy_(head.weight @ w.T)
        folded.bias.copy_(head.bias - folded.weight @ mean)
    return folded


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


def fit_label_probe(encoder: nn.Module, spec: ModalitySpec, splits: Mapping[str, Sequence[Sample]], task: str,
                    num_classes: int, out: Path, seed: int = 0, steps: int = STEPS, every: int = EVERY
                    ) -> dict[str, Any]:
    """Train the probe on ``splits["train"]``, keep the best step on ``splits["val"]``, report test; write
    ``out / PROBE_FILE``. Returns the metrics recorded under ``label_probe`` in the unimodal metrics.json."""
    raw = {k: cls_features(encoder, spec, v, task, num_classes) for k, v in splits.items() if v}
    mean, w = whitening(raw["train"][0])
    data = {k: ((f - mean) @ w, labels) for k, (f, labels) in raw.items()}
    x, y = data["train"]
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
            xv, yv = data.get("val", data["train"])
            with torch.no_grad():
                score = task_metrics(task, head(xv).numpy(), yv.numpy())[metric]
            if score >= best[0]:  # ties: the later (further converged) step
                best = (score, step, {k: v.detach().clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    head = fold_whitening(head, mean, w)
    result: dict[str, Any] = {"kind": "linear probe on the frozen encoder, trained on the downstream labels",
                              "features": "whitened (train mean and covariance), folded into the saved head",
                              "best_step": best[1], "steps": steps, "val": {metric: best[0]},
                              "num_samples": {k: int(len(v[1])) for k, v in data.items()}}
    if "test" in raw:
        with torch.no_grad():
            result["test"] = task_metrics(task, head(raw["test"][0]).numpy(), raw["test"][1].numpy())
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / PROBE_FILE))
    return result
