"""Deterministic, seeded, stratified splitting and subsampling (shared by every loader)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np

from train.data.types import Sample


def _groups(keys: Sequence[Hashable]) -> list[list[int]]:
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    # sort by key repr so the result does not depend on dict insertion order
    return [groups[k] for k in sorted(groups, key=repr)]


def stratified_split(keys: Sequence[Hashable], val: float, test: float, seed: int) -> dict[str, list[int]]:
    """Indices per split; each class (key) is split val/test/rest on its own, so ratios hold per class."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split fractions need 0 <= val, test and val + test < 1; got val={val}, test={test}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for idx in _groups(keys):
        perm = [idx[i] for i in rng.permutation(len(idx))]
        n_val, n_test = round(len(idx) * val), round(len(idx) * test)
        out["val"] += perm[:n_val]
        out["test"] += perm[n_val:n_val + n_test]
        out["train"] += perm[n_val + n_test:]
    return {k: sorted(v) for k, v in out.items()}


def stratified_subset(keys: Sequence[Hashable], limit: int, seed: int) -> list[int]:
    """At most ``limit`` indices, class proportions kept (every class kept when limit allows), original order."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    n = len(keys)
    if limit >= n:
        return list(range(n))
    groups = _groups(keys)
    sizes = np.array([len(g) for g in groups])
    quota = np.ones(len(groups), dtype=int) if limit >= len(groups) else np.zeros(len(groups), dtype=int)
    remaining = limit - int(quota.sum())
    cap = sizes - quota
    if remaining > 0:  # largest-remainder apportionment of what is left, proportional to class size
        share = remaining * cap / cap.sum()
        quota += np.floor(share).astype(int)
        order = np.argsort(-(share - np.floor(share)), kind="stable")
        for g in order[: limit - int(quota.sum())]:
            quota[g] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for g, q in zip(groups, quota):
        chosen += [g[i] for i in rng.permutation(len(g))[:q]]
    return sorted(chosen)


def limit_splits(splits: dict[str, list[Sample]], limit: int | None, seed: int) -> dict[str, list[Sample]]:
    """Cap every split at ``limit`` samples, stratified by label, deterministic for a seed."""
    if limit is None:
        return splits
    return {name: [samples[i] for i in stratified_subset([s.label for s in samples], limit, seed)]
            for name, samples in splits.items()}
