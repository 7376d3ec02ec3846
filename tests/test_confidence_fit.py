"""Temperature scaling, ECE, conformal coverage and abstention on synthetic data (numpy only)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from calibration.conformal import covered, fit_section, lac_scores, prediction_sets, select_threshold
from calibration.temperature import ece, fit_temperature, metrics
from runtime.confidence import (Confidence, InsufficientCalibrationWarning, conformal_quantile, samples_needed,
                                softmax)


def calibrated_model(n: int, k: int, seed: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a perfectly calibrated model: labels are drawn from softmax(logits)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (n, k))
    p = softmax(z)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, y


@pytest.mark.parametrize("true_t", [2.5, 0.4])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    z, y = calibrated_model(10000, 10, seed=1)
    t = fit_temperature(z * true_t, y)  # over- (2.5) or under-confident (0.4) by a known factor
    assert abs(t - true_t) / true_t < 0.05, t
    assert abs(fit_temperature(z, y) - 1.0) < 0.05  # already calibrated: T ~ 1


def test_multi_label_fit_recovers_one_temperature_on_sigmoids() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2.0, (5000, 6))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float64)
    t = fit_temperature(z * 2.5, y, multi_label=True)
    assert abs(t - 2.5) / 2.5 < 0.05, t


def test_ece_of_a_calibrated_model_is_near_zero_and_scaling_hurts_it() -> None:
    z, y = calibrated_model(100000, 5, seed=3)
    assert ece(softmax(z), y) < 0.01
    assert ece(softmax(z * 2.5), y) > 0.1  # overconfident
    m = metrics(softmax(z * 2.5), y)
    assert m["ece_bins"] == 15 and m["ece_binning"] == "equal-mass"


def test_ece_matches_a_hand_computation() -> None:
    # 30 predictions, 15 equal-mass bins of 2. Bin b: both have top-1 confidence c_b = 0.51 + 0.03 b and
    # b % 3 of the two are right (accuracy 0, 0.5, 1, 0, ...). By hand, sum_b |acc_b - c_b| =
    #  .51 .02 .43 .60 .13 .34 .69 .22 .25 .78 .31 .16 .87 .40 .07  = 5.80, and ECE = (2/30) * 5.80.
    conf = np.repeat(0.51 + 0.03 * np.arange(15), 2)
    right = np.array([[False, False], [True, False], [True, True]] * 5).ravel()
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(right, 0, 1)
    assert ece(probs, labels) == pytest.approx(5.80 / 15, abs=1e-12)


def test_ece_bins_by_mass_not_width() -> None:
    # every confidence in [0.9, 0.91): equal-width bins would put all 30 in one bin; equal-mass makes 15
    conf = np.linspace(0.9, 0.909, 30)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([0, 1] * 15)  # pairs (right, wrong) per bin: accuracy 0.5 everywhere
    assert ece(probs, labels) == pytest.approx(float(np.mean(np.abs(0.5 - conf.reshape(15, 2).mean(axis=1)))))


def test_conformal_quantile_is_the_kth_smallest_score() -> None:
    scores = np.arange(1, 20) / 20.0  # n = 19: k = ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.1) == pytest.approx(scores[17])
    assert samples_needed(0.1) == 9 and conformal_quantile(scores[:8], 0.1) == math.inf
    assert conformal_quantile(scores[:9], 0.1) == pytest.approx(scores[8])


# Three "patterns" of different difficulty (the logit scale): one quantile each (Mondrian).
PATTERNS = {"audio+image": 3.0, "image": 1.5, "audio": 0.7}


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_coverage_over_many_random_splits_is_within_bounds_per_pattern(alpha: float) -> None:
    """Exchangeable calibration/test splits of a fixed pool: mean coverage over 300 splits is within
    [1 - alpha - tol, 1 - alpha + 1/(n+1) + tol]; tol = 0.01 is ~4 standard errors of that mean."""
    n, pool, splits, tol = 100, 600, 300, 0.01
    for i, (key, scale) in enumerate(PATTERNS.items()):
        z, y = calibrated_model(pool, 10, seed=10 + i, scale=scale)
        p = softmax(z * 1.7)  # miscalibrated on purpose: coverage must not depend on calibration
        rng = np.random.default_rng(100 + i)
        cov, size = [], []
        for _ in range(splits):
            perm = rng.permutation(pool)
            cal, test = perm[:n], perm[n:]
            q = conformal_quantile(np.sort(lac_scores(p[cal], y[cal])), alpha)
            sets = prediction_sets(p[test], q)
            cov.append(covered(sets, y[test]).mean())
            size.append(sets.sum(axis=1).mean())
        mean = float(np.mean(cov))
        assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n + 1) + tol, (key, mean)
        assert np.mean(size) < 10  # not the trivial all-labels set


def test_coverage_of_the_export_fit_through_the_runtime_per_pattern() -> None:
    """The shipped path: fit_section (T, then scores on the same samples), applied by runtime.Confidence.
    T is fitted on the calibration samples too, so exchangeability is approximate; same bounds hold."""
    n, pool, splits, tol, alpha = 200, 800, 100, 0.015, 0.1
    for i, scale in enumerate(PATTERNS.values()):
        z, y = calibrated_model(pool, 10, seed=20 + i, scale=scale)
        z = z * 2.5
        rng = np.random.default_rng(200 + i)
        cov = []
        for _ in range(splits):
            perm = rng.permutation(pool)
            cal, test = perm[:n], perm[n:]
            section, _ = fit_section(z[cal], y[cal], alpha=alpha)
            conf = Confidence.from_section(section, "p", multi_label=False)
            probs = conf.calibrate(z[test].astype(np.float32), None)  # type: ignore[arg-type]
            cov.append(covered(prediction_sets(probs, conf.quantile), y[test]).mean())
        mean = float(np.mean(cov))
        assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n + 1) + tol, mean


def test_multi_label_sets_cover_every_true_label() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(-1, 2.0, (3000, 5))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float64)
    p, alpha, n = 1 / (1 + np.exp(-z)), 0.1, 500
    cov = []
    for _ in range(100):
        perm = rng.permutation(len(z))
        cal, test = perm[:n], perm[n:]
        q = conformal_quantile(np.sort(lac_scores(p[cal], y[cal], multi_label=True)), alpha)
        cov.append(covered(prediction_sets(p[test], q), y[test], multi_label=True).mean())
    assert 1 - alpha - 0.01 <= np.mean(cov) <= 1 - alpha + 1 / (n + 1) + 0.01


def test_abstention_threshold_by_hand() -> None:
    conf = np.array([0.99, 0.95, 0.9, 0.9, 0.8, 0.7, 0.6])
    right = np.array([1, 1, 1, 0, 1, 0, 0], bool)
    # kept from the top: acc 1, 1, 1, .75 (both 0.9s: a threshold cannot split a tie), .8, .667, .571
    got = select_threshold(conf, right, 0.8)
    assert got["threshold"] == 0.8 and got["coverage"] == pytest.approx(5 / 7) and got["selective_accuracy"] == 0.8
    assert select_threshold(conf, right, 0.99)["threshold"] == 0.95
    never = select_threshold(conf, np.zeros(7, bool), 0.5)
    assert never["threshold"] is None and not never["reachable"] and never["coverage"] == 0.0


def test_section_with_too_few_samples_warns_and_claims_no_coverage() -> None:
    z, y = calibrated_model(6, 4, seed=7)
    section, _ = fit_section(z, y, alpha=0.1)
    assert section["n"] == 6 and section["quantile"] is None and "needs >= 9" in section["warnings"][0]
    with pytest.warns(InsufficientCalibrationWarning, match="needs at least 9"):
        conf = Confidence.from_section(section, "image", multi_label=False)
    assert conf.quantile == math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Confidence.from_section(section, "image", multi_label=False, alpha=0.3)  # n=6 suffices for 0.3


def _pred() -> object:
    class P:  # the attributes Confidence.annotate fills
        calibrated_probabilities = prediction_set = set_size = abstained = None
    return P()


def test_one_row_fast_path_matches_hand_numbers_and_the_batch_path() -> None:
    # T = 2 on logits [2, 1, 0]: softmax([1, 0.5, 0]) = [e, e^0.5, 1] / (e + e^0.5 + 1)
    #   = [2.718282, 1.648721, 1] / 5.367003 = [0.506480, 0.307196, 0.186324].
    conf = Confidence("p", 2.0, False, 0.1, 10, quantile=0.6, abstain_threshold=0.55, abstain_always=False)
    one = conf.calibrate(np.array([[2.0, 1.0, 0.0]], np.float32), None)  # type: ignore[arg-type]
    np.testing.assert_allclose(one[0], [0.506480, 0.307196, 0.186324], atol=1e-6)
    pred = _pred()
    conf.annotate([pred], one, ["a", "b", "c"])
    # cut 1 - q = 0.4: only "a" (0.506) reaches it; top-1 0.506 < 0.55 abstains.
    assert pred.prediction_set == ["a"] and pred.set_size == 1 and pred.abstained is True
    # Multi-label, T = 0.5 on [0, -1, 3]: sigmoid([0, -2, 6]) = [0.5, 0.119203, 0.997527].
    multi = Confidence("p", 0.5, True, 0.1, 10, quantile=0.9, abstain_threshold=None, abstain_always=False)
    m1 = multi.calibrate(np.array([[0.0, -1.0, 3.0]], np.float32), None)  # type: ignore[arg-type]
    np.testing.assert_allclose(m1[0], [0.5, 0.119203, 0.997527], atol=1e-6)
    mp = _pred()
    multi.annotate([mp], m1, ["x", "y", "z"])
    assert mp.prediction_set == ["z", "x", "y"] and mp.abstained is None  # cut 0.1: all three, most probable first

    # Against the batch (numpy) path on random rows: same probabilities within one float32 rounding, same
    # sets (order included) and the same abstentions, near the cut and the threshold too.
    rng = np.random.default_rng(0)
    for multi_label in (False, True):
        c = Confidence("p", 1.7, multi_label, 0.1, 10, quantile=0.7, abstain_threshold=0.6, abstain_always=False)
        z = rng.normal(0, 3, (400, 7)).astype(np.float32)
        batch = c.calibrate(z, None)  # type: ignore[arg-type]
        rows = np.concatenate([c.calibrate(z[i:i + 1], None) for i in range(len(z))])  # type: ignore[arg-type]
        np.testing.assert_allclose(rows, batch, rtol=2e-7, atol=1e-9)
        many = [_pred() for _ in z]
        c.annotate(many, rows, list("abcdefg"))
        for i, p in enumerate(many):
            single = _pred()
            c.annotate([single], rows[i:i + 1], list("abcdefg"))
            assert (single.prediction_set, single.set_size, single.abstained) == (p.prediction_set, p.set_size,
                                                                                  p.abstained)
