"""A training budget that follows the data, and a warning when a run learned nothing.

Paper presets count epochs (CMPT: 10 epochs, 5 of them warm-up at 0.1x lr). On a small
user data set that is a handful of optimiser steps: 40 samples at batch 32 make 20 steps
in 10 epochs, too few to leave chance level. A run that would make fewer than
``min_steps`` steps is therefore given more: first a smaller batch (down to
``MIN_BATCH``; more steps per epoch cost no extra validation), then more epochs. The
warm-up stays the same *share of the run* (warm-up epochs / epochs). A printed line says
what changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.errors import ConfigError


MIN_BATCH = 8


@dataclass(frozen=True)
class Budget:
    epochs: int
    warmup_epochs: float
    batch_size: int  # per process
    steps_per_epoch: int
    note: str | None  # set when the requested budget was changed

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def plan_budget(num_train: int, batch_size: int, num_processes: int, epochs: int, warmup_epochs: float,
                min_steps: int) -> Budget:
    """At least ``min_steps`` optimiser steps: a smaller batch first, then more epochs; same warm-up share.

    Refuses a warm-up as long as the run (the whole run would train at 0.1x lr).
    """
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if warmup_epochs < 0 or warmup_epochs >= epochs:
        raise ConfigError(f"--warmup-epochs {warmup_epochs:g} with --epochs {epochs}: the warm-up must be shorter than "
                         f"the run (else every step trains at 0.1x lr); try --warmup-epochs {max(0, epochs // 10)}")

    def steps(batch: int) -> int:
        return max(1, math.ceil(num_train / (batch * num_processes)))

    if min_steps <= 0 or epochs * steps(batch_size) >= min_steps:
        return Budget(epochs, warmup_epochs, batch_size, steps(batch_size), None)
    per_epoch_needed = math.ceil(min_steps / epochs)
    batch = max(min(batch_size, MIN_BATCH), min(batch_size, num_train // (per_epoch_needed * num_processes)))
    longer = max(epochs, math.ceil(min_steps / steps(batch)))
    warm = warmup_epochs * longer / epochs
    changes = ([f"batch {batch}"] if batch != batch_size else []) + ([f"{longer} epochs"] if longer != epochs else [])
    note = (f"{num_train} training samples at batch {batch_size} x {num_processes} process(es) make "
            f"{steps(batch_size)} steps per epoch, so {epochs} epochs would be {epochs * steps(batch_size)} steps; "
            f"training with {' and '.join(changes)} ({longer * steps(batch)} steps, warm-up {warm:g} epochs: the same "
            f"share) to reach --min-steps {min_steps} (--min-steps 0 keeps the budget as given)")
    return Budget(longer, warm, batch, steps(batch), note)


def chance_level(task: str, num_classes: int) -> float | None:
    """The headline metric of a constant guess: 1/C accuracy for single-label, AUROC 0.5 for binary."""
    if task == "single-label":
        return 1.0 / num_classes
    if task == "binary":
        return 0.5
    return None  # multi-label F1 has no single chance value


def near_chance_warning(task: str, num_classes: int, score: float, num_val: int, metric: str) -> str | None:
    """A message when the kept validation score is within two binomial standard errors of chance."""
    chance = chance_level(task, num_classes)
    if chance is None or num_val <= 0 or not math.isfinite(score):
        return None
    noise = 2.0 * math.sqrt(chance * (1.0 - chance) / num_val)
    if score > chance + noise:
        return None
    return (f"validation {metric} {score:.3f} is within noise of chance ({chance:.3f} +- {noise:.3f} on {num_val} "
            "samples): the model has not learned the task. Try more optimiser steps (--epochs, or a smaller "
            "--batch-size), a shorter warm-up (--warmup-epochs), another --lr, or check the labels and inputs.")
