"""The validation split a run selects its epoch on: the data's own, or one carved out of train.

Selecting an epoch on training data would reward memorising it, so a dataset without a
validation split (a user's own train/test split, as most public sets come) gets a
stratified, seeded slice of its training samples instead, reported in metrics.json.
"""
from __future__ import annotations

from collections.abc import Sequence

from train.data.splits import stratified_split
from train.data.types import Sample

# How a run's kept epoch is chosen. "patterns": the mean validation headline metric over
# every availability pattern, each through its own branch (what the runtime serves when
# sensors drop out). "complete": the model's forward on the validation samples as given.
# "last": the last epoch.
SELECTIONS: tuple[str, ...] = ("patterns", "complete", "last")


def ensure_validation_split(train: Sequence[Sample], val: Sequence[Sample], fraction: float, seed: int
                            ) -> tuple[list[Sample], list[Sample], int]:
    """(train, val, number of samples carved): ``val`` as given when it has samples."""
    if val:
        return list(train), list(val), 0
    if not 0 < fraction < 1:
        raise ValueError(f"the data has no validation split and val_fraction={fraction}; pass a fraction in "
                         "(0, 1) to carve one out of train, or add \"split\": \"val\" lines to samples.jsonl")
    keys = [s.label if isinstance(s.label, (int, str)) else tuple(s.label) for s in train]  # type: ignore[arg-type]
    idx = stratified_split(keys, val=fraction, test=0.0, seed=seed)
    if not idx["val"] or not idx["train"]:
        raise ValueError(f"the data has no validation split and {len(train)} training samples are too few to "
                         f"carve a {fraction:.0%} one; add \"split\": \"val\" lines to samples.jsonl")
    from train.engine.distributed import process_state

    if process_state().is_main_process:
        print(f"no validation split: using {len(idx['val'])} of {len(train)} training samples "
              f"(stratified, seed {seed}) to choose the epoch", flush=True)
    return [train[i] for i in idx["train"]], [train[i] for i in idx["val"]], len(idx["val"])
