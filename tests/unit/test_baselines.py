"""The baselines' features on hand-made examples (trained on the real time split:
tests/integration/test_baseline_quality.py)."""

import math

import numpy as np
import pytest

from ubm.records import Event
from ubm_build.data import Example
from ubm_build.inputs.features import FEATURE_NAMES
from ubm_build.model.baselines import POPULARITY_NAMES, Popularity, design_matrix


def _example(user: str, *events: tuple[int, str, str]) -> Example:
    return Example(user, tuple(Event(ts, kind, item, "c") for ts, kind, item in events), 0, "", 0)


def test_popularity_leaves_the_examples_own_user_out():
    popularity = Popularity(
        [
            _example("u1", (0, "view", "a"), (10, "buy", "a")),
            _example("u1", (0, "view", "a"), (10, "buy", "a"), (5000, "view", "b")),  # overlap
            _example("u2", (0, "view", "a"), (5, "view", "a"), (10, "buy", "a")),
        ]
    )
    buys = POPULARITY_NAMES.index("last_item_train_buys")
    events = POPULARITY_NAMES.index("last_item_train_events")
    for user, expected_buys, expected_events in (("u1", 1, 3), ("u2", 1, 2), ("u3", 2, 5)):
        row = popularity.features(_example(user, (0, "view", "a")))
        assert row[buys] == pytest.approx(math.log1p(expected_buys))
        assert row[events] == pytest.approx(math.log1p(expected_events))


def test_design_matrix_is_own_features_then_popularity():
    popularity = Popularity([_example("u1", (0, "view", "a"), (10, "buy", "a"))])
    rows = [
        _example("u2", (0, "view", "b"), (60, "view", "a")),
        Example("u3", (Event(0, "cart", "d", "unseen"),), 0, "", 0),
    ]
    matrix = design_matrix(rows, popularity)
    assert matrix.shape == (2, len(FEATURE_NAMES) + len(POPULARITY_NAMES))
    assert matrix.dtype == np.float64
    assert np.isfinite(matrix).all()
    own, extra = matrix[:, : len(FEATURE_NAMES)], matrix[:, len(FEATURE_NAMES) :]
    assert own[:, FEATURE_NAMES.index("session_events")] == pytest.approx(
        [math.log1p(2), math.log1p(1)]
    )
    assert own[:, FEATURE_NAMES.index("session_cart")] == pytest.approx([0, math.log1p(1)])
    assert extra[:, POPULARITY_NAMES.index("last_item_train_events")] == pytest.approx(
        [math.log1p(2), 0]  # u1's view and purchase of "a"
    )
    assert extra[:, POPULARITY_NAMES.index("last_item_train_buys")] == pytest.approx(
        [math.log1p(1), 0]
    )
