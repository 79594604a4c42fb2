"""Session features of hand-made events: names, hand-checked values, flat-directory import.

On every real example: tests/integration/test_real_examples.py.
"""

import json
import math
import shutil
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest

from ubm import records
from ubm.records import Event
from ubm_build.data import Example
from ubm_build.inputs import behaviour_text, features
from ubm_build.inputs.behaviour_text import CHINA, SESSION_GAP_S
from ubm_build.inputs.features import SESSION_FEATURE_NAMES, session_features
from ubm_build.inputs.model_inputs import FEATURE_NAMES
from ubm_build.inputs.snapshot import SNAPSHOT_FEATURE_NAMES

# Saturday 2017-12-02, 10:00 China time.
T0 = int(datetime(2017, 12, 2, 10, tzinfo=CHINA).timestamp())
HISTORY = [
    Event(ts=T0 - 7200, type="view", item="a", category="x"),
    Event(ts=T0 - 7100, type="cart", item="a", category="x"),
    Event(ts=T0 - 7000, type="buy", item="b", category="y"),
]
SESSION = [
    Event(ts=T0, type="view", item="a", category="x"),
    Event(ts=T0 + 60, type="view", item="c", category="y"),
    Event(ts=T0 + 180, type="fav", item="c", category="y"),
    Event(ts=T0 + 300, type="view", item="c", category="y"),
]
log = math.log1p
HAND_CHECKED = {
    "session_events": log(4),
    "session_view": log(3),
    "session_cart": 0.0,
    "session_fav": log(1),
    "session_buy": 0.0,
    "session_distinct_items": log(2),
    "session_distinct_categories": log(2),
    "session_duration_s": log(300),
    "session_mean_gap_s": log(100),
    "last_gap_s": log(120),
    "last_is_cart": 0.0,
    "last_is_fav": 0.0,
    "last_item_session_events": log(3),
    "last_category_session_share": 0.75,
    "hour_sin": math.sin(2 * math.pi * (10 + 5 / 60) / 24),  # 10:05
    "hour_cos": math.cos(2 * math.pi * (10 + 5 / 60) / 24),
    "weekday_sin": math.sin(2 * math.pi * 5 / 7),  # Saturday
    "weekday_cos": math.cos(2 * math.pi * 5 / 7),
    "history_events": log(3),
    "history_view": log(1),
    "history_cart": log(1),
    "history_fav": 0.0,
    "history_buy": log(1),
    "since_history_s": log(7000),
    "session_items_seen_in_history": log(1),  # a
    "intent_items_revisited": log(2),  # a (carted before), the last c (faved before)
    "last_item_intent_before": 1.0,
    "last_item_bought_in_history": 0.0,
    "last_category_bought_in_history": 1.0,  # b was bought in y
}
"""The features of HISTORY + SESSION, worked out by hand."""


def named(row: np.ndarray) -> dict[str, float]:
    return dict(zip(SESSION_FEATURE_NAMES, row.tolist(), strict=True))


def test_feature_names_are_unique_and_about_two_dozen():
    assert len(set(SESSION_FEATURE_NAMES)) == len(SESSION_FEATURE_NAMES)
    assert 20 <= len(SESSION_FEATURE_NAMES) <= 30


def test_the_model_reads_the_session_features_then_the_snapshot_features():
    assert (*SESSION_FEATURE_NAMES, *SNAPSHOT_FEATURE_NAMES) == FEATURE_NAMES
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def test_the_events_of_a_record_give_the_hand_checked_features():
    """Through `Example.to_record` and back: the record keeps all the features read."""
    example = Example("u", (*HISTORY, *SESSION), 0, "test", SESSION[-1].ts + 1)
    rebuilt = [Event(**event) for event in example.to_record()["events"]]
    assert named(session_features(rebuilt)) == pytest.approx(HAND_CHECKED, abs=1e-6)


def test_hand_made_events():
    assert named(session_features(HISTORY + SESSION)) == pytest.approx(HAND_CHECKED, abs=1e-6)


def test_a_single_event_has_no_gaps_and_no_history():
    values = dict(zip(SESSION_FEATURE_NAMES, session_features(SESSION[:1]), strict=True))
    assert values["session_events"] == pytest.approx(math.log1p(1))
    for name in ("session_duration_s", "last_gap_s", "history_events", "since_history_s"):
        assert values[name] == 0.0


def test_a_long_pause_starts_the_session_over():
    later = Event(ts=SESSION[-1].ts + SESSION_GAP_S + 1, type="view", item="d", category="z")
    values = dict(
        zip(SESSION_FEATURE_NAMES, session_features(HISTORY + SESSION + [later]), strict=True)
    )
    assert values["session_events"] == pytest.approx(math.log1p(1))
    assert values["history_events"] == pytest.approx(math.log1p(7))


def test_no_events_is_an_error():
    with pytest.raises(ValueError, match="at least one event"):
        session_features([])


def test_runs_from_a_flat_directory_next_to_behaviour_text(tmp_path):
    """As in a Triton model directory: no ubm_build or ubm package, the three files (with the
    record schema) side by side."""
    events = HISTORY + SESSION
    for module in (features, behaviour_text, records):
        shutil.copy2(module.__file__, tmp_path)
    script = (
        # make the packages' imports fail
        "import json, sys; sys.modules['ubm_build'] = sys.modules['ubm'] = None\n"
        "from collections import namedtuple\n"
        "import features\n"
        "E = namedtuple('E', 'ts type item category')\n"
        f"events = [E(*e) for e in {[(e.ts, e.type, e.item, e.category) for e in events]}]\n"
        "print(json.dumps(features.session_features(events).tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert named(np.array(json.loads(out))) == pytest.approx(HAND_CHECKED, abs=1e-6)
