"""Test-window metrics: ECE, bootstrap intervals, paired comparisons, and the reliability
plot."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ubm_build.model.quality import (
    CI_PERCENTILES,
    compare,
    evaluate,
    expected_calibration_error,
    reliability_plot,
    stratified_bootstrap_weights,
    weighted_roc_auc_and_ap,
)


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from the probabilities themselves: perfectly calibrated, ~6% positive."""
    rng = np.random.default_rng(seed)
    probabilities = rng.beta(0.6, 9.0, size=n)
    return (rng.random(n) < probabilities).astype(int), probabilities


def test_ece_is_near_zero_when_calibrated_and_large_when_shifted():
    labels, probabilities = synthetic(50_000)
    assert expected_calibration_error(labels, probabilities) < 0.01
    shifted = np.clip(probabilities + 0.2, 0, 1)
    assert expected_calibration_error(labels, shifted) == pytest.approx(0.2, abs=0.02)


def test_ece_of_one_bin_by_hand():
    # All in bin [0, 1/15): mean probability 0.05, observed rate 0.5.
    assert expected_calibration_error(np.array([0, 1]), np.array([0.04, 0.06])) == pytest.approx(
        0.45
    )


def test_vectorised_bootstrap_scores_equal_sklearn_with_sample_weight():
    labels, probabilities = synthetic(2_000, seed=1)
    scores = probabilities.round(2)  # many ties
    weights = stratified_bootstrap_weights(labels, 5, seed=3)
    auc, ap = weighted_roc_auc_and_ap(labels, scores, weights)
    for row, w in enumerate(weights):
        assert auc[row] == pytest.approx(roc_auc_score(labels, scores, sample_weight=w))
        assert ap[row] == pytest.approx(average_precision_score(labels, scores, sample_weight=w))


def test_stratified_resamples_keep_the_class_counts():
    labels, _ = synthetic(500)
    weights = stratified_bootstrap_weights(labels, 20, seed=0)
    assert (weights.sum(axis=1) == len(labels)).all()
    assert (weights[:, labels == 1].sum(axis=1) == labels.sum()).all()


def test_evaluate_intervals_bracket_the_point_estimates():
    labels, probabilities = synthetic(1_800)
    metrics = evaluate(labels, probabilities, uncalibrated=probabilities / 2, n_bootstrap=1000)
    assert metrics.roc_auc_ci[0] < metrics.roc_auc < metrics.roc_auc_ci[1]
    assert metrics.pr_auc_ci[0] < metrics.pr_auc < metrics.pr_auc_ci[1]
    assert metrics.roc_auc == pytest.approx(roc_auc_score(labels, probabilities))
    assert metrics.n == 1_800
    assert metrics.positives == labels.sum()
    assert metrics.ece_uncalibrated > metrics.ece
    # The default seed fixes the resamples: these intervals on every run and machine.
    assert metrics.roc_auc_ci == pytest.approx((0.748989252328843, 0.8286454462101032))
    assert metrics.pr_auc_ci == pytest.approx((0.1589249576302126, 0.2779766652217813))


def test_to_dict_lists_every_metric():
    labels, probabilities = synthetic(300)
    record = evaluate(labels, probabilities, n_bootstrap=50).to_dict()
    assert set(record) == {
        "n",
        "positives",
        "roc_auc",
        "roc_auc_ci",
        "pr_auc",
        "pr_auc_ci",
        "log_loss",
        "ece",
        "ece_uncalibrated",
    }
    assert record["ece_uncalibrated"] is None


def test_reliability_plot_writes_a_png(tmp_path):
    labels, probabilities = synthetic(2_000)
    path = tmp_path / "reliability.png"
    reliability_plot(
        {"calibrated": (labels, probabilities), "shifted": (labels, probabilities / 2)}, path
    )
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def two_models(n: int = 3_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, better, reference): both score the same latent log-odds with noise; the better
    model adds less, and most of the reference's noise is shared with it."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(2 * latent - 2)))).astype(int)
    shared = rng.normal(size=n)
    reference = latent + 0.8 * shared + 0.6 * rng.normal(size=n)
    better = latent + 0.8 * shared + 0.1 * rng.normal(size=n)
    return labels, better, reference


def test_a_model_compared_with_itself_differs_by_nothing():
    labels, probabilities = synthetic(1_000)
    comparison = compare(labels, probabilities, probabilities, n_bootstrap=200)
    assert comparison.difference == 0.0
    assert comparison.difference_ci == (0.0, 0.0)
    metrics = evaluate(labels, probabilities, n_bootstrap=200)
    assert comparison.roc_auc == pytest.approx(metrics.roc_auc)
    assert comparison.roc_auc_ci == pytest.approx(metrics.roc_auc_ci)  # the same resamples
    assert set(comparison.to_dict()) == {"roc_auc", "roc_auc_ci", "difference", "difference_ci"}


def test_a_better_model_gets_a_positive_difference():
    labels, better, reference = two_models()
    comparison = compare(labels, better, reference, n_bootstrap=500)
    expected = roc_auc_score(labels, better) - roc_auc_score(labels, reference)
    assert comparison.difference == pytest.approx(expected)
    assert comparison.difference > 0
    assert 0 < comparison.difference_ci[0] < comparison.difference < comparison.difference_ci[1]
    worse = compare(labels, reference, better, n_bootstrap=500)
    assert worse.difference == pytest.approx(-comparison.difference)
    assert worse.difference_ci[1] < 0


def test_pairing_narrows_the_interval_of_the_difference():
    """Resampling both models together cancels the noise their scores share; resampling them
    independently (or setting their two intervals side by side) does not."""
    labels, better, reference = two_models()
    paired = compare(labels, better, reference, n_bootstrap=500)
    paired_width = paired.difference_ci[1] - paired.difference_ci[0]

    alone = compare(labels, reference, reference, n_bootstrap=500)
    side_by_side = (
        paired.roc_auc_ci[1] - alone.roc_auc_ci[0] - (paired.roc_auc_ci[0] - alone.roc_auc_ci[1])
    )
    own = weighted_roc_auc_and_ap(labels, better, stratified_bootstrap_weights(labels, 500, 1))[0]
    other = weighted_roc_auc_and_ap(
        labels, reference, stratified_bootstrap_weights(labels, 500, 2)
    )[0]
    low, high = np.percentile(own - other, CI_PERCENTILES)
    assert paired_width < 0.5 * (high - low)
    assert paired_width < 0.5 * side_by_side
