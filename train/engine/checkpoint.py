"""Resumable checkpoints without pickle.

Weights go to safetensors; the optimizer state goes through torch.save and
is read back with ``torch.load(weights_only=True)`` (tensors and plain
Python values only); progress counters go to JSON. Every write lands in a
temporary directory first and is renamed into place, so a crash leaves the
previous checkpoint intact rather than a half-written one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from runtime.atomic import atomic_dir, write_json_atomic  # noqa: F401  (re-exported: runs and checkpoints use them)

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone breaks the sharing.
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    with atomic_dir(Path(directory)) as tmp:
        save_file(_contiguous(model.state_dict()), str(tmp / WEIGHTS))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        (tmp / STATE).write_text(json.dumps(state, indent=2))


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    directory = Path(directory)
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER, weights_only=True))
    return json.loads((directory / STATE).read_text())


def has_checkpoint(directory: Path) -> bool:
    return all((Path(directory) / f).is_file() for f in (WEIGHTS, OPTIMIZER, STATE))
