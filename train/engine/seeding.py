"""One place that seeds every RNG a run touches."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling order depends only on (seed, epoch), so a resumed run replays the same batches."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)
