"""Drift statistics on hand-made events: counts, ratios, truncation and the reference files."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from ubm.records import Event
from ubm_build.inputs import drift
from ubm_build.inputs.behaviour_text import behaviour_text, encode_events

T0 = 1_512_172_800
MAX_LENGTH = 64


def record(*spec: tuple[str, str, str]) -> list[Event]:
    """Events one minute apart from (type, item, category) triples."""
    return [
        Event(ts=T0 + 60 * n, type=kind, item=item, category=category)
        for n, (kind, item, category) in enumerate(spec)
    ]


TRAINING = [
    record(("view", "1", "a"), ("view", "2", "a"), ("cart", "2", "a")),
    record(("view", "3", "b"), ("buy", "3", "b")),
    record(("fav", "1", "a")),
    record(("view", "4", "b"), ("view", "1", "a")),
]
"""8 events in 4 records: 4 view, 1 cart, 1 fav, 1 buy... and one more view."""


def long_record(n: int, item: str = "1234567") -> list[Event]:
    return [Event(ts=T0 + 30 * i, type="view", item=item, category="99") for i in range(n)]


def test_values_are_ratios_of_the_counts():
    counts = drift.count_records(TRAINING, [False, True, False, False])
    assert counts.records == 4
    assert counts.events == 8
    assert counts.events_by_type == {"view": 5, "cart": 1, "fav": 1, "buy": 1}
    assert counts.truncated == 1
    values = drift.drift_values(counts)
    assert values.events_per_record == 2.0
    assert values.event_type_share == {"view": 5 / 8, "cart": 1 / 8, "fav": 1 / 8, "buy": 1 / 8}
    assert values.truncated_share == 0.25
    assert values.unseen_item_share == values.unseen_category_share == 0.0


def test_no_records_give_zeros_not_errors():
    values = drift.drift_values(drift.DriftCounts())
    assert values.to_dict() == {
        "events_per_record": 0.0,
        "event_type_share": {"view": 0.0, "cart": 0.0, "fav": 0.0, "buy": 0.0},
        "unseen_item_share": 0.0,
        "unseen_category_share": 0.0,
        "truncated_share": 0.0,
    }


def test_unseen_counts_events_not_distinct_ids():
    seen = drift.SeenIds.of(TRAINING)
    assert seen.items == {"1", "2", "3", "4"}
    assert seen.categories == {"a", "b"}
    served = [
        record(("view", "1", "a"), ("view", "9", "a"), ("view", "9", "z")),
        [Event(ts=T0, type="buy", item="2")],  # no category: training had none without one
    ]
    counts = drift.count_records(served, [False, False], seen)
    assert (counts.unseen_items, counts.unseen_categories) == (2, 2)
    values = drift.drift_values(counts)
    assert values.unseen_item_share == values.unseen_category_share == 0.5


def test_counts_add_up_like_their_records():
    seen = drift.SeenIds.of(TRAINING[:2])
    first, second = TRAINING[:3], TRAINING[3:]
    added = drift.count_records(first, [True, False, False], seen) + drift.count_records(
        second, [True], seen
    )
    assert added == drift.count_records(TRAINING, [True, False, False, True], seen)


def test_one_flag_per_record():
    with pytest.raises(ValueError, match="2 truncation flags for 4 records"):
        drift.count_records(TRAINING, [False, False])


@pytest.fixture(scope="module")
def tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of the packaged tokenizer: these tests change its truncation and padding."""
    return Tokenizer.from_str(tokenizer.to_str())


def overflows(tokenizer, events: list[Event], max_length: int) -> bool:
    """The definition, the slow way: the whole text's tokens, counted without truncation."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return len(tokenizer.encode(behaviour_text(events)).ids) > max_length


@pytest.fixture(scope="module")
def growing() -> list[list[Event]]:
    """Records of 1 to 40 events: short texts, texts right at the limit, long ones."""
    return [long_record(n) for n in range(1, 41)]


def test_truncation_is_more_tokens_than_the_limit(tokenizer, growing):
    expected = [overflows(tokenizer, events, MAX_LENGTH) for events in growing]
    assert 0 < sum(expected) < len(expected)
    flags = encode_events(tokenizer, growing, MAX_LENGTH)[2]
    assert flags.tolist() == expected


def test_a_text_of_exactly_the_limit_is_not_truncated(tokenizer, growing):
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = [len(tokenizer.encode(behaviour_text(events)).ids) for events in growing]
    exact = lengths.index(next(n for n in lengths if n >= 30))
    limit = lengths[exact]
    flags = encode_events(tokenizer, growing, limit)[2]
    assert not flags[exact] and flags[exact + 1]


def test_words_without_tokens_do_not_hide_a_truncation(tokenizer):
    """A zero-width space passes the schema but normalises to no token at all: a text cut
    after enough words can then fit while the whole text does not."""
    invisible = " ".join(["\u200b"] * 20)
    records = [long_record(n, item=invisible) for n in (2, 4, 6, 8, 10, 20, 40)]
    expected = [overflows(tokenizer, events, MAX_LENGTH) for events in records]
    assert 0 < sum(expected) < len(expected)
    assert encode_events(tokenizer, records, MAX_LENGTH)[2].tolist() == expected


def truncated(tokenizer, event_sequences: list[list[Event]]) -> list[bool]:
    """Each record's truncation flag, as `ModelInputs.truncated` gives it."""
    return encode_events(tokenizer, event_sequences, MAX_LENGTH)[2].tolist()


def reference_of(tokenizer, event_sequences: list[list[Event]], **kwargs) -> drift.DriftReference:
    return drift.reference_of(
        event_sequences, truncated(tokenizer, event_sequences), MAX_LENGTH, **kwargs
    )


def test_reference_of_training_records(tokenizer):
    training = [*TRAINING, long_record(40)]
    holdout = [record(("view", "1", "a"), ("view", "7", "a"), ("cart", "7", "c"))]
    reference = reference_of(tokenizer, training, holdout=holdout)
    assert reference.records == 5 and reference.holdout_records == 1
    assert reference.max_length == MAX_LENGTH
    assert reference.seen.items == {"1", "2", "3", "4", "1234567"}
    values = reference.values
    assert values.events_per_record == 48 / 5
    assert values.event_type_share["view"] == 45 / 48
    assert values.truncated_share == 1 / 5
    assert values.unseen_item_share == 2 / 3
    assert values.unseen_category_share == 1 / 3


def test_without_holdout_nothing_is_unseen(tokenizer):
    reference = reference_of(tokenizer, TRAINING)
    assert reference.values.unseen_item_share == reference.values.unseen_category_share == 0.0
    assert reference.holdout_records == 0


def test_reference_files_round_trip_reproducibly(tokenizer, tmp_path):
    reference = reference_of(tokenizer, TRAINING, holdout=TRAINING[:1])
    written = drift.write_reference(tmp_path / "a", reference)
    assert [p.name for p in written] == [drift.REFERENCE_FILE, drift.SEEN_IDS_FILE]
    assert drift.read_reference(tmp_path / "a") == reference
    drift.write_reference(tmp_path / "b", reference)
    for name in (drift.REFERENCE_FILE, drift.SEEN_IDS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    summary = json.loads((tmp_path / "a" / drift.REFERENCE_FILE).read_text())
    assert summary["events_per_record"] == 2.0 and summary["items"] == 4


def test_seen_ids_are_stored_compactly(tmp_path):
    """The real training window has tens of thousands of items: a few bytes each."""
    rng = np.random.default_rng(0)
    ids = [str(i) for i in rng.choice(5_000_000, size=50_000, replace=False)]
    reference = drift.DriftReference(
        values=drift.drift_values(drift.DriftCounts()),
        seen=drift.SeenIds(items=frozenset(ids), categories=frozenset(ids[:5000])),
        max_length=MAX_LENGTH,
        records=1,
    )
    drift.write_reference(tmp_path, reference)
    assert (tmp_path / drift.SEEN_IDS_FILE).stat().st_size < 5 * len(ids)
    assert drift.read_reference(tmp_path).seen == reference.seen


def test_no_files_no_reference(tmp_path):
    assert drift.read_reference(tmp_path) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / drift.SEEN_IDS_FILE).unlink(),
        lambda d: (d / drift.SEEN_IDS_FILE).write_bytes(b"not gzip"),
        lambda d: (d / drift.REFERENCE_FILE).write_text("{"),
        lambda d: (d / drift.REFERENCE_FILE).write_text(json.dumps({"format": 99})),
        lambda d: (d / drift.SEEN_IDS_FILE).write_bytes(gzip.compress(b'{"items": []}')),
    ],
)
def test_damaged_reference_files_are_an_error(tokenizer, tmp_path, damage):
    drift.write_reference(tmp_path, reference_of(tokenizer, TRAINING))
    damage(tmp_path)
    with pytest.raises(drift.DriftReferenceError):
        drift.read_reference(tmp_path)
