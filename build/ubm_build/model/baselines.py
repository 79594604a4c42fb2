"""Traditional baselines on the same time split and the same point-in-time features as the
behaviour model.

Logistic regression and LightGBM read exactly the features the served head reads
(`model_inputs.FEATURE_NAMES`: the record's session features and its items' and categories'
snapshot statistics, each example with its own day's snapshot), so no example sees an event at
or after its prediction time. Both are fit on train, LightGBM stops early on valid, and each
model's log-odds are then Platt-calibrated on valid, so test is touched only for scoring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 0
LGBM_PARAMS = {
    "n_estimators": 2000,
    "learning_rate": 0.02,
    "num_leaves": 15,
    "min_child_samples": 40,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
}
EARLY_STOPPING_ROUNDS = 100


@dataclass(frozen=True)
class BaselineResult:
    name: str
    valid_scores: np.ndarray
    """Uncalibrated log-odds on the valid window (what the Platt scaling was fit on)."""
    test_scores: np.ndarray
    """Uncalibrated log-odds on the test window."""
    test_probabilities: np.ndarray
    """Platt-calibrated probabilities on the test window."""
    fit_seconds: float
    """Wall time of model fit plus calibration (features excluded)."""
    best_iteration: int | None = None
    """LightGBM's early-stopped number of trees; None for other models."""

    @property
    def test_uncalibrated(self) -> np.ndarray:
        """The model's own probabilities on the test window, before Platt scaling."""
        return expit(self.test_scores)


def platt(valid_scores: np.ndarray, valid_labels: np.ndarray) -> LogisticRegression:
    """Platt scaling: an unregularised 1-D logistic regression from log-odds to probability."""
    return LogisticRegression(C=np.inf).fit(valid_scores.reshape(-1, 1), valid_labels)


def _fit_logistic(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Pipeline:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return model.fit(x["train"], y["train"])


def _fit_lightgbm(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> lgb.LGBMClassifier:
    # One thread: the rows are few, and OpenMP threads spin-waiting on each other on a busy
    # machine cost far more than they save.
    model = lgb.LGBMClassifier(
        **LGBM_PARAMS, random_state=SEED, n_jobs=1, deterministic=True, verbose=-1
    )
    return model.fit(
        x["train"],
        y["train"],
        eval_X=x["valid"],
        eval_y=y["valid"],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )


def run_baselines(
    features: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> dict[str, BaselineResult]:
    """Fit both baselines on train, stop early and calibrate on valid, score test.

    Args:
        features: ``train``, ``valid`` and ``test`` point-in-time feature matrices.
        labels: the same windows' labels.

    Returns:
        ``{"logistic_regression": ..., "lightgbm": ...}``, in that order.
    """
    x = {w: features[w].astype(np.float64) for w in ("train", "valid", "test")}
    results = {}
    for name in ("logistic_regression", "lightgbm"):
        started = time.perf_counter()
        if name == "logistic_regression":
            model = _fit_logistic(x, labels)
            scores = {w: model.decision_function(x[w]) for w in ("valid", "test")}
            best_iteration = None
        else:
            model = _fit_lightgbm(x, labels)
            scores = {w: model.predict(x[w], raw_score=True) for w in ("valid", "test")}
            best_iteration = model.best_iteration_
        calibrator = platt(scores["valid"], labels["valid"])
        results[name] = BaselineResult(
            name=name,
            valid_scores=scores["valid"],
            test_scores=scores["test"],
            test_probabilities=calibrator.predict_proba(scores["test"].reshape(-1, 1))[:, 1],
            fit_seconds=time.perf_counter() - started,
            best_iteration=best_iteration,
        )
    return results
