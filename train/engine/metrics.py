"""Task metrics: accuracy (single-label), F1 macro/micro (multi-label), AUROC (binary)."""
from __future__ import annotations

import numpy as np

from train.data.types import Task


def task_metrics(task: Task, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``logits`` (N, C); ``labels`` (N,) class indices, or (N, C) multi-hot for multi-label."""
    if len(logits) == 0:
        return {}
    if task == "multi-label":
        from sklearn.metrics import f1_score

        pred = (logits > 0).astype(int)
        return {
            "f1_macro": float(f1_score(labels, pred, average="macro", zero_division=0)),
            "f1_micro": float(f1_score(labels, pred, average="micro", zero_division=0)),
        }
    out = {"accuracy": float((logits.argmax(axis=1) == labels).mean())}
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        scores = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
        out["auroc"] = float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")
    return out


def headline(task: Task) -> str:
    """The metric a table leads with."""
    return "f1_macro" if task == "multi-label" else "accuracy"
