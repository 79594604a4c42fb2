"""Quality of any model's test-window probabilities: ranking, calibration, and their spread.

Confidence intervals come from a stratified bootstrap: each resample draws the positives and
the negatives separately, with replacement, so every resample keeps the test window's class
counts (and always has both classes). The resamples are scored all at once as multiplicity
weights, which gives the same numbers as sklearn with ``sample_weight`` at a fraction of the
cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

ECE_BINS = 15
CI_PERCENTILES = (2.5, 97.5)


@dataclass(frozen=True)
class Metrics:
    n: int
    positives: int
    roc_auc: float
    roc_auc_ci: tuple[float, float]
    pr_auc: float
    """Average precision (sklearn's step-wise area, no interpolation)."""
    pr_auc_ci: tuple[float, float]
    log_loss: float
    ece: float
    """Expected calibration error of the (calibrated) probabilities, `ECE_BINS` equal bins."""
    ece_uncalibrated: float | None = None
    """The same for the model's probabilities before calibration, when given."""

    def to_dict(self) -> dict:
        return asdict(self)


def _bin_ids(probabilities: np.ndarray) -> np.ndarray:
    # The binning of sklearn.calibration.calibration_curve, so plot and ECE agree.
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    return np.searchsorted(edges[1:-1], probabilities)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean |observed rate - mean probability| over `ECE_BINS` equal-width bins, by bin size."""
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    # Per bin: count x |mean label - mean probability| = |sum of (label - probability)|.
    gap = np.bincount(_bin_ids(probabilities), weights=labels - probabilities, minlength=ECE_BINS)
    return float(np.abs(gap).sum() / len(labels))


def stratified_bootstrap_weights(labels: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """[n_bootstrap, n] multiplicity of each example in each stratified resample."""
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(labels == cls) for cls in (0, 1)]
    draws = np.hstack(
        [rng.choice(members, size=(n_bootstrap, len(members))) for members in classes]
    )
    n = len(labels)
    flat = (np.arange(n_bootstrap)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=n_bootstrap * n).reshape(n_bootstrap, n)


def weighted_roc_auc_and_ap(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision under each row of `weights` [B, n], vectorised over rows.

    Equal to sklearn's ``roc_auc_score`` / ``average_precision_score`` with ``sample_weight``;
    tied scores form one threshold, as there.
    """
    order = np.argsort(scores, kind="stable")
    _, starts = np.unique(scores[order], return_index=True)
    positive = labels[order].astype(bool)
    w = weights[:, order].astype(float)
    # Weight of positives / negatives at each distinct score, ascending.
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)

    # A positive beats every lower-scored negative and half-beats a tied one.
    neg_below = np.cumsum(neg, axis=1) - neg
    auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)

    # Thresholds from the highest score down: precision at each, weighted by recall gained.
    true_pos = np.cumsum(pos[:, ::-1], axis=1)
    predicted = true_pos + np.cumsum(neg[:, ::-1], axis=1)
    precision = true_pos / np.maximum(predicted, np.finfo(float).tiny)
    ap = (pos[:, ::-1] * precision).sum(axis=1) / total_pos
    return auc, ap


def evaluate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    uncalibrated: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Metrics:
    """Metrics of calibrated `probabilities` for 0/1 `labels`, with bootstrap 95% intervals.

    Args:
        labels: 0/1 outcomes, both classes present.
        probabilities: the model's calibrated probabilities of a 1.
        uncalibrated: the model's probabilities before calibration, for ``ece_uncalibrated``.
        n_bootstrap: stratified resamples for the intervals.
        seed: seeds the resampling; the same inputs and seed give the same intervals.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    weights = stratified_bootstrap_weights(labels, n_bootstrap, seed)
    auc, ap = weighted_roc_auc_and_ap(labels, probabilities, weights)
    return Metrics(
        n=len(labels),
        positives=int(labels.sum()),
        roc_auc=float(roc_auc_score(labels, probabilities)),
        roc_auc_ci=tuple(float(v) for v in np.percentile(auc, CI_PERCENTILES)),
        pr_auc=float(average_precision_score(labels, probabilities)),
        pr_auc_ci=tuple(float(v) for v in np.percentile(ap, CI_PERCENTILES)),
        log_loss=float(log_loss(labels, probabilities, labels=[0, 1])),
        ece=expected_calibration_error(labels, probabilities),
        ece_uncalibrated=None
        if uncalibrated is None
        else expected_calibration_error(labels, uncalibrated),
    )


@dataclass(frozen=True)
class Comparison:
    """ROC-AUC of a model, and its paired difference against a reference model, on the same
    test examples."""

    roc_auc: float
    roc_auc_ci: tuple[float, float]
    difference: float
    """ROC-AUC of the model minus the reference's."""
    difference_ci: tuple[float, float]
    """95% interval of the difference over resamples shared by both models (paired)."""

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    labels: np.ndarray,
    scores: np.ndarray,
    reference: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Comparison:
    """`scores` against `reference` scores of the same examples: each bootstrap resample scores
    both, so the interval of the difference is not widened by the resampling noise they share."""
    labels = np.asarray(labels).astype(int)
    weights = stratified_bootstrap_weights(labels, n_bootstrap, seed)
    auc = weighted_roc_auc_and_ap(labels, np.asarray(scores, float), weights)[0]
    base = weighted_roc_auc_and_ap(labels, np.asarray(reference, float), weights)[0]
    point = float(roc_auc_score(labels, scores))
    return Comparison(
        roc_auc=point,
        roc_auc_ci=tuple(float(v) for v in np.percentile(auc, CI_PERCENTILES)),
        difference=point - float(roc_auc_score(labels, reference)),
        difference_ci=tuple(float(v) for v in np.percentile(auc - base, CI_PERCENTILES)),
    )


def reliability_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Write a PNG reliability diagram: observed rate against mean probability per bin.

    Args:
        curves: model name -> (labels, probabilities), one line each; the legend shows ECE.
        path: where the PNG goes.
    """
    # A bare Figure renders with Agg and leaves pyplot's global state alone.
    figure = Figure(figsize=(5.5, 5.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, (labels, probabilities) in curves.items():
        observed, predicted = calibration_curve(labels, probabilities, n_bins=ECE_BINS)
        ece = expected_calibration_error(labels, probabilities)
        axes.plot(predicted, observed, marker="o", label=f"{name} (ECE {ece:.3f})")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability",
        ylabel="observed purchase rate",
        title=f"Reliability, {ECE_BINS} equal-width bins",
    )
    axes.legend(loc="upper left")
    figure.savefig(path, format="png", dpi=120)
