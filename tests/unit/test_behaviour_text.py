"""Behaviour text and its tokens, on hand-made events (on every real test record:
tests/integration/test_real_examples.py)."""

import random

import numpy as np
import pytest

from ubm.records import Event
from ubm_build.inputs.behaviour_text import (
    EVENT_TYPES,
    MAX_TEXT_EVENTS,
    PAD_MULTIPLE,
    SESSION_GAP_S,
    behaviour_text,
    encode_events,
    split_session,
    tokenize,
)


def events(*spec: tuple[int, str]) -> list[Event]:
    return [
        Event(ts=ts, type=kind, item=f"i{n}", category=f"c{n}") for n, (ts, kind) in enumerate(spec)
    ]


def test_session_starts_after_the_last_long_pause():
    evs = events(
        (0, "view"), (100, "view"), (100 + SESSION_GAP_S + 1, "cart"), (200 + SESSION_GAP_S, "view")
    )
    history, session = split_session(evs)
    assert [e.item for e in history] == ["i0", "i1"]
    assert [e.item for e in session] == ["i2", "i3"]


def test_text_has_summary_then_events_newest_first():
    evs = events((0, "view"), (SESSION_GAP_S + 10, "view"), (SESSION_GAP_S + 70, "cart"))
    text = behaviour_text(evs)
    summary, history, rendered = text.split(" | ")
    assert summary == "session 2 events 1m: 1 view 1 cart 0 fav 0 buy"
    assert history == "history 1 events: 1 view 0 cart 0 fav 0 buy"
    assert rendered.startswith("cart item i2 cat c2 after 1m ; view item i1 cat c1 after 30m")
    assert rendered.endswith("view item i0 cat c0")


def test_missing_category_is_left_out():
    text = behaviour_text([Event(ts=5, type="fav", item="9")])
    assert text.endswith("| fav item 9")


def test_no_events_is_an_error():
    with pytest.raises(ValueError):
        behaviour_text([])


def test_truncation_keeps_the_summary_and_the_newest_events(tokenizer):
    evs = events(*[(t * 10, "view") for t in range(40)])
    ids, mask = tokenize(tokenizer, [behaviour_text(evs)], max_length=48)
    kept = tokenizer.decode(ids[0][mask[0] == 1].tolist())
    assert ids.shape == (1, 48)
    assert kept.startswith("session 40 events")
    assert "item i39" in kept
    assert "item i0 " not in kept


def test_batch_is_padded_to_a_multiple_of_the_longest(tokenizer):
    ids, mask = tokenize(tokenizer, ["view", "view item 1 cat 2 after 3m"], max_length=64)
    assert ids.shape[1] % PAD_MULTIPLE == 0
    assert mask.sum(1).max() <= ids.shape[1] < mask.sum(1).max() + PAD_MULTIPLE
    assert ids.dtype == mask.dtype == np.int64
    assert (ids[mask == 0] == 0).all()


def test_a_word_budget_cuts_the_text_at_an_event_boundary():
    evs = events(*[(t * 10, "view") for t in range(40)])
    full, cut = behaviour_text(evs), behaviour_text(evs, max_words=30)
    assert full.startswith(cut) and full[len(cut) :].startswith(" ; ")
    assert len(cut.split()) >= 30
    assert behaviour_text(evs, max_words=10_000) == full


def varied_sequences(n: int, seed: int = 0) -> list[list[Event]]:
    """`n` sequences of 1 to 90 events (more than the 64 ever rendered): pauses short and long,
    ids of 1 to 9 digits, some events without a category."""
    rng = random.Random(seed)
    sequences = []
    for _ in range(n):
        ts, sequence = 1_512_172_800, []
        for _ in range(rng.randint(1, 90)):
            ts += rng.choice([0, 5, 60, 600, SESSION_GAP_S + 1, 86_400])
            item = str(rng.randrange(10 ** rng.randint(1, 9)))
            category = rng.choice(["", str(rng.randrange(10**7))])
            sequence.append(Event(ts, rng.choice(EVENT_TYPES), item, category))
        sequences.append(sequence)
    return sequences


@pytest.mark.parametrize("max_length", [16, 64, 96])
def test_encoding_the_events_matches_tokenizing_the_full_text(tokenizer, max_length):
    sequences = [events((0, "view")), *varied_sequences(60)]  # a single event is never cut
    cut = [behaviour_text(s, max_words=max_length) != behaviour_text(s) for s in sequences]
    assert any(cut) and not all(cut), "the test needs texts that are cut and texts that are not"
    expected = tokenize(tokenizer, [behaviour_text(s) for s in sequences], max_length)
    got = encode_events(tokenizer, sequences, max_length)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    tokenizer.no_truncation()
    full = tokenizer.encode_batch([behaviour_text(s) for s in sequences])
    np.testing.assert_array_equal(got[2], [len(e.ids) > max_length for e in full])
    assert got[2].any()


def test_words_that_make_no_tokens_fall_back_to_the_full_text(tokenizer):
    # U+0301 (a combining accent) is stripped by the normaliser: words that are no token.
    blank = " ".join(["\u0301"] * 10)
    evs = [Event(ts=t, type="view", item=blank, category=blank) for t in range(30)]
    evs.append(Event(ts=40, type="buy", item="7", category="8"))
    cut = tokenize(tokenizer, [behaviour_text(evs, max_words=48)], 48)
    full = tokenize(tokenizer, [behaviour_text(evs)], 48)
    assert cut[1].sum() < full[1].sum() == 48
    ids, _, truncated = encode_events(tokenizer, [evs], 48)
    np.testing.assert_array_equal(ids, full[0])
    assert truncated.tolist() == [True]


def test_id_words_follow_each_rendered_id():
    evs = [Event(ts=0, type="view", item="5", category="7"), Event(ts=60, type="cart", item="6")]
    text = behaviour_text(evs, id_words=[("rare", "hot"), ("new bought", "new")])
    assert text.endswith("| cart item 6 new bought after 1m ; view item 5 rare cat 7 hot")
    assert behaviour_text(evs, id_words=[("", ""), ("", "")]) == behaviour_text(evs)


def test_id_words_belong_to_the_newest_rendered_events():
    """With more events than are ever rendered, the words are those of the newest events."""
    evs = events(*[(t * 10, "view") for t in range(MAX_TEXT_EVENTS + 6)])
    words = [(f"w{n}", "cold") for n in range(MAX_TEXT_EVENTS)]
    text = behaviour_text(evs, id_words=words)
    newest, oldest = evs[-1], evs[-MAX_TEXT_EVENTS]
    assert f"item {newest.item} w{MAX_TEXT_EVENTS - 1} cat {newest.category} cold" in text
    assert text.endswith(f"item {oldest.item} w0 cat {oldest.category} cold")


@pytest.mark.parametrize("max_length", [16, 64])
def test_encoding_with_id_words_matches_tokenizing_the_full_text(tokenizer, max_length):
    sequences = varied_sequences(30, seed=1)
    words = [
        [
            (("new", "rare", "popular bought")[i % 3], ("cold", "warm", "hot")[i % 3])
            for i in range(len(s[-MAX_TEXT_EVENTS:]))
        ]
        for s in sequences
    ]
    texts = [behaviour_text(s, id_words=w) for s, w in zip(sequences, words, strict=True)]
    expected = tokenize(tokenizer, texts, max_length)
    got = encode_events(tokenizer, sequences, max_length, words)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
