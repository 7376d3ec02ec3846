"""Availability masks: exact counts per protocol, seeded determinism, nobody loses everything."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from runtime.patterns import Pattern
from train.data.masks import apply_patterns, missing_case, one_full_other_partial, random_missing
from train.data.types import Sample

TWO = ["image", "text"]
THREE = ["audio", "image", "text"]


def keys(patterns: list[Pattern]) -> Counter[str]:
    return Counter(p.key for p in patterns)


@pytest.mark.parametrize(("n", "eta", "lost"), [(100, 0.7, 70), (101, 0.7, 71), (5, 0.5, 3), (7, 0.5, 4), (10, 0.0, 0), (10, 1.0, 10)])
def test_missing_single_modality_counts(n: int, eta: float, lost: int) -> None:
    pats = missing_case(n, TWO, eta, "missing-text", seed=0)
    assert len(pats) == n
    assert keys(pats) == Counter({k: v for k, v in {"image": lost, "image+text": n - lost}.items() if v})


def test_missing_both_splits_eta_between_the_two() -> None:
    pats = missing_case(101, TWO, 0.7, "missing-both", seed=0)  # round(70.7) = 71 incomplete
    assert keys(pats) == Counter({"text": 36, "image": 35, "image+text": 30})
    assert keys(missing_case(100, TWO, 1.0, "missing-both", seed=5)) == Counter({"text": 50, "image": 50})


def test_missing_all_generalises_to_three_modalities() -> None:
    pats = missing_case(90, THREE, 0.5, "missing-all", seed=1)  # 45 incomplete, 15 per modality
    assert keys(pats) == Counter({"audio+image+text": 45, "image+text": 15, "audio+text": 15, "audio+image": 15})
    assert all(len(p) >= 2 for p in pats)
    with pytest.raises(ValueError, match="missing-all"):
        missing_case(90, THREE, 0.5, "missing-both", seed=1)


def test_seeded_determinism_and_seeds_differ() -> None:
    for make in (lambda s: missing_case(200, TWO, 0.5, "missing-both", s), lambda s: random_missing(200, THREE, 0.5, s),
                 lambda s: one_full_other_partial(200, THREE, "image", 0.3, s)):
        assert make(3) == make(3) and make(3) != make(4)
        assert keys(make(3)) == keys(make(3))


def test_one_full_other_partial_exact_presence() -> None:
    pats = one_full_other_partial(50, THREE, "text", 0.3, seed=0)
    assert all("text" in p for p in pats)
    assert sum("audio" in p for p in pats) == 15 and sum("image" in p for p in pats) == 15
    assert keys(one_full_other_partial(10, TWO, "image", 1.0, seed=0)) == Counter({"image+text": 10})
    assert keys(one_full_other_partial(10, TWO, "image", 0.0, seed=0)) == Counter({"image": 10})


def test_random_missing_counts_and_never_empty() -> None:
    pats = random_missing(300, THREE, 0.4, seed=2)
    c = keys(pats)
    assert c["audio+image+text"] == 180 and sum(c.values()) == 300
    assert len(c) == 7  # every partial pattern appears with 120 draws over 6 options
    assert keys(random_missing(40, TWO, 1.0, seed=0))["image+text"] == 0


@pytest.mark.parametrize(("call", "match"), [
    (lambda: missing_case(10, TWO, 1.5, "missing-text", 0), "eta"),
    (lambda: missing_case(10, TWO, -0.1, "missing-text", 0), "eta"),
    (lambda: missing_case(10, TWO, 0.5, "missing-audio", 0), "unknown case"),
    (lambda: missing_case(10, ["image"], 0.5, "missing-image", 0), "at least 2"),
    (lambda: missing_case(10, ["a", "a"], 0.5, "missing-a", 0), "distinct"),
    (lambda: one_full_other_partial(10, TWO, "audio", 0.5, 0), "'audio' is not one of"),
    (lambda: one_full_other_partial(10, TWO, "image", 2, 0), "present_fraction"),
    (lambda: random_missing(-1, TWO, 0.5, 0), "non-negative"),
])
def test_argument_validation(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_apply_patterns_keeps_data_missingness() -> None:
    img, txt = np.zeros((2, 2), np.uint8), "hello"
    samples = [Sample("a", {"image": img, "text": txt}, 0), Sample("b", {"image": img}, 1), Sample("c", {"image": img, "text": txt}, 0)]
    out = apply_patterns(samples, [Pattern(["image"]), Pattern(TWO), Pattern(["text"])])
    assert [s.pattern.key for s in out] == ["image", "image", "text"]  # b stays image-only
    assert [s.id for s in out] == ["a", "b", "c"] and samples[0].pattern.key == "image+text"  # inputs not mutated
    with pytest.raises(ValueError, match="'b'"):
        apply_patterns(samples, [Pattern(TWO), Pattern(["text"]), Pattern(TWO)])
    kept = apply_patterns(samples, [Pattern(TWO), Pattern(["text"]), Pattern(TWO)], on_empty="keep")
    assert kept[1].pattern.key == "image"
    with pytest.raises(ValueError, match="2 samples but 3"):
        apply_patterns(samples[:2], [Pattern(TWO)] * 3)
