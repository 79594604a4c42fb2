"""Behaviour -> text -> tokens: the one implementation used by training and by the server.

The build copies this file next to the Triton ``preprocess`` model, so what the model saw in
training is byte-for-byte what it sees when served. It imports only the standard library,
numpy and the record schema (``records.py``, for `EVENT_TYPES`); the tokenizer is passed in (a
``tokenizers.Tokenizer``).

A user's events become one line of text: a summary of the current session (events since the
last 30-minute pause) and of the earlier history, then the events newest first::

    session 3 events 4m: 2 view 1 cart 0 fav 0 buy | history 12 events: 10 view 0 cart 1 fav
    1 buy | cart item 9900002 cat 990012 after 1m ; view item 9900001 cat 990011 after 3m ; ...

Because the newest events come first, truncating the token sequence on the right drops the
oldest events and never the summary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta, timezone
from typing import Protocol

import numpy as np

try:  # in Triton's preprocess directory: the record schema's copy beside this file
    from records import EVENT_TYPES
except ImportError:  # in the source tree
    from ubm.records import EVENT_TYPES

__all__ = ["CHINA", "EVENT_TYPES", "SESSION_GAP_S", "behaviour_text", "encode_events"]

SESSION_GAP_S = 30 * 60
"""A pause longer than this starts a new session (the one session cut of data, text, features)."""
CHINA = timezone(timedelta(hours=8))
"""Taobao's clock: days, hours and weekdays are read in China time."""
MAX_TEXT_EVENTS = 64
"""Events beyond the newest this many never fit the token budget; they are not rendered."""
PAD_MULTIPLE = 16
"""Batches are padded to a multiple of this, so requests of similar length share a shape."""


class EventLike(Protocol):
    ts: int
    type: str
    item: str
    category: str


def split_session(events: Sequence[EventLike]) -> tuple[list[EventLike], list[EventLike]]:
    """Split time-ordered events into (history, current session).

    The current session is the trailing run of events with no pause over `SESSION_GAP_S`.
    """
    start = len(events) - 1
    while start > 0 and events[start].ts - events[start - 1].ts <= SESSION_GAP_S:
        start -= 1
    return list(events[:start]), list(events[start:])


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _counts(events: Sequence[EventLike]) -> str:
    counts = Counter(event.type for event in events)
    return " ".join(f"{counts[kind]} {kind}" for kind in EVENT_TYPES)


def behaviour_text(
    events: Sequence[EventLike],
    max_words: int | None = None,
    id_words: Sequence[tuple[str, str]] | None = None,
) -> str:
    """Render time-ordered (oldest first) events as the model's input text.

    With `max_words`, older events stop being rendered once the text has that many
    whitespace-separated words: the text is the full text cut at an event boundary.
    With `id_words` (one ``(item word, category word)`` per event of the newest
    `MAX_TEXT_EVENTS`, oldest first), each rendered id is followed by its word, e.g.
    ``view item 9900001 rare cat 990011 hot``.
    """
    if not events:
        raise ValueError("behaviour_text needs at least one event")
    history, session = split_session(events)
    span = _duration(session[-1].ts - session[0].ts)
    parts = [f"session {len(session)} events {span}: {_counts(session)}"]
    if history:
        parts.append(f"history {len(history)} events: {_counts(history)}")
    words = sum(len(part.split()) + 1 for part in parts)  # each part and the "|" after it
    rendered = []
    newest = list(events[-MAX_TEXT_EVENTS:])
    for i in range(len(newest) - 1, -1, -1):
        if max_words is not None and words >= max_words:
            break
        event = newest[i]
        item_word, category_word = id_words[i] if id_words is not None else ("", "")
        text = f"{event.type} item {event.item}" + (f" {item_word}" if item_word else "")
        if event.category:
            text += f" cat {event.category}" + (f" {category_word}" if category_word else "")
        if i > 0:
            text += f" after {_duration(event.ts - newest[i - 1].ts)}"
        rendered.append(text)
        words += len(text.split()) + 1  # and the ";" after it
    parts.append(" ; ".join(rendered))
    return " | ".join(parts)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask (int64, [batch, seq]) for `texts`.

    Each text is cut to `max_length` tokens from the right (the oldest events); the batch is
    padded to its longest sequence rounded up to `PAD_MULTIPLE`, never beyond `max_length`.
    """
    return _pad(tokenizer, _encode(tokenizer, texts, max_length), max_length)


def encode_events(
    tokenizer,
    event_sequences: Sequence[Sequence[EventLike]],
    max_length: int,
    id_words: Sequence[Sequence[tuple[str, str]]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`tokenize` of each sequence's `behaviour_text`, rendering only the events that can fit.

    `id_words`, if given, holds each sequence's `behaviour_text` ``id_words``.

    The texts are cut after ``max_length + 2`` words. A word is at least one token and WordPiece
    tokenizes words separately, so a cut text that overflows `max_length` tokens gives the same
    ids as the full one, for a fraction of the tokenizer's work. A cut text that fits is encoded
    again from its full text when the cut dropped words.

    Returns:
        (ids, mask, truncated): `truncated` (bool [n]) marks the texts that had more than
        `max_length` tokens and were cut.
    """
    words = id_words if id_words is not None else [None] * len(event_sequences)
    texts = [
        behaviour_text(events, max_words=max_length + 2, id_words=record_words)
        for events, record_words in zip(event_sequences, words, strict=True)
    ]
    encodings = _encode(tokenizer, texts, max_length)
    fits = [row for row, encoding in enumerate(encodings) if not encoding.overflowing]
    full = {row: behaviour_text(event_sequences[row], id_words=words[row]) for row in fits}
    cut = [row for row in fits if full[row] != texts[row]]  # fits, but words were dropped
    if cut:
        again = _encode(tokenizer, [full[row] for row in cut], max_length)
        for row, encoding in zip(cut, again, strict=True):
            encodings[row] = encoding
    truncated = np.array([bool(encoding.overflowing) for encoding in encodings], dtype=bool)
    return (*_pad(tokenizer, encodings, max_length), truncated)


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> list:
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer.encode_batch(list(texts))


def _pad(tokenizer, encodings: Sequence, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    longest = max(len(encoding.ids) for encoding in encodings)
    width = min(max_length, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
    return ids, mask
