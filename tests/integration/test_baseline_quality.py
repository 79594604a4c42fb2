"""Logistic regression and LightGBM baselines trained and scored on the real time split.

Their features on hand-made examples: tests/unit/test_baselines.py.
"""

import numpy as np
import pytest

from ubm_build.inputs.features import FEATURE_NAMES
from ubm_build.model.baselines import POPULARITY_NAMES, Popularity, design_matrix, run_baselines
from ubm_build.model.quality import evaluate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def results(examples):
    return run_baselines(examples)


def test_both_baselines_rank_the_test_window_better_than_chance(examples, results):
    labels = np.array([ex.label for ex in examples["test"]])
    for name, result in results.items():
        metrics = evaluate(labels, result.test_probabilities, uncalibrated=result.test_uncalibrated)
        print(name, f"best_iteration={result.best_iteration}", metrics.to_dict())
        assert metrics.roc_auc > 0.6
        assert metrics.pr_auc > labels.mean()
        assert metrics.ece < 0.05


def test_scores_cover_the_windows_and_probabilities_are_probabilities(examples, results):
    assert list(results) == ["logistic_regression", "lightgbm"]
    for result in results.values():
        assert result.valid_scores.shape == (len(examples["valid"]),)
        assert result.test_scores.shape == result.test_probabilities.shape
        assert result.test_probabilities.shape == (len(examples["test"]),)
        assert ((result.test_probabilities > 0) & (result.test_probabilities < 1)).all()
    assert results["lightgbm"].best_iteration > 0
    assert results["logistic_regression"].best_iteration is None


def test_runs_are_deterministic(examples, results):
    """LightGBM subsamples rows and columns: its seed must fix them."""
    again = run_baselines(examples)
    for name, result in results.items():
        np.testing.assert_array_equal(result.test_probabilities, again[name].test_probabilities)


def test_design_matrix_of_real_examples_is_finite(examples):
    popularity = Popularity(examples["train"])
    matrix = design_matrix(examples["valid"][:50], popularity)
    assert matrix.shape == (50, len(FEATURE_NAMES) + len(POPULARITY_NAMES))
    assert np.isfinite(matrix).all()
