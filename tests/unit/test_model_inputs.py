"""`RecordReader`: the text (with or without the snapshot's words) and the features (session,
then snapshot) of hand-made records."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ubm.records import Event
from ubm_build.inputs.behaviour_text import encode_events
from ubm_build.inputs.features import feature_matrix
from ubm_build.inputs.model_inputs import FEATURE_NAMES, RecordReader
from ubm_build.inputs.snapshot import FILE, Snapshot, id_words, snapshot_features
from ubm_build.model.network import DEFAULT_BASE_MODEL

MAX_LENGTH = 64
T0 = 1_512_172_800


@pytest.fixture(scope="module")
def sequences() -> list[list[Event]]:
    """Records on items the small snapshot knows (100 to 104, 1000 to 1004) and does not."""
    kinds = ("view", "cart", "fav", "buy")
    return [
        [
            Event(T0 + 60 * j, kinds[(i + j) % 4], str(item), "7" if item < 1000 else "8")
            for j, item in enumerate((100 + i, 1003, 999 + i, 104)[: 1 + i % 4])
        ]
        for i in range(8)
    ]


@pytest.mark.parametrize("snapshot_words", [False, True])
def test_inputs_are_the_text_and_the_session_then_snapshot_features(
    tokenizer, small_snapshot, sequences, snapshot_words
):
    inputs = RecordReader(tokenizer, MAX_LENGTH, small_snapshot, snapshot_words)(sequences)
    words = id_words(small_snapshot, sequences) if snapshot_words else None
    ids, mask, truncated = encode_events(tokenizer, sequences, MAX_LENGTH, words)
    np.testing.assert_array_equal(inputs.ids, ids)
    np.testing.assert_array_equal(inputs.mask, mask)
    np.testing.assert_array_equal(inputs.truncated, truncated)
    assert inputs.features.dtype == np.float32
    assert inputs.features.shape == (len(sequences), len(FEATURE_NAMES))
    np.testing.assert_array_equal(
        inputs.features,
        np.hstack([feature_matrix(sequences), snapshot_features(small_snapshot, sequences)]),
    )


def test_another_snapshot_changes_the_snapshot_columns_only(tokenizer, small_snapshot, sequences):
    reader = RecordReader(tokenizer, MAX_LENGTH, small_snapshot, False)
    other = reader.at(Snapshot.empty(small_snapshot.as_of))
    assert other.snapshot is not small_snapshot and reader.snapshot is small_snapshot
    assert (other.tokenizer, other.max_length, other.snapshot_words) == (
        tokenizer,
        MAX_LENGTH,
        False,
    )
    before, after = reader(sequences), other(sequences)
    np.testing.assert_array_equal(before.ids, after.ids)
    n = len(FEATURE_NAMES) - snapshot_features(small_snapshot, sequences).shape[1]
    np.testing.assert_array_equal(before.features[:, :n], after.features[:, :n])
    assert (before.features[:, n:] != after.features[:, n:]).any()


def test_a_directory_with_the_tokenizer_and_snapshot_reads_like_the_model(
    tmp_path, tokenizer, small_snapshot, snapshot_file, sequences
):
    shutil.copy2(DEFAULT_BASE_MODEL / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy2(snapshot_file, tmp_path / FILE)
    loaded = RecordReader.from_directory(tmp_path, max_length=MAX_LENGTH, snapshot_words=True)
    assert (loaded.max_length, loaded.snapshot_words) == (MAX_LENGTH, True)
    expected = RecordReader(tokenizer, MAX_LENGTH, small_snapshot, True)(sequences)
    for got, want in zip(loaded(sequences), expected, strict=True):
        np.testing.assert_array_equal(got, want)
