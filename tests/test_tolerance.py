"""The one comparator and tolerance (calibration/compare.py), on hand-made outputs with numbers
computed by hand: per-output limits, the tolerance that would have passed, margin-aware top-1
agreement and the task-metric delta (the INT8 acceptance)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from calibration.compare import INT8_TOLERANCE, PARITY_TOLERANCES, Tolerance, compare, top1_margin
from export.validate import compare_outputs

# Reference (fp32) probabilities, three classes. Top-1 margins by hand: 0.85, 0.30, 0.02, 0.01, 0.50.
REF = np.array([[0.90, 0.05, 0.05],
                [0.60, 0.30, 0.10],
                [0.40, 0.38, 0.22],   # near tie
                [0.34, 0.33, 0.33],   # near tie
                [0.10, 0.70, 0.20]])
# The reduced graph: both near ties flip (to class 1 and class 2); the confident rows keep their class.
GOT = np.array([[0.88, 0.06, 0.06],
                [0.58, 0.31, 0.11],
                [0.38, 0.40, 0.22],
                [0.33, 0.33, 0.34],
                [0.12, 0.68, 0.20]])


def outputs(probs: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": np.log(probs), "probabilities": probs, "fused_embedding": np.ones((len(probs), 4))}


def test_margin_is_the_gap_between_the_two_highest_probabilities() -> None:
    np.testing.assert_allclose(top1_margin("single-label", REF), [0.85, 0.30, 0.02, 0.01, 0.50], atol=1e-12)
    np.testing.assert_allclose(top1_margin("multi-label", np.array([[0.52, 0.9]])), [[0.02, 0.4]], atol=1e-12)


def test_near_ties_are_left_out_of_top1_agreement_and_the_metric_decides() -> None:
    labels = np.array([0, 0, 1, 2, 1])  # fp32 predicts 0,0,0,0,1: 3/5 right; the flipped graph gets 5/5
    c = compare(outputs(REF), outputs(GOT), labels=labels)
    assert c.top1_agreement == pytest.approx(3 / 5)
    assert c.confident(0.05) == (3, 1.0)  # rows 0, 1, 4
    assert c.metric_ref == pytest.approx(0.6) and c.metric_got == pytest.approx(1.0)
    assert c.metric_delta == pytest.approx(0.4)
    int8 = PARITY_TOLERANCES["int8"]
    assert int8.top1_margin == 0.05 and int8.max_metric_drop == 0.01 and c.passes(int8)
    # without the margin the same graph fails on the near ties, and the message says what would pass
    everything = Tolerance(min_top1=0.97)
    [line] = c.failures(everything)
    assert "top1_agreement = 0.6, needs >= 0.97 over 5 rows (passes with min_top1=0.6)" in line, line
    assert compare(outputs(REF), outputs(GOT)).passes(Tolerance(min_top1=0.6))


def test_a_metric_drop_fails_int8_even_when_confident_rows_agree() -> None:
    labels = np.array([0, 0, 0, 0, 1])  # = fp32's predictions: fp32 5/5, the flipped graph 3/5
    c = compare(outputs(REF), outputs(GOT), labels=labels)
    assert c.metric_delta == pytest.approx(-0.4) and c.confident(0.05) == (3, 1.0)
    [failure] = c.failed(PARITY_TOLERANCES["int8"], pattern="audio", precision="int8")
    assert failure.check == "max_metric_drop" and failure.value == pytest.approx(-0.4)
    text = str(failure)
    assert text.startswith("pattern audio [int8] output 'probabilities': metric_delta = -0.4, needs >= -0.01")
    assert "task metric 0.6000 vs reference 1.0000" in text and "passes with max_metric_drop=0.4" in text
    assert c.passes(Tolerance(min_top1=0.97, top1_margin=0.05, max_metric_drop=0.4))


def test_parity_result_reports_both_acceptance_numbers() -> None:
    r = compare_outputs("audio", "int8", outputs(REF), outputs(GOT), labels=np.array([0, 0, 1, 2, 1]))
    d = r.to_dict()
    assert d["passed"] and d["top1_agreement"] == pytest.approx(0.6)
    assert d["confident_samples"] == 3 and d["confident_top1_agreement"] == 1.0
    assert d["metric_delta"] == pytest.approx(0.4) and d["tolerance"]["top1_margin"] == 0.05


def test_multi_label_margin_is_per_label_distance_from_the_threshold() -> None:
    ref = np.array([[0.52, 0.90], [0.10, 0.70]])
    got = np.array([[0.48, 0.91], [0.12, 0.69]])  # only the 0.52 label flips (margin 0.02)
    c = compare({"probabilities": ref}, {"probabilities": got}, task="multi-label")
    assert c.top1_agreement == pytest.approx(3 / 4) and c.confident(0.05) == (3, 1.0)


def test_per_output_limits_with_a_default_and_the_tolerance_that_would_pass() -> None:
    ref = {"logits": np.array([[2.0, -1.0], [0.5, 1.0]]), "fused_embedding": np.ones((2, 3))}
    got = {"logits": np.array([[2.003, -1.0], [0.5, 1.0]]), "fused_embedding": np.ones((2, 3))}
    got["fused_embedding"][0, 0] += 2.5e-4
    c = compare(ref, got)
    assert c.outputs["logits"].max_abs == pytest.approx(0.003) and c.outputs["logits"].rel == pytest.approx(0.0015)
    assert c.outputs["fused_embedding"].max_abs == pytest.approx(2.5e-4)
    tol = Tolerance(max_abs={"logits": 1e-2, "": 1e-4})  # logits 1e-2, every other output 1e-4
    [line] = c.failures(tol)
    assert line.startswith("output 'fused_embedding': max_abs = 0.00025") and "needs <= 0.0001" in line, line
    suggested = float(re.search(r"passes with max_abs=([0-9.e-]+)", line).group(1))
    assert suggested >= 2.5e-4 and c.passes(Tolerance(max_abs={"logits": 1e-2, "": suggested}))
    assert c.passes(Tolerance(max_abs={"logits": 1e-2}))  # outputs neither named nor defaulted: unchecked
    assert not c.passes(Tolerance(max_rel=1e-3)) and c.passes(Tolerance(max_rel=0.0015 + 1e-9))


def test_batches_and_concatenated_outputs_compare_the_same() -> None:
    ref, got = outputs(REF), outputs(GOT)
    split = lambda d: [{k: v[:2] for k, v in d.items()}, {k: v[2:] for k, v in d.items()}]  # noqa: E731
    a, b = compare(ref, got), compare(split(ref), split(got))
    assert a.to_dict(INT8_TOLERANCE) == b.to_dict(INT8_TOLERANCE)
    with pytest.raises(ValueError, match="shape"):
        compare(ref, {**got, "logits": got["logits"][:, :2]})


def test_nonfinite_outputs_fail_whatever_the_tolerance() -> None:
    got = outputs(GOT)
    got["logits"] = got["logits"].copy()
    got["logits"][1, 2] = np.nan
    [line] = compare(outputs(REF), got).failures(Tolerance())
    assert "nonfinite = 1" in line and "no tolerance passes non-finite outputs" in line
