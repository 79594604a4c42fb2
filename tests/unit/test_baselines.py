"""The baselines on synthetic separable features (on the real time split and point-in-time
features: tests/integration/test_baseline_quality.py)."""

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from ubm_build.model.baselines import run_baselines

WINDOWS = ("train", "valid", "test")


def synthetic(seed: int = 0, n: int = 600, width: int = 6):
    """Features whose first two columns set the log-odds of the label; the rest are noise."""
    rng = np.random.default_rng(seed)
    features, labels = {}, {}
    for window in WINDOWS:
        x = rng.normal(size=(n, width)).astype(np.float32)
        log_odds = 2.5 * x[:, 0] - 2.0 * x[:, 1] - 1.0
        features[window] = x
        labels[window] = (rng.random(n) < expit(log_odds)).astype(int)
    return features, labels


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def results(data):
    return run_baselines(*data)


def test_both_baselines_rank_the_test_window_well(data, results):
    _, labels = data
    assert list(results) == ["logistic_regression", "lightgbm"]
    for name, result in results.items():
        assert result.name == name
        assert result.valid_scores.shape == result.test_scores.shape == labels["test"].shape
        assert roc_auc_score(labels["test"], result.test_scores) > 0.8, name
        assert roc_auc_score(labels["test"], result.test_probabilities) > 0.8, name
        assert result.fit_seconds > 0, name
    assert results["logistic_regression"].best_iteration is None
    assert results["lightgbm"].best_iteration >= 1


def test_the_probabilities_are_calibrated(data, results):
    _, labels = data
    rate = labels["test"].mean()
    for name, result in results.items():
        probabilities = result.test_probabilities
        assert ((probabilities > 0) & (probabilities < 1)).all(), name
        assert probabilities.mean() == pytest.approx(rate, abs=0.05), name
        # Platt scaling is monotone: it keeps the model's own ranking.
        order = np.argsort(result.test_scores)
        assert (np.diff(probabilities[order]) >= -1e-12).all(), name
        np.testing.assert_allclose(result.test_uncalibrated, expit(result.test_scores))


def test_the_test_labels_are_never_read(data, results):
    features, labels = data
    flipped = {**labels, "test": 1 - labels["test"]}
    again = run_baselines(features, flipped)
    for name, result in results.items():
        np.testing.assert_array_equal(again[name].test_scores, result.test_scores)
        np.testing.assert_array_equal(again[name].test_probabilities, result.test_probabilities)
