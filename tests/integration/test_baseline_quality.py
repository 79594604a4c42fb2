"""Logistic regression and LightGBM baselines trained and scored on the real time split, on the
point-in-time features the served head reads: each example's session features and its items'
and categories' statistics in the snapshot of its own day.

The features are leak-free: an example's row is the same when the log holds nothing at or after
its prediction time. The baselines on hand-made features: tests/unit/test_baselines.py.
"""

import random
from dataclasses import replace

import numpy as np
import pytest
from conftest import MAX_LENGTH, serving_snapshot

from ubm_build import data
from ubm_build.data.point_in_time import (
    DailySnapshots,
    EventLog,
    point_in_time_inputs,
    snapshot_time,
)
from ubm_build.inputs.model_inputs import FEATURE_NAMES, RecordReader
from ubm_build.model.baselines import run_baselines
from ubm_build.model.quality import evaluate
from ubm_build.model.train import WINDOW_NAMES, labels_of

pytestmark = pytest.mark.integration

LEAK_CHECKS_PER_DAY = 3


@pytest.fixture(scope="module")
def log() -> EventLog:
    return EventLog.read(data.DEFAULT_CSV)


@pytest.fixture(scope="module")
def snapshots(log) -> DailySnapshots:
    return DailySnapshots(log)


@pytest.fixture(scope="module")
def reader(tokenizer) -> RecordReader:
    """Features do not depend on the text: the words are left out."""
    return RecordReader(tokenizer, MAX_LENGTH, serving_snapshot(), snapshot_words=False)


@pytest.fixture(scope="module")
def features(examples, reader, snapshots) -> dict[str, np.ndarray]:
    """Every window's point-in-time features, as `ubm-build train` reads them."""
    return {w: point_in_time_inputs(reader, examples[w], snapshots).features for w in WINDOW_NAMES}


@pytest.fixture(scope="module")
def labels(examples) -> dict[str, np.ndarray]:
    return {w: labels_of(examples[w]) for w in WINDOW_NAMES}


@pytest.fixture(scope="module")
def results(features, labels):
    return run_baselines(features, labels)


def test_both_baselines_rank_the_test_window_better_than_chance(labels, results):
    test = labels["test"]
    for name, result in results.items():
        metrics = evaluate(test, result.test_probabilities, uncalibrated=result.test_uncalibrated)
        print(name, f"best_iteration={result.best_iteration}", metrics.to_dict())
        assert metrics.roc_auc > 0.6
        assert metrics.pr_auc > test.mean()
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


def test_runs_are_deterministic(features, labels, results):
    """LightGBM subsamples rows and columns: its seed must fix them."""
    again = run_baselines(features, labels)
    for name, result in results.items():
        np.testing.assert_array_equal(result.test_probabilities, again[name].test_probabilities)


def test_point_in_time_features_of_real_examples_are_finite(examples, features):
    for window, matrix in features.items():
        assert matrix.shape == (len(examples[window]), len(FEATURE_NAMES))
        assert matrix.dtype == np.float32
        assert np.isfinite(matrix).all()


def test_each_example_reads_a_snapshot_from_before_its_last_event(examples, snapshots):
    for window in examples.values():
        for ex in window:
            as_of = snapshot_time(ex)
            assert as_of <= ex.events[-1].ts < ex.prediction_ts
            assert ex.events[-1].ts - as_of < 86400
    for as_of, snapshot in snapshots.by_day.items():
        assert snapshot.as_of == as_of
        assert snapshot.items.last_ts.max(initial=0) < as_of
        assert snapshot.categories.last_ts.max(initial=0) < as_of


def test_features_are_the_same_without_any_event_from_the_prediction_time_on(
    examples, reader, snapshots, features, log
):
    """A few examples of each day, read again from a log cut at their prediction time: a
    feature job that ran at that time could have computed exactly the same rows."""
    by_day: dict[int, list[tuple[str, int]]] = {}
    for window in WINDOW_NAMES:
        for row, ex in enumerate(examples[window]):
            by_day.setdefault(snapshot_time(ex), []).append((window, row))
    assert len(by_day) >= 7  # every day of the data
    rng = random.Random(0)
    for day, rows in sorted(by_day.items()):
        for window, row in rng.sample(rows, min(LEAK_CHECKS_PER_DAY, len(rows))):
            ex = examples[window][row]
            before = log.ts < ex.prediction_ts
            cut = replace(
                log,
                ts=log.ts[before],
                users=log.users[before],
                items=log.items[before],
                categories=log.categories[before],
                types=log.types[before],
            )
            assert (log.ts >= ex.prediction_ts).any()  # the cut removes something
            alone = point_in_time_inputs(reader, [ex], DailySnapshots(cut)).features[0]
            assert np.array_equal(alone, features[window][row]), (window, row, day)
