"""A budget that follows the data: warm-up kept as a share, a minimum of steps, a chance warning."""
from __future__ import annotations

import pytest

from train.engine.budget import near_chance_warning, plan_budget


def test_small_data_gets_a_smaller_batch_then_more_epochs_with_the_same_warmup_share() -> None:
    # 36 samples at batch 32 on one process: 2 steps per epoch; 10 epochs would be 20 steps.
    # Batch 8 gives ceil(36 / 8) = 5 steps per epoch; 300 steps then take 60 epochs.
    b = plan_budget(36, 32, 1, epochs=10, warmup_epochs=5, min_steps=300)
    assert (b.batch_size, b.steps_per_epoch, b.epochs, b.total_steps) == (8, 5, 60, 300)
    assert b.warmup_epochs == 30  # 5/10 of the run, as asked
    assert "20 steps" in b.note and "batch 8 and 60 epochs" in b.note and "--min-steps 0" in b.note
    # A batch that suffices on its own: 1000 samples, 10 epochs, 300 steps -> 30 per epoch -> batch 33 -> 31 steps.
    b = plan_budget(1000, 64, 1, epochs=10, warmup_epochs=1, min_steps=300)
    assert (b.batch_size, b.steps_per_epoch, b.epochs) == (33, 31, 10)


def test_enough_steps_or_min_steps_zero_keep_the_epochs() -> None:
    assert plan_budget(1259, 32, 1, 10, 5, 300) == plan_budget(1259, 32, 1, 10, 5, 0)
    assert plan_budget(1259, 32, 1, 10, 5, 300).note is None and plan_budget(1259, 32, 1, 10, 5, 300).epochs == 10
    # Two processes halve the steps per epoch: 1259 / 64 -> 20, so 200 steps in 10 epochs; 30 per epoch are
    # needed, batch 1259 // 60 = 20 gives ceil(1259 / 40) = 32 steps per epoch, 320 in the same 10 epochs.
    b = plan_budget(1259, 32, 2, 10, 5, 300)
    assert (b.batch_size, b.steps_per_epoch, b.epochs) == (20, 32, 10)


@pytest.mark.parametrize(("epochs", "warmup"), [(10, 10), (5, 7), (3, -1)])
def test_a_warmup_as_long_as_the_run_is_refused(epochs: int, warmup: float) -> None:
    with pytest.raises(ValueError, match="warm-up must be shorter than the run"):
        plan_budget(100, 8, 1, epochs, warmup, 0)


def test_near_chance_warning_uses_two_binomial_standard_errors() -> None:
    # 4 classes, 40 validation samples: chance 0.25 +- 2 * sqrt(0.25 * 0.75 / 40) = 0.25 +- 0.137.
    assert near_chance_warning("single-label", 4, 0.38, 40, "accuracy") is not None
    assert near_chance_warning("single-label", 4, 0.39, 40, "accuracy") is None
    msg = near_chance_warning("single-label", 4, 0.25, 40, "accuracy")
    assert "0.250 +- 0.137" in msg and "--epochs" in msg
    assert near_chance_warning("multi-label", 4, 0.0, 40, "f1_macro") is None  # no single chance level
