"""The head on synthetic embeddings and features: a logistic regression on standardised
features and the embedding's principal components, then Platt scaling."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ubm_build.model.network import Head

HIDDEN, FEATURES, COMPONENTS = 24, 5, 4


def synthetic(n: int = 800, seed: int = 0):
    """Embeddings whose first direction and features whose first column carry the label."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    embeddings = rng.normal(size=(n, HIDDEN)).astype(np.float32)
    embeddings[:, 0] += 3.0 * labels
    features = rng.normal(loc=5.0, scale=[1, 10, 0.1, 2, 3], size=(n, FEATURES))
    features[:, 0] += 1.5 * labels
    features[:, 4] = 7.0  # constant in training
    return embeddings, features.astype(np.float32), labels


def test_the_head_is_a_logistic_regression_on_scaled_features_and_components():
    embeddings, features, labels = synthetic()
    head = Head(HIDDEN, FEATURES, COMPONENTS)
    head.fit(embeddings, features, labels, c=0.5)

    std = features.std(0)
    scaled = (features - features.mean(0)) / np.where(std > 1e-3, std, 1.0)
    projected = PCA(COMPONENTS, random_state=0).fit(embeddings).transform(embeddings)
    x = np.hstack([scaled, projected])
    model = LogisticRegression(C=0.5, tol=1e-8, max_iter=20_000).fit(x.astype(np.float64), labels)
    expected = model.decision_function(x)
    with torch.no_grad():
        logits = head.logit(torch.from_numpy(embeddings), torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)
    assert head.feature_scale[4].item() == 1.0  # a constant feature keeps scale 1
    assert roc_auc_score(labels, logits) > 0.9


def test_probabilities_are_the_calibrated_sigmoid_of_the_logit():
    embeddings, features, labels = synthetic(seed=1)
    head = Head(HIDDEN, FEATURES, COMPONENTS)
    head.fit(embeddings, features, labels, c=1.0)
    head.calibration_scale.fill_(0.5)
    head.calibration_bias.fill_(-1.0)
    e, f = torch.from_numpy(embeddings), torch.from_numpy(features)
    with torch.no_grad():
        probabilities = head(e, f)
        logits = head.logit(e, f)
    assert probabilities.shape == (len(labels), 1)
    torch.testing.assert_close(probabilities[:, 0], torch.sigmoid(0.5 * logits - 1.0))


def test_a_head_without_components_reads_the_features_alone():
    embeddings, features, labels = synthetic(seed=2)
    head = Head(HIDDEN, FEATURES, 0)
    head.fit(embeddings, features, labels, c=1.0)
    shuffled = embeddings[np.random.default_rng(0).permutation(len(embeddings))]
    with torch.no_grad():
        one = head.logit(torch.from_numpy(embeddings), torch.from_numpy(features))
        other = head.logit(torch.from_numpy(shuffled), torch.from_numpy(features))
    torch.testing.assert_close(one, other)
