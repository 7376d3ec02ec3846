"""A linear probe on the downstream labels over a frozen encoder pretrained on a coarser task.

The comparison's coarse-label regime keeps the downstream labels away from the unimodal encoders;
the methods that start from the unimodal heads (``uses_unimodal_heads``: prompt-vicreg's classifier,
UME-MMA's unimodal predictions) still need a head that predicts those labels. The probe is that
head: one linear layer trained on the frozen encoder's CLS features. The encoder is never updated,
so it still never learns the labels. The probe's test metric is the regime's unimodal ceiling in the
comparison's report (what a linear read-out of one modality reaches).

Fit: the CLS features of the pretraining run's own train / val / test samples (the same ids, so the
probe's validation samples are the encoder's), cached once; full-batch AdamW (lr 1e-2, weight decay
1e-4) for ``steps`` steps from a seeded init; every ``every`` steps the validation metric is
computed and the best step's weights are kept (the latest of equal scores).
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
    data = {k: cls_features(encoder, spec, v, task, num_classes) for k, v in splits.items() if v}
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
    result: dict[str, Any] = {"kind": "linear probe on the frozen encoder, trained on the downstream labels",
                              "best_step": best[1], "steps": steps, "val": {metric: best[0]},
                              "num_samples": {k: int(len(v[1])) for k, v in data.items()}}
    if "test" in data:
        with torch.no_grad():
            result["test"] = task_metrics(task, head(data["test"][0]).numpy(), data["test"][1].numpy())
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / PROBE_FILE))
    return result
