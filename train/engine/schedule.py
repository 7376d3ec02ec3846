"""The CMPT paper's schedule: warm-up epochs at 0.1x lr, then polynomial decay (power 0.9)."""
from __future__ import annotations

from collections.abc import Callable


def poly_warmup(total_steps: int, warmup_steps: int, power: float = 0.9, warmup_factor: float = 0.1) -> Callable[[int], float]:
    """An lr multiplier for torch.optim.lr_scheduler.LambdaLR."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_factor
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - min(progress, 1.0)) ** power

    return factor
