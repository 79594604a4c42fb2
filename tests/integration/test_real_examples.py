"""Rules that must hold on every example of the real Taobao CSV (the `examples` fixture).

The same rules on hand-made events: tests/unit/test_data.py, test_features.py and
test_behaviour_text.py.
"""

import numpy as np
import pytest
from conftest import serving_snapshot

from ubm_build import data
from ubm_build.inputs.behaviour_text import behaviour_text, encode_events, tokenize
from ubm_build.inputs.features import SESSION_FEATURE_NAMES, feature_matrix
from ubm_build.inputs.snapshot import id_words

pytestmark = pytest.mark.integration


def test_counts_match_the_published_data(examples):
    total = sum(len(v) for v in examples.values())
    positives = sum(ex.label for v in examples.values() for ex in v)
    # README: 11,814 usable sessions, 733 with a purchase; a few dozen cross a window boundary.
    assert 11_700 <= total <= 11_814
    assert 720 <= positives <= 733
    assert {name: len(v) > 1000 for name, v in examples.items()} == dict.fromkeys(
        data.WINDOWS, True
    )


def test_no_event_at_or_after_the_prediction_point(examples):
    for window in examples.values():
        for ex in window:
            assert all(e.ts < ex.prediction_ts for e in ex.events)
            if ex.label:
                assert all(e.type != "buy" for e in ex.events[-1:])


def test_sessions_stay_inside_their_window(examples):
    for name, window in examples.items():
        start, end = data.WINDOWS[name]
        for ex in window:
            assert start <= ex.prediction_ts <= end
            assert ex.window == name


def test_windows_are_ordered_in_time(examples):
    assert max(ex.prediction_ts for ex in examples["train"]) <= min(
        ex.prediction_ts for ex in examples["valid"]
    )
    assert max(ex.prediction_ts for ex in examples["valid"]) <= min(
        ex.prediction_ts for ex in examples["test"]
    )


def test_real_examples_give_finite_tame_float32_rows(examples):
    sequences = [ex.events for window in examples.values() for ex in window]
    matrix = feature_matrix(sequences)
    assert matrix.shape == (len(sequences), len(SESSION_FEATURE_NAMES))
    assert matrix.dtype == np.float32
    assert np.isfinite(matrix).all()
    assert np.abs(matrix).max() < 20  # log1p-scaled: no raw seconds or counts


@pytest.mark.parametrize("words", [False, True], ids=["plain", "snapshot_words"])
@pytest.mark.parametrize("max_length", [16, 64, 96])
def test_encoding_the_events_matches_tokenizing_the_full_text(
    tokenizer, examples, max_length, words
):
    sequences = [ex.events for ex in examples["test"]]
    per_record = id_words(serving_snapshot(), sequences) if words else [None] * len(sequences)
    texts = [behaviour_text(s, id_words=w) for s, w in zip(sequences, per_record, strict=True)]
    expected = tokenize(tokenizer, texts, max_length)
    got = encode_events(tokenizer, sequences, max_length, per_record if words else None)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
