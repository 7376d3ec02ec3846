"""runtime.prediction: the batch-1 fast path and the batch path must agree on every result."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import BundleIntegrityError, InferenceError, NonFiniteInput
from runtime.prediction import Packer

OUTS = ["logits", "probabilities", "fused_embedding"]


def packer(n_labels: int, multi: bool = False, outputs: list[str] = OUTS) -> Packer:
    return Packer("image", outputs, [f"L{i}" for i in range(n_labels)], multi)


@pytest.mark.parametrize("n_labels", [3, 10, 64, 65, 300])  # both sides of the Python-sort threshold
def test_single_and_batch_paths_agree(n_labels: int) -> None:
    rng = np.random.default_rng(n_labels)
    logits = rng.normal(size=(4, n_labels)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[:, 1] = probs[:, 0]  # a tie: label order must break it on both paths
    emb = rng.normal(size=(4, 8)).astype(np.float32)
    pk = packer(n_labels)
    batch = pk([logits, probs, emb], 5, {}, {})
    for i, b in enumerate(batch):
        (one,) = pk([logits[i:i + 1], probs[i:i + 1], emb[i:i + 1]], 5, {}, {})
        assert one.top == b.top and one.batch_size == 1 and b.batch_size == 4
        np.testing.assert_array_equal(one.probabilities, b.probabilities)
        np.testing.assert_array_equal(one.embedding, emb[i])
        expect = sorted(range(n_labels), key=lambda j: (-probs[i, j], j))[: min(5, n_labels)]
        assert [t[0] for t in one.top] == [f"L{j}" for j in expect]


def test_top_k_is_clamped_and_ties_keep_label_order() -> None:
    probs = np.array([[0.25, 0.25, 0.25, 0.25]], dtype=np.float32)
    (p,) = packer(4)([probs.copy(), probs, np.zeros((1, 2), np.float32)], 99, {}, {})
    assert [t[0] for t in p.top] == ["L0", "L1", "L2", "L3"]
    (p,) = packer(4)([probs.copy(), probs, np.zeros((1, 2), np.float32)], 0, {}, {})
    assert len(p.top) == 1


def test_probabilities_from_logits_when_the_graph_has_none() -> None:
    logits = np.array([[0.0, np.log(3.0)]], dtype=np.float32)
    (single,) = packer(2, outputs=["logits"])([logits], 2, {}, {})
    np.testing.assert_allclose(single.probabilities, [0.25, 0.75], rtol=1e-6)
    (multi,) = packer(2, multi=True, outputs=["logits"])([logits], 2, {}, {})
    np.testing.assert_allclose(multi.probabilities, [0.5, 0.75], rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_non_finite_outputs_raise_typed_errors(batch: int) -> None:
    probs = np.full((batch, 3), 1 / 3, dtype=np.float32)
    probs[-1, 2] = np.nan
    with pytest.raises(InferenceError, match="NaN/Inf outputs on finite inputs"):
        packer(3)([probs.copy(), probs, np.zeros((batch, 2), np.float32)], 1, {}, {"x": np.ones(2, np.float32)})
    with pytest.raises(NonFiniteInput, match="overflow"):
        packer(3)([probs.copy(), probs, np.zeros((batch, 2), np.float32)], 1, {},
                  {"x": np.array([np.inf], np.float16)})


def test_infinite_logits_with_finite_probabilities_pass() -> None:
    logits = np.array([[np.inf, -np.inf, 0.0]], dtype=np.float32)  # saturated scores: valid
    probs = np.array([[0.5, 0.5, 0.0]], dtype=np.float32)
    (p,) = packer(3)([logits, probs, np.zeros((1, 2), np.float32)], 2, {}, {})
    assert p.label == "L0"


def test_a_graph_without_scores_is_a_bundle_error() -> None:
    with pytest.raises(BundleIntegrityError, match="neither logits nor probabilities"):
        packer(3, outputs=["fused_embedding"])
